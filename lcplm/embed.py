"""Protein embeddings from a trained encoder: :func:`embed_fasta` (``lcplm embed``, :mod:`lcplm.cli.embed`)
and the extraction downstream uses (:func:`embed_sequences`, :func:`cached_mean_embeddings`).

``lcplm embed --checkpoint C --fasta F --out DIR [--repr-layers K ...] [--include mean per_tok bos]
[--format safetensors|npy|hdf5] [--max-tokens N] [--truncation-seq-length N --long crop|full|error]
[--resume] [--device D] [--half]``, like ESM's ``esm-extract``:

* ``--repr-layers``: which representations, numbered as ESM's ``repr_layers``: 0 = the embedding
  output, k = the output of block k, and the model's number of layers = the final hidden states
  (after the final norm; what every other command uses); negative k counts from the end (-1 =
  the final layer, the default). The models' :meth:`encode_layers` compute them.
* ``--include``: ``mean`` (mean over residue tokens: never ``<cls>``/``<eos>``, padding or
  ``<unk>``/gap positions; the default), ``per_tok`` (every residue's state, one row per sequence
  character between ``<cls>`` and ``<eos>``), ``bos`` (the ``<cls>`` token's state: every lcplm
  model, LC-PLM's and ESM-2's read proteins framed ``<cls> ... <eos>``). ``--per-residue`` is
  ``per_tok``.
* ``--truncation-seq-length N`` (also ``--max-length``; default 1022 residues, esm-extract's):
  longer sequences follow ``--long``: ``crop`` (the default: the first N residues, as esm-extract
  truncates; counted, ``embedded_length`` says where), ``full`` (embed them whole: BiMamba-S has
  no length limit) or ``error``. Nothing is dropped.
* Streaming: records are read from the FASTA as they are embedded, in chunks of about
  ``--chunk-tokens`` tokens; each chunk's arrays are written to the output folder at once, so
  memory holds one chunk (plus a 64-bit hash per record id, about 60 bytes each in a Python set, to
  refuse duplicate ids), never the FASTA
  or the data set's outputs. ``--resume`` continues a killed run from its finished chunks.

The output folder (arrays, names, formats, ``index.tsv``, ``meta.json``, the resume rules):
:mod:`lcplm.eval.embedding_files`. ``--checkpoint`` is a run checkpoint, an lcplm model
directory (``lcplm export`` / ``lcplm convert``), or LC-PLM's or ESM-2's released model
directory, read directly (:func:`lcplm.models.io.from_pretrained`).

Batches come from the suite's token-budget sampler (:func:`lcplm.data.protein_batches.protein_batch_loader`:
longest first, ``B x L <= max_tokens``, a record longer than the budget alone), so little is
spent on padding. A record's outputs depend on its batch only through float summation order
(batches are cut within a chunk, so a resumed run makes exactly the batches of an uninterrupted one).

:func:`cached_mean_embeddings` keeps mean embeddings on disk keyed by the model's digest, the
data's digest and the options, so ``eval-downstream`` embeds each data set once per checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lcplm.data import tokenizer as tok
from lcplm.data.cache import cache_root
from lcplm.data.collate import crop_residues
from lcplm.data.protein_batches import protein_batch_loader
from lcplm.errors import UserError
from lcplm.eval.embedding_files import FORMATS, EmbeddingFolder, array_name, records_digest
from lcplm.files import atomic_write_bytes
from lcplm.models.heads import residue_mean

LONG_POLICIES = ("full", "crop", "error")
OUTPUTS = ("mean", "per_tok", "bos")  # esm-extract's --include names
OUTPUT_ARRAYS = {"mean": "mean", "per_tok": "residues", "bos": "bos"}  # the arrays each output writes
TRUNCATION_SEQ_LENGTH = 1022  # esm-extract's default: residues embedded per sequence
CHUNK_TOKENS_PER_BATCH = 4  # default chunk: this many token budgets (bounds memory with per_tok outputs)

__all__ = ["FORMATS", "LONG_POLICIES", "OUTPUTS", "TRUNCATION_SEQ_LENGTH", "EmbeddingResult", "cached_mean_embeddings",
           "crop_sequences", "embed_fasta", "embed_residues", "embed_sequences", "file_digest", "load_encoder",
           "random_encoder", "resolve_device", "resolve_layers"]


@dataclass
class EmbeddingResult:
    mean: torch.Tensor  # (N, D) float32
    embedded_lengths: np.ndarray  # (N,) residues actually embedded (< length where cropped)
    lengths: np.ndarray  # (N,) residues of each sequence
    residues: Optional[list[torch.Tensor]] = None  # per record (embedded_length, D), with per_residue

    @property
    def n_cropped(self) -> int:
        return int((self.embedded_lengths < self.lengths).sum())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return d


def cut_length(length: int, name: str, max_length: Optional[int], long_policy: str) -> int:
    """How many residues of a ``length``-residue sequence get embedded under the policy."""
    if long_policy not in LONG_POLICIES:
        raise UserError(f"long-sequence policy must be one of {list(LONG_POLICIES)}, got {long_policy!r}")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be >= 1 residue, got {max_length}")
    if max_length is None or length <= max_length or long_policy == "full":
        return length
    if long_policy == "error":
        raise UserError(
            f"record {name!r} has {length} residues, more than max_length={max_length} "
            "(choose --long full to embed it whole, or --long crop)"
        )
    return max_length


def prepare_residues(sequences: Sequence[str], names: Sequence[str], max_length: Optional[int],
                     long_policy: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Residue ids per sequence after the long-sequence policy; and the uncropped lengths."""
    ids, lengths = [], np.zeros(len(sequences), np.int64)
    for i, (seq, name) in enumerate(zip(sequences, names)):
        r = tok.encode_residues(seq, record=name)
        lengths[i] = len(r)
        r = crop_residues(r, cut_length(len(r), name, max_length, long_policy), None)
        if not bool(tok.is_residue(torch.from_numpy(r)).any()):
            raise UserError(f"record {name!r} has no amino-acid residues to average over")
        ids.append(r)
    return ids, lengths


def crop_sequences(sequences: Sequence[str], names: Sequence[str], max_length: Optional[int],
                   long_policy: str) -> list[str]:
    """The same policy on sequence strings (for featurisers that do not tokenize, e.g. composition)."""
    out = []
    for seq, name in zip(sequences, names):
        s = tok.clean_sequence(seq, name)
        out.append(s[: cut_length(len(s), name, max_length, long_policy)])
    return out


def _autocast(device: torch.device, half: bool):
    if device.type == "cuda" and half:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def num_layers(model: nn.Module) -> int:
    """The model's number of blocks (the index of its final representation)."""
    n = getattr(model, "num_layers", None)
    if n is None or not hasattr(model, "encode_layers"):
        raise UserError(f"model {type(model).__name__} has no encode_layers(): only its final layer can be embedded")
    return int(n)


def resolve_layers(repr_layers: Sequence[int], n_layers: int) -> list[int]:
    """ESM's ``repr_layers`` rule: k in ``-(n+1)..n``, negative counts from the end
    (``(k + n + 1) % (n + 1)``); duplicates kept once, in the order given."""
    out: list[int] = []
    for k in repr_layers:
        if not -(n_layers + 1) <= k <= n_layers:
            raise UserError(f"--repr-layers {k}: the model has {n_layers} layers "
                            f"(choose 0..{n_layers}, or -{n_layers + 1}..-1 counting from the end)")
        k = (k + n_layers + 1) % (n_layers + 1)
        if k not in out:
            out.append(k)
    if not out:
        raise UserError("--repr-layers: give at least one layer")
    return out


def check_outputs(include: Sequence[str]) -> list[str]:
    bad = [x for x in include if x not in OUTPUTS]
    if bad or not include:
        raise UserError(f"--include: unknown output {bad[0]!r} (choose from {', '.join(OUTPUTS)})" if bad
                        else "--include: give at least one of " + ", ".join(OUTPUTS))
    return list(dict.fromkeys(include))


@torch.no_grad()
def embed_residues(model: nn.Module, residues: Sequence[np.ndarray], *, layers: Sequence[int], include: Sequence[str],
                   max_tokens: int, device: torch.device, half: bool = False,
                   on_batch: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """The outputs of ``model`` for records given as residue ids (each (n_i,), n_i >= 1).

    Per layer k (model numbering, :func:`resolve_layers`) and output, under
    :func:`lcplm.eval.embedding_files.array_name`: ``mean`` / ``bos`` -> (N, D) float32 tensors,
    ``per_tok`` -> a list of (n_i, D) float32 tensors (name ``residues...``), in record order.
    Only the final layer is asked for: ``model.encode``; else ``model.encode_layers``. Batches
    of at most ``max_tokens`` tokens; ``on_batch(tokens)`` after each.
    """
    n = getattr(model, "num_layers", None)
    only_final = list(layers) == [n]
    if not only_final:
        num_layers(model)  # a model without encode_layers() says so here
    loader = protein_batch_loader(residues, max_tokens, with_index=True)
    out: dict[str, Any] = {}
    for batch in loader:
        idx = batch["index"]
        input_ids, lens = batch["input_ids"].to(device), batch["lengths"].to(device)
        with _autocast(device, half):
            if only_final:
                hidden = {n: model.encode(input_ids, lengths=lens)}
            else:
                hidden = model.encode_layers(input_ids, list(layers), lengths=lens)
        for k in layers:
            h = hidden[k]
            if "mean" in include:
                pooled = residue_mean(h, input_ids).cpu()
                out.setdefault(array_name("mean", k, n), torch.zeros(len(residues), pooled.shape[1]))[idx] = pooled
            if "bos" in include:
                first = h[:, 0].float().cpu()
                out.setdefault(array_name("bos", k, n), torch.zeros(len(residues), first.shape[1]))[idx] = first
            if "per_tok" in include:
                hf = h.float().cpu()
                rows = out.setdefault(array_name("residues", k, n), [None] * len(residues))
                for row, i in enumerate(idx.tolist()):
                    rows[i] = hf[row, 1 : 1 + len(residues[i])].clone()
        if on_batch is not None:
            on_batch(int(batch["lengths"].sum()))
    return out


def embed_sequences(model: nn.Module, sequences: Sequence[str], names: Optional[Sequence[str]] = None, *,
                    max_tokens: int = 16384, max_length: Optional[int] = None, long_policy: str = "full",
                    per_residue: bool = False, device: str | torch.device = "cpu", half: bool = False,
                    progress: bool = False) -> EmbeddingResult:
    """Mean (and optionally per-residue) final-layer embeddings of ``sequences`` with ``model.encode``,
    all in memory (``lcplm embed`` streams instead: :func:`embed_fasta`).

    ``model.encode(input_ids (B, L), lengths=(B,)) -> (B, L, D)``. Batches hold at most
    ``max_tokens`` tokens (B * L, specials included), longest first. ``half`` runs the encoder
    under bf16 autocast on CUDA (outputs are float32 either way).
    """
    names = list(names) if names is not None else [f"#{i}" for i in range(len(sequences))]
    if len(names) != len(sequences):
        raise ValueError(f"{len(names)} names for {len(sequences)} sequences")
    if not sequences:
        raise UserError("no sequences to embed")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    residues, lengths = prepare_residues(sequences, names, max_length, long_policy)
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    model.to(dev)
    final = getattr(model, "num_layers", None)
    bar = tqdm(total=sum(len(r) + 2 for r in residues), unit="tok", unit_scale=True, desc="embed",
               disable=not progress, file=sys.stderr)
    try:
        out = embed_residues(model, residues, layers=[final], include=["mean", "per_tok"] if per_residue else ["mean"],
                             max_tokens=max_tokens, device=dev, half=half, on_batch=bar.update)
    finally:
        bar.close()
        model.train(was_training)
    embedded = np.asarray([len(r) for r in residues], np.int64)
    return EmbeddingResult(out["mean"], embedded, lengths, out["residues"] if per_residue else None)


# ------------------------------------------------------------------------------------------
# Models: our checkpoints, converted LC-PLM / ESM-2 checkpoints, random initialisation
# ------------------------------------------------------------------------------------------


def file_digest(path: str | Path) -> str:
    """blake2b-128 of a file's bytes, or of a model directory's files (names and bytes, sorted):
    what cache keys and meta.json record."""
    path = Path(path)
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """``(model, model_cfg)`` from anything :func:`lcplm.models.io.from_pretrained` reads: a run's
    checkpoint, an lcplm model directory (``lcplm export``), or LC-PLM's / ESM-2's released
    Hugging Face directory."""
    from lcplm.models.io import from_pretrained

    model = from_pretrained(path, device=map_location)
    if not hasattr(model, "encode"):
        raise UserError(f"{path}: model {type(model).__name__} has no encode() to embed with")
    return model, model.cfg


def random_encoder(model_cfg: Any, seed: int) -> nn.Module:
    """The model of ``model_cfg`` at random initialisation (seeded): the "no pretraining" baseline."""
    from lcplm.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg)
    return model.eval()


# ------------------------------------------------------------------------------------------
# The embedding cache (eval-downstream) and lcplm embed
# ------------------------------------------------------------------------------------------


def data_digest(names: Sequence[str], sequences: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for n, s in zip(names, sequences):
        h.update(n.encode())
        h.update(b"\t")
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()


def cached_mean_embeddings(model_key: str, model_factory, names: Sequence[str], sequences: Sequence[str], *,
                           cache_dir: str | Path | None = None, max_tokens: int = 16384,
                           max_length: Optional[int] = None, long_policy: str = "full", device: str = "cpu",
                           half: bool = False, progress: bool = False, log=print) -> torch.Tensor:
    """(N, D) mean embeddings, computed once per (model_key, data, options) and kept on disk.

    ``model_key`` identifies the weights (a checkpoint digest, or config + seed for a random
    encoder); ``model_factory()`` builds the model only on a cache miss.
    """
    from safetensors.torch import load_file, save

    options = {"max_length": max_length, "long_policy": long_policy, "half": half, "pooling": "residue_mean"}
    key_src = json.dumps({"model": model_key, "data": data_digest(names, sequences), "options": options}, sort_keys=True)
    key = hashlib.blake2b(key_src.encode(), digest_size=16).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"
    path = root / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["mean"]
        except Exception as e:  # a truncated cache file from an interrupted run: recompute it
            log(f"embedding cache {path} unreadable ({type(e).__name__}); recomputing")
    t0 = time.time()
    result = embed_sequences(model_factory(), sequences, names, max_tokens=max_tokens, max_length=max_length,
                             long_policy=long_policy, device=device, half=half, progress=progress)
    cropped = f", {result.n_cropped} cropped to {max_length} residues" if result.n_cropped else ""
    log(f"  embedded {len(names)} sequences ({int(result.embedded_lengths.sum())} residues{cropped}) "
        f"in {time.time() - t0:.1f} s")
    # atomic: an interrupted run never leaves a half-written cache entry
    atomic_write_bytes(path, save({"mean": result.mean.contiguous()}, metadata={"key": key_src[:4000]}))
    return result.mean


def _chunks(records: Iterator, max_length: Optional[int], long_policy: str, chunk_tokens: int) -> Iterator[list]:
    """Consecutive records, cut after the one that brings a chunk to ``chunk_tokens`` tokens
    (after the long-sequence policy, <cls>/<eos> included): a function of the records alone, so
    a resumed run cuts the same chunks."""
    chunk, tokens = [], 0
    for rec in records:
        chunk.append(rec)
        tokens += cut_length(len(rec.sequence), rec.id, max_length, "full" if long_policy == "error" else long_policy) + 2
        if tokens >= chunk_tokens:
            yield chunk
            chunk, tokens = [], 0
    if chunk:
        yield chunk


def embed_fasta(checkpoint: str | Path, fasta: str, out_dir: str | Path, *, include: Sequence[str] = ("mean",),
                repr_layers: Sequence[int] = (-1,), fmt: str = "safetensors", max_tokens: int = 16384,
                max_length: Optional[int] = TRUNCATION_SEQ_LENGTH, long_policy: str = "crop",
                chunk_tokens: Optional[int] = None, device: str = "auto", half: bool = False, resume: bool = False,
                progress: bool = True, on_chunk: Optional[Callable[[int], None]] = None) -> tuple[Path, dict[str, Any], str]:
    """Embed every record of ``fasta`` with the model at ``checkpoint`` into ``out_dir``, streaming
    (module docstring; layout: :mod:`lcplm.eval.embedding_files`). ``chunk_tokens``: tokens per
    written part (default 4 x ``max_tokens``). ``on_chunk(records written so far)`` after each part.

    Returns ``(out_dir, meta, unk_note)``: ``meta`` as written to ``meta.json`` (plus
    ``already_complete`` when ``resume`` found nothing to do); ``unk_note`` the FASTA reader's note
    on characters read as ``<unk>`` ("" when none)."""
    from lcplm.data.fasta import FastaCounts, id_hash, iter_fasta
    from lcplm.data.inputs import is_regular_file

    if max_tokens < 3:
        raise UserError(f"--max-tokens must be >= 3, got {max_tokens}")
    if max_length is not None and max_length < 1:
        raise UserError(f"max_length must be >= 1 residue, got {max_length}")
    if long_policy not in LONG_POLICIES:
        raise UserError(f"long-sequence policy must be one of {list(LONG_POLICIES)}, got {long_policy!r}")
    include = check_outputs(include)
    chunk_tokens = chunk_tokens or CHUNK_TOKENS_PER_BATCH * max_tokens
    if chunk_tokens < 1:
        raise UserError(f"--chunk-tokens must be >= 1, got {chunk_tokens}")
    dev = resolve_device(device)
    model, model_cfg = load_encoder(checkpoint, map_location="cpu")
    n_layers = num_layers(model)
    layers = resolve_layers(repr_layers, n_layers)
    options = {"include": include, "repr_layers": layers, "max_tokens": max_tokens, "max_length": max_length,
               "long": long_policy, "half": half, "format": fmt, "chunk_tokens": chunk_tokens, "device": dev.type}
    model_dict = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else str(model_cfg)
    folder = EmbeddingFolder(out_dir, fmt, {"checkpoint_digest": file_digest(checkpoint), "model": model_dict,
                                            "options": options})
    done = folder.begin(resume)
    if done is None:
        meta = json.loads((Path(out_dir) / "meta.json").read_text())
        return Path(out_dir), {**meta, "already_complete": True}, ""
    model.eval().to(dev)
    counts = FastaCounts()
    seen: set[int] = set()
    n_records = n_cropped = n_resumed = 0
    d_model = None
    from tqdm.auto import tqdm

    bar = None  # made once the first chunk has been read and checked: a bad input is one line
    t0 = time.time()
    try:
        chunks = _chunks(iter_fasta(fasta, counts), max_length, long_policy, chunk_tokens)
        for k, chunk in enumerate(chunks):
            for rec in chunk:
                h = id_hash(rec.id)
                if h in seen:
                    raise UserError(f"{fasta}: duplicate record id {rec.id!r} (the index would be ambiguous)")
                seen.add(h)
            digest = records_digest([(r.id, r.sequence) for r in chunk])
            if k < len(done):
                old, old_digest = folder.part_records(done[k])
                if old_digest != digest or [r[0] for r in old] != [r.id for r in chunk]:
                    raise UserError(f"{fasta}: the records from {chunk[0].id!r} on differ from those the interrupted "
                                    "run embedded (the FASTA changed): leave out --resume to start over")
                n_resumed += len(chunk)
                n_cropped += sum(e < n for _, n, e in old)
            else:
                names, seqs = [r.id for r in chunk], [r.sequence for r in chunk]
                residues, lengths = prepare_residues(seqs, names, max_length, long_policy)
                arrays = embed_residues(model, residues, layers=layers, include=include, max_tokens=max_tokens,
                                        device=dev, half=half)
                if bar is None:
                    bar = tqdm(unit="seq", desc="embed", initial=n_records, disable=not progress, file=sys.stderr)
                dtype = torch.float16 if half else torch.float32
                tensors = {name: (torch.cat(a) if isinstance(a, list) else a).to(dtype) for name, a in arrays.items()}
                d_model = d_model or next(iter(tensors.values())).shape[1]
                records = [(r.id, int(n), len(res)) for r, n, res in zip(chunk, lengths, residues)]
                folder.write_part(k, tensors, records, digest)
                n_cropped += sum(e < n for _, n, e in records)
            n_records += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(n_records)
    finally:
        if bar is not None:
            bar.close()
    if n_resumed < sum(len(folder.part_records(p)[0]) for p in done):
        raise UserError(f"{fasta}: ends after {n_records} records, before those the interrupted run embedded "
                        "(the FASTA changed): leave out --resume to start over")
    if n_resumed and d_model is None:
        from safetensors import safe_open

        with safe_open(str(done[0]), "np") as f:
            d_model = f.get_slice(next(iter(f.keys()))).get_shape()[1]
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_digest": folder.identity["checkpoint_digest"],
        "fasta": str(Path(fasta).resolve()) if is_regular_file(fasta) else fasta,
        "model": model_dict,
        "pooling": "mean over residue tokens (no <cls>/<eos>/padding/<unk>)",
        "arrays": {array_name(OUTPUT_ARRAYS[out], k, n_layers): {"output": out, "layer": k}
                   for k in layers for out in include},
        "options": options,
        "n_sequences": n_records,
        "n_cropped": n_cropped,
        "n_resumed": n_resumed,
        "d_model": d_model,
        "seconds": round(time.time() - t0, 3),
        "torch": torch.__version__,
    }
    folder.finish(meta)
    return Path(out_dir), meta, counts.unk_note()
