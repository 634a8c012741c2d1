"""``lcplm embed --checkpoint C --fasta F --out DIR [...]``: embeddings of a FASTA (:func:`lcplm.embed.embed_fasta`;
the output layout is in :mod:`lcplm.embed`)."""

from __future__ import annotations

import argparse

from lcplm.embed import FORMATS, LONG_POLICIES, embed_fasta


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lcplm embed", description="Per-sequence (and per-residue) embeddings of a FASTA file.")
    p.add_argument("--checkpoint", required=True,
                   help="lcplm checkpoint (.ckpt), lcplm model directory (`lcplm export` / `lcplm convert`), "
                        "or a released LC-PLM / Hugging Face ESM-2 directory")
    p.add_argument("--fasta", required=True, help="input FASTA (plain or gzip; a pipe, FIFO or '-' for stdin)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--per-residue", action="store_true", help="also write per-residue embeddings")
    p.add_argument("--format", choices=FORMATS, default="safetensors", help="array format (default safetensors)")
    p.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch, B x L (default 16384)")
    p.add_argument("--max-length", type=int, default=None, help="residues; longer sequences follow --long")
    p.add_argument("--long", choices=LONG_POLICIES, default="full",
                   help="sequences over --max-length: embed whole (full, default), first N residues (crop), or stop (error)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--half", action="store_true", help="bf16 autocast on CUDA and float16 output arrays")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ns = p.parse_args(argv)
    out, result, meta, unk_note = embed_fasta(
        ns.checkpoint, ns.fasta, ns.out, per_residue=ns.per_residue, fmt=ns.format, max_tokens=ns.max_tokens,
        max_length=ns.max_length, long_policy=ns.long, device=ns.device, half=ns.half, progress=not ns.no_progress)
    cropped = f"; {result.n_cropped} cropped to {ns.max_length} residues" if result.n_cropped else ""
    print(f"lcplm embed: {meta['n_sequences']} sequences, d={meta['d_model']}, {meta['seconds']:.1f} s -> {out}{cropped}{unk_note}")
    return 0
