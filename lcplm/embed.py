"""Protein embeddings from a trained encoder: :func:`embed_fasta` (``lcplm embed``, :mod:`lcplm.cli.embed`)
and the extraction downstream uses.

``lcplm embed --checkpoint C --fasta F --out DIR [--per-residue] [--format safetensors|npy]
[--max-tokens N] [--max-length N --long full|crop|error] [--device D] [--half]`` writes to DIR:

* ``embeddings.safetensors`` (tensors ``mean`` (N, D) and, with ``--per-residue``,
  ``residues`` (T, D) plus ``offsets`` (N + 1,): record i's residues are rows
  ``offsets[i]:offsets[i + 1]``), or the same arrays as ``mean.npy`` / ``residues.npy`` /
  ``offsets.npy``;
* ``index.tsv``: ``index  id  length  embedded_length`` per record, in FASTA order;
* ``meta.json``: checkpoint, its digest, model config, options, counts.

``--checkpoint`` is a run checkpoint, an lcplm model directory (``lcplm export`` / ``lcplm
convert``), or LC-PLM's or ESM-2's released model directory, read directly
(:func:`lcplm.models.io.from_pretrained`).

The mean embedding of a sequence is the mean of the encoder's final hidden states (after the
final norm) over its residue tokens: never ``<cls>``/``<eos>``, padding, or ``<unk>``/gap
positions. Per-residue rows are every position between ``<cls>`` and ``<eos>``, one per
sequence character, so row j is character j. Sequences are batched by a token budget, longest
first (``lcplm.data.batching.plan_batches``), so little is spent on padding; a sequence longer
than the budget is embedded alone.

Long sequences: with ``--max-length N`` a sequence of more than N residues is embedded in full
(``--long full``, the default: BiMamba-S has no length limit), cut to its first N residues
(``crop``; counted and reported, ``embedded_length`` says where), or refused (``error``).
Nothing is dropped.

:func:`cached_mean_embeddings` keeps mean embeddings on disk keyed by the model's digest, the
data's digest and the options, so ``eval-downstream`` embeds each data set once per checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lcplm.data import tokenizer as tok
from lcplm.data.cache import cache_root
from lcplm.data.collate import crop_residues
from lcplm.data.protein_batches import protein_batch_loader
from lcplm.errors import UserError
from lcplm.files import atomic_write_bytes, atomic_write_text, atomic_write_with
from lcplm.models.heads import residue_mean

LONG_POLICIES = ("full", "crop", "error")
FORMATS = ("safetensors", "npy")


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


@torch.no_grad()
def embed_sequences(model: nn.Module, sequences: Sequence[str], names: Optional[Sequence[str]] = None, *,
                    max_tokens: int = 16384, max_length: Optional[int] = None, long_policy: str = "full",
                    per_residue: bool = False, device: str | torch.device = "cpu", half: bool = False,
                    progress: bool = False) -> EmbeddingResult:
    """Mean (and optionally per-residue) embeddings of ``sequences`` with ``model.encode``.

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
    loader = protein_batch_loader(residues, max_tokens, with_index=True)
    was_training = model.training
    model.eval()
    model.to(dev)
    mean: Optional[torch.Tensor] = None
    per_res: list[Optional[torch.Tensor]] = [None] * len(residues) if per_residue else []
    from tqdm.auto import tqdm

    total = sum(len(r) + 2 for r in residues)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="embed", disable=not progress, file=sys.stderr)
    try:
        for batch in loader:
            idx = batch["index"]
            input_ids, lens = batch["input_ids"].to(dev), batch["lengths"].to(dev)
            with _autocast(dev, half):
                hidden = model.encode(input_ids, lengths=lens)
            pooled = residue_mean(hidden, input_ids).cpu()
            if mean is None:
                mean = torch.zeros(len(residues), pooled.shape[1])
            mean[idx] = pooled
            if per_residue:
                h = hidden.float().cpu()
                for row, i in enumerate(idx.tolist()):
                    per_res[i] = h[row, 1 : 1 + len(residues[i])].clone()
            bar.update(int(batch["lengths"].sum()))
    finally:
        bar.close()
        model.train(was_training)
    embedded = np.asarray([len(r) for r in residues], np.int64)
    return EmbeddingResult(mean, embedded, lengths, per_res if per_residue else None)  # type: ignore[arg-type]


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
# Output files and the cache
# ------------------------------------------------------------------------------------------


def write_embeddings(out_dir: str | Path, names: Sequence[str], result: EmbeddingResult, fmt: str = "safetensors",
                     half: bool = False, meta: Optional[dict] = None) -> Path:
    """Write the arrays, ``index.tsv`` and ``meta.json`` into ``out_dir`` (created)."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {"mean": result.mean.to(dtype).contiguous()}
    if result.residues is not None:
        offsets = torch.zeros(len(result.residues) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(torch.tensor([r.shape[0] for r in result.residues], dtype=torch.int64), 0)
        tensors["residues"] = torch.cat(result.residues).to(dtype).contiguous()
        tensors["offsets"] = offsets
    for stale in ("embeddings.safetensors", "mean.npy", "residues.npy", "offsets.npy"):
        (out / stale).unlink(missing_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save

        atomic_write_bytes(out / "embeddings.safetensors", save(tensors))
    else:
        for k, v in tensors.items():
            atomic_write_with(out / f"{k}.npy", lambda f, a=v.numpy(): np.save(f, a))
    rows = ["index\tid\tlength\tembedded_length\n"]
    for i, (name, n, e) in enumerate(zip(names, result.lengths.tolist(), result.embedded_lengths.tolist())):
        rows.append(f"{i}\t{name}\t{n}\t{e}\n")
    atomic_write_text(out / "index.tsv", "".join(rows))
    atomic_write_text(out / "meta.json", json.dumps(meta or {}, indent=2, default=str) + "\n")
    return out


def read_embeddings(out_dir: str | Path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """``(ids, tensors)`` of a folder written by :func:`write_embeddings` (either format)."""
    out = Path(out_dir)
    index = out / "index.tsv"
    if not index.is_file():
        raise UserError(f"{out}: no index.tsv (not an `lcplm embed` output folder)")
    ids = [line.split("\t")[1] for line in index.read_text().splitlines()[1:] if line]
    if (out / "embeddings.safetensors").is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(out / "embeddings.safetensors"))
    else:
        tensors = {k: torch.from_numpy(np.load(out / f"{k}.npy")) for k in ("mean", "residues", "offsets")
                   if (out / f"{k}.npy").is_file()}
    if "mean" not in tensors:
        raise UserError(f"{out}: no mean embeddings found")
    return ids, tensors


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


def embed_fasta(checkpoint: str | Path, fasta: str, out_dir: str | Path, *, per_residue: bool = False,
                fmt: str = "safetensors", max_tokens: int = 16384, max_length: Optional[int] = None,
                long_policy: str = "full", device: str = "auto", half: bool = False,
                progress: bool = True) -> tuple[Path, EmbeddingResult, dict[str, Any], str]:
    """Embed every record of ``fasta`` with the model at ``checkpoint`` and write ``out_dir`` (the
    layout in the module docstring). Returns ``(out_dir, result, meta, unk_note)``; ``unk_note``
    is the FASTA reader's note on characters read as ``<unk>`` ("" when none)."""
    from lcplm.data.fasta import FastaCounts, iter_fasta
    from lcplm.data.inputs import is_regular_file

    if max_tokens < 3:
        raise UserError(f"--max-tokens must be >= 3, got {max_tokens}")
    counts = FastaCounts()
    records = list(iter_fasta(fasta, counts))
    names = [r.id for r in records]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UserError(f"{fasta}: duplicate record id {n!r} (the index would be ambiguous)")
        seen.add(n)
    dev = resolve_device(device)
    model, model_cfg = load_encoder(checkpoint, map_location="cpu")
    t0 = time.time()
    result = embed_sequences(model, [r.sequence for r in records], names, max_tokens=max_tokens,
                             max_length=max_length, long_policy=long_policy, per_residue=per_residue,
                             device=dev, half=half, progress=progress)
    seconds = time.time() - t0
    meta = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_digest": file_digest(checkpoint),
        "fasta": str(Path(fasta).resolve()) if is_regular_file(fasta) else fasta,
        "model": dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else str(model_cfg),
        "pooling": "mean over residue tokens (no <cls>/<eos>/padding/<unk>)",
        "options": {"max_tokens": max_tokens, "max_length": max_length, "long": long_policy,
                    "per_residue": per_residue, "half": half, "format": fmt},
        "n_sequences": len(names),
        "n_cropped": result.n_cropped,
        "d_model": int(result.mean.shape[1]),
        "seconds": round(seconds, 3),
        "torch": torch.__version__,
    }
    out = write_embeddings(out_dir, names, result, fmt, half, meta)
    return out, result, meta, counts.unk_note()
