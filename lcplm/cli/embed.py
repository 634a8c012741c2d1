"""``lcplm embed --checkpoint C --fasta F --out DIR [...]``: embeddings of a FASTA, streamed to DIR
(:func:`lcplm.embed.embed_fasta`; the flags follow ESM's ``esm-extract``, the output folder is
described in :mod:`lcplm.eval.embedding_files`)."""

from __future__ import annotations

import argparse

from lcplm.embed import FORMATS, LONG_POLICIES, OUTPUTS, TRUNCATION_SEQ_LENGTH, embed_fasta


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lcplm embed", description="Per-sequence (and per-residue) embeddings of a FASTA file.")
    p.add_argument("--checkpoint", required=True,
                   help="lcplm checkpoint (.ckpt), lcplm model directory (`lcplm export` / `lcplm convert`), "
                        "or a released LC-PLM / Hugging Face ESM-2 directory")
    p.add_argument("--fasta", required=True, help="input FASTA (plain or gzip; a pipe, FIFO or '-' for stdin)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--repr-layers", "--repr_layers", dest="repr_layers", type=int, nargs="+", default=[-1],
                   help="representations as esm-extract numbers them: 0 = embedding output, k = block k, "
                        "negative = from the end (default -1: the final layer)")
    p.add_argument("--include", nargs="+", default=None, metavar="OUTPUT",
                   help=f"any of {' '.join(OUTPUTS)}: mean over residues, every residue, the <cls> token (default mean)")
    p.add_argument("--per-residue", action="store_true", help="same as adding per_tok to --include")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors (default), npy, or hdf5 (one group per record id; needs h5py: lcplm[hdf5])")
    p.add_argument("--max-tokens", "--toks_per_batch", dest="max_tokens", type=int, default=16384,
                   help="token budget per batch, B x L (default 16384)")
    p.add_argument("--truncation-seq-length", "--truncation_seq_length", "--max-length", dest="max_length", type=int,
                   default=TRUNCATION_SEQ_LENGTH,
                   help=f"residues per sequence; longer ones follow --long (default {TRUNCATION_SEQ_LENGTH}, as esm-extract)")
    p.add_argument("--long", choices=LONG_POLICIES, default="crop",
                   help="sequences over the truncation length: first N residues (crop, default), whole (full), or stop (error)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (refused if the model or options changed)")
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="tokens per written part: bounds memory with per_tok outputs (default 4 x --max-tokens)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--half", action="store_true", help="bf16 autocast on CUDA and float16 output arrays")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = p.parse_args(argv)
    include = list(ns.include or ["mean"]) + (["per_tok"] if ns.per_residue else [])
    out, meta, unk_note = embed_fasta(
        ns.checkpoint, ns.fasta, ns.out, include=include, repr_layers=ns.repr_layers, fmt=ns.format,
        max_tokens=ns.max_tokens, max_length=ns.max_length, long_policy=ns.long, chunk_tokens=ns.chunk_tokens,
        device=ns.device, half=ns.half, resume=ns.resume, progress=not ns.no_progress)
    if meta.get("already_complete"):
        print(f"lcplm embed: {out} is already complete ({meta['n_sequences']} sequences): nothing to do")
        return 0
    cropped = f"; {meta['n_cropped']} cropped to {ns.max_length} residues" if meta["n_cropped"] else ""
    resumed = f"; {meta['n_resumed']} from the interrupted run" if meta["n_resumed"] else ""
    print(f"lcplm embed: {meta['n_sequences']} sequences, d={meta['d_model']}, {meta['seconds']:.1f} s -> {out}"
          f"{cropped}{resumed}{unk_note}")
    return 0
