"""Held-out masked-LM loss of checkpoints, overall and per sequence-length bin (:func:`evaluate`;
the command is ``lcplm eval-lm``, :mod:`lcplm.cli.eval_lm`).

``lcplm eval-lm CHECKPOINT... --fasta F [--bins 128,256,512,1024,2048] [--per-bin N] [--seed S]
[--mask-prob P] [--max-tokens N] [--bootstrap B] [--out DIR] [--device D]``

CHECKPOINT is ``[LABEL=]PATH``: an lcplm ``.ckpt`` (BiMamba-S shared or unshared, ESM-2, genome
model, converted ones), a released LC-PLM directory or a Hugging Face ESM-2 directory, all read by
:func:`load_lm`. F is a FASTA path or a prepared name (``swissprot:heldout``).

What is measured. Each sequence is ``<cls> residues <eos>``; its length is counted in tokens (the
two specials included, as every length in lcplm). Bins are ``(edge[i-1], edge[i]]`` tokens, the
first from 1; sequences longer than the last edge are counted and reported, not evaluated (choose
the edges to reach the lengths you need, e.g. 8x the training length). With ``--per-bin N`` each
bin keeps the N sequences with the smallest :func:`~lcplm.data.fasta.id_hash` of ``"eval-lm:" + id``,
a choice that depends on the ids alone. Every sequence is corrupted once, as in training (15%
targets: 80% ``<mask>``, 10% random residue, 10% unchanged), by a generator seeded from
``(seed, position in the file, id)``: the masks are a function of the sequence, never of the batch
it lands in, so every checkpoint sees exactly the same inputs (``mask_digest`` in the output proves
it). The loss is the cross entropy at targets shown as ``<mask>`` (the positions the model must
infer from context), token-weighted: ``sum(nll) / sum(targets)`` over the sequences of a bin;
``loss_all_targets`` adds the random/unchanged targets. Intervals are 95% percentile bootstrap
intervals over sequences (:func:`lcplm.eval.stats.ratio_bootstrap`).

Limits, never cropping: a model whose config has ``max_positions`` (tokens) does not see longer
sequences; they are counted per bin as ``over_limit`` and left out of that model's numbers (a bin
with none left says so). An empty bin is reported as empty, not as NaN. When no evaluated sequence
is longer than a checkpoint's training length (``data.max_length`` of its config), a warning says
the evaluation says nothing about length extrapolation for it.

Writes ``lm_eval.json`` (settings, per-bin and overall numbers, per-sequence sums for paired
tests), ``lm_eval.md`` (the table) and ``lm_eval.png`` (loss vs length, one line per checkpoint)
into ``--out`` (default ``runs/eval_lm``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lcplm.data import tokenizer as tok
from lcplm.data.batching import plan_batches
from lcplm.data.cache import resolve_named_fasta
from lcplm.data.fasta import FastaIndex, id_hash
from lcplm.data.masking import IGNORE_INDEX, mask_tokens
from lcplm.errors import UserError
from lcplm.eval import stats
from lcplm.files import atomic_write_text, atomic_write_with

DEFAULT_BINS = (128, 256, 512, 1024, 2048)
# --per-bin hashes salted ids: independent of the training split's validation hash (lcplm.data.split)
PER_BIN_SALT = "eval-lm:"
DEFAULT_OUT = "runs/eval_lm"


# ----------------------------------------------------------------------------------- models


@dataclass
class LoadedLM:
    label: str
    path: str
    model: nn.Module
    kind: str  # model.name of its config: bimamba, esm2, sparse_transformer, ...
    training_length: Optional[int]  # tokens per sequence it was trained with, when the file says
    positional_limit: Optional[int]  # the longest input it takes (config max_positions), None = no limit
    n_parameters: int


def load_lm(path: str | Path) -> tuple[nn.Module, Any, Optional[int]]:
    """``(model in eval mode, model config, training length in tokens or None)`` from anything
    :func:`lcplm.models.io.from_pretrained` reads: a run's checkpoint (its ``data.max_length`` is
    the training length), a model directory, LC-PLM's release, or a Hugging Face ESM-2 directory
    (read as ``esm2``: one protein per row). The one place eval-lm and the claims runner read models."""
    from lcplm.models.io import from_pretrained

    p = Path(path)
    if p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{p}: a directory without config.json is not a model directory")
        try:
            hf = json.loads(cfg_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
        model = from_pretrained(p, name="esm2") if isinstance(hf, dict) and hf.get("model_type") == "esm" else from_pretrained(p)
        return model, model.cfg, None
    if not p.is_file():
        raise UserError(f"{p}: checkpoint not found")
    from lcplm.train.checkpoint import experiment_config, read_checkpoint

    cfg = experiment_config(read_checkpoint(p, mmap=True), p)
    if cfg.task.name != "mlm":
        raise UserError(f"{p}: a {cfg.task.name!r} checkpoint, not a masked-LM one: eval-lm needs the LM head")
    model = from_pretrained(p)
    return model, model.cfg, getattr(cfg.data, "max_length", None)


def checkpoint_label(path: str) -> str:
    """``runs/NAME/checkpoints/last.ckpt`` -> NAME; a directory -> its name; else the file stem."""
    p = Path(path)
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return p.parent.parent.name
    return p.name if p.is_dir() else p.stem


def load_labelled(spec: str) -> LoadedLM:
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = checkpoint_label(spec), spec
    model, cfg, train_len = load_lm(path)
    limit = getattr(cfg, "max_positions", None)
    return LoadedLM(label, path, model, str(getattr(cfg, "name", type(model).__name__)), train_len,
                    int(limit) if limit else None, int(sum(p.numel() for p in model.parameters())))


# ------------------------------------------------------------------------------------- data


def parse_bins(text: str | Sequence[int]) -> tuple[int, ...]:
    try:
        edges = tuple(int(x) for x in (text.split(",") if isinstance(text, str) else text))
    except ValueError:
        raise UserError(f"--bins must be comma-separated token counts, got {text!r}") from None
    if not edges or edges[0] < 3 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise UserError(f"--bins must increase and start at >= 3 tokens (<cls>, a residue, <eos>), got {text!r}")
    return edges


def bin_labels(edges: Sequence[int]) -> list[str]:
    lows = [1] + [e + 1 for e in edges[:-1]]
    return [f"{lo}-{hi}" for lo, hi in zip(lows, edges)]


def record_generator(seed: int, position: int, record_id: str) -> torch.Generator:
    """The generator that corrupts one record: a function of (seed, position in the file, id)."""
    h = hashlib.blake2b(f"{seed}\0{position}\0{record_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") >> 1)


@dataclass
class MaskedSet:
    """The evaluated sequences, corrupted once; shared by every checkpoint."""

    fasta: str
    edges: tuple[int, ...]
    ids: list[str]
    positions: np.ndarray  # (n,) record positions in the FASTA
    token_lengths: np.ndarray  # (n,)
    bins: np.ndarray  # (n,) bin index
    inputs: list[np.ndarray]  # corrupted token ids per sequence
    labels: list[np.ndarray]  # original id at targets, -100 elsewhere
    n_in_file: int
    n_beyond: int  # records longer than the last edge (not evaluated)
    n_per_bin_in_file: list[int]
    digest: str = field(default="")


def build_masked_set(fasta: str, edges: Sequence[int], per_bin: Optional[int], seed: int, mask_prob: float,
                     cache_dir: Optional[str] = None) -> MaskedSet:
    path = resolve_named_fasta(fasta, cache_dir)
    index = FastaIndex(path, cache_dir)
    tl = np.asarray(index.lengths, np.int64) + 2
    edges = tuple(edges)
    bins = np.searchsorted(np.asarray(edges), tl, side="left")  # bin b: edges[b-1] < tl <= edges[b]
    inside = bins < len(edges)
    chosen = []
    per_bin_in_file = np.bincount(bins[inside], minlength=len(edges)).tolist()
    for b in range(len(edges)):
        members = np.flatnonzero(bins == b)
        if per_bin is not None and len(members) > per_bin:
            hashes = np.fromiter((id_hash(PER_BIN_SALT + index.ids[i]) for i in members), np.uint64, len(members))
            members = members[np.lexsort((members, hashes))[:per_bin]]
        chosen.append(members)
    sel = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    ids, inputs, labels = [], [], []
    h = hashlib.blake2b(digest_size=16)
    for pos in sel.tolist():
        rec = index[pos]
        ids_ = tok.encode(rec.sequence, record=rec.id)
        masked, lab = mask_tokens(ids_[None], record_generator(seed, pos, rec.id), mask_prob=mask_prob)
        m, lab = masked[0].numpy(), lab[0].numpy()
        ids.append(rec.id)
        inputs.append(m)
        labels.append(lab)
        h.update(m.tobytes())
        h.update(lab.tobytes())
    return MaskedSet(str(path), edges, ids, sel, tl[sel], bins[sel], inputs, labels, len(tl), int((~inside).sum()),
                     per_bin_in_file, h.hexdigest())


# ------------------------------------------------------------------------------- evaluation


@dataclass
class SequenceLosses:
    """Per-sequence sums for one checkpoint (NaN / 0 where a sequence was over the model's limit)."""

    mask_nll: np.ndarray  # (n,) summed cross entropy at targets shown as <mask>
    mask_n: np.ndarray  # (n,) such targets
    all_nll: np.ndarray  # (n,) over every target
    all_n: np.ndarray
    evaluated: np.ndarray  # (n,) bool
    seconds: float


@torch.no_grad()
def sequence_losses(model: nn.Module, ms: MaskedSet, max_tokens: int = 16384, device: str | torch.device = "cpu",
                    positional_limit: Optional[int] = None) -> SequenceLosses:
    """Run ``model(input_ids, lengths=...)`` over the masked set in token-budget batches (longest
    first; a sequence longer than the budget goes alone) and sum the losses per sequence."""
    n = len(ms.ids)
    out = SequenceLosses(np.zeros(n), np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool), 0.0)
    ok = np.flatnonzero(ms.token_lengths <= positional_limit) if positional_limit else np.arange(n)
    out.evaluated[ok] = True
    out.mask_nll[~out.evaluated] = np.nan
    out.all_nll[~out.evaluated] = np.nan
    if len(ok) == 0:
        return out
    dev = torch.device(device)
    model.eval().to(dev)
    t0 = time.time()
    lengths = ms.token_lengths[ok]
    budget = max(int(max_tokens), int(lengths.max()))
    plan = plan_batches(lengths, budget, pack=False, bucket_size=len(lengths), rng=np.random.default_rng(0))
    for b in range(len(plan)):
        rows = ok[plan.batch(b)]
        ids, lens = tok.pad_batch([torch.from_numpy(ms.inputs[i]) for i in rows])
        lab = torch.full_like(ids, IGNORE_INDEX)
        for r, i in enumerate(rows.tolist()):
            lab[r, : len(ms.labels[i])] = torch.from_numpy(ms.labels[i])
        ids, lens, lab = ids.to(dev), lens.to(dev), lab.to(dev)
        logits = model(ids, lengths=lens)
        if logits.shape[-1] < tok.MASK + 1:
            raise UserError(f"model returns {logits.shape[-1]} logits per token; an LM head over the ESM-2 alphabet has >= {tok.MASK + 1}")
        target = lab != IGNORE_INDEX
        nll = torch.zeros(lab.shape, dtype=torch.float64, device=dev)
        nll[target] = F.cross_entropy(logits[target].float(), lab[target], reduction="none").double()
        shown = target & (ids == tok.MASK)
        out.mask_nll[rows] = (nll * shown).sum(1).cpu().numpy()
        out.mask_n[rows] = shown.sum(1).cpu().numpy()
        out.all_nll[rows] = nll.sum(1).cpu().numpy()
        out.all_n[rows] = target.sum(1).cpu().numpy()
    out.seconds = time.time() - t0
    return out


def summarize(ms: MaskedSet, losses: SequenceLosses, n_boot: int, seed: int) -> dict[str, Any]:
    """Per-bin rows and the overall row for one checkpoint."""
    rows = []
    for b, label in enumerate(bin_labels(ms.edges)):
        in_bin = ms.bins == b
        ev = in_bin & losses.evaluated
        row: dict[str, Any] = {"bin": label, "low": (ms.edges[b - 1] + 1) if b else 1, "high": ms.edges[b],
                               "n_sequences": int(in_bin.sum()), "n_evaluated": int(ev.sum()),
                               "n_over_limit": int((in_bin & ~losses.evaluated).sum()), "n_targets": int(losses.mask_n[ev].sum())}
        iv = stats.ratio_bootstrap(losses.mask_nll[ev], losses.mask_n[ev], n_boot, seed + b)
        if row["n_sequences"] == 0:
            row["state"] = "empty"
        elif row["n_evaluated"] == 0:
            row["state"] = "over_limit"
        elif iv is None:
            row["state"] = "no_targets"
        else:
            row["state"] = "ok"
            row["loss"] = iv.as_dict()
            row["loss_all_targets"] = float(losses.all_nll[ev].sum() / max(losses.all_n[ev].sum(), 1))
        rows.append(row)
    ev = losses.evaluated
    overall = stats.ratio_bootstrap(losses.mask_nll[ev], losses.mask_n[ev], n_boot, seed + 1000)
    return {
        "bins": rows,
        "overall": {"n_evaluated": int(ev.sum()), "n_targets": int(losses.mask_n[ev].sum()),
                    "loss": overall.as_dict() if overall else None,
                    "loss_all_targets": float(losses.all_nll[ev].sum() / losses.all_n[ev].sum()) if losses.all_n[ev].sum() else None},
    }


def evaluate(specs: Sequence[str], fasta: str, edges: Sequence[int] = DEFAULT_BINS, per_bin: Optional[int] = None,
             seed: int = 0, mask_prob: float = 0.15, max_tokens: int = 16384, n_boot: int = stats.DEFAULT_BOOTSTRAP,
             device: str = "cpu", cache_dir: Optional[str] = None, log=print) -> dict[str, Any]:
    """Evaluate every checkpoint on the same masked set; returns the JSON-able result."""
    if not specs:
        raise UserError("give at least one checkpoint")
    if not 0.0 < mask_prob <= 1.0:
        raise UserError(f"--mask-prob must be in (0, 1], got {mask_prob}")
    if per_bin is not None and per_bin < 1:
        raise UserError(f"--per-bin must be >= 1, got {per_bin}")
    if max_tokens < 3:
        raise UserError(f"--max-tokens must be >= 3, got {max_tokens}")
    labels = [s.partition("=")[0] if "=" in s else checkpoint_label(s) for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"two checkpoints share a label ({', '.join(labels)}): name them LABEL=PATH")
    t0 = time.time()
    ms = build_masked_set(fasta, edges, per_bin, seed, mask_prob, cache_dir)
    log(f"{ms.fasta}: {len(ms.ids):,} of {ms.n_in_file:,} sequences evaluated in {len(ms.edges)} bins "
        f"({ms.n_beyond:,} longer than {ms.edges[-1]} tokens not evaluated); masks {ms.digest[:12]} "
        f"({time.time() - t0:.1f} s)")
    if not ms.ids:
        raise UserError(f"{ms.fasta}: no sequence falls in the bins {','.join(map(str, ms.edges))} (tokens)")
    from lcplm.embed import resolve_device

    dev = resolve_device(device)
    models = []
    for spec in specs:
        lm = load_labelled(spec)
        losses = sequence_losses(lm.model, ms, max_tokens, dev, lm.positional_limit)
        lm.model.to("cpu")
        summary = summarize(ms, losses, n_boot, seed)
        longest = int(ms.token_lengths[losses.evaluated].max()) if losses.evaluated.any() else 0
        extrapolates = lm.training_length is not None and longest > lm.training_length
        if lm.training_length is not None and not extrapolates:
            log(f"warning: {lm.label}: no evaluated sequence is longer than its training length ({lm.training_length} "
                f"tokens): this evaluation says nothing about length extrapolation")
        over = int((~losses.evaluated).sum())
        ov = summary["overall"]["loss"]
        log(f"{lm.label} ({lm.kind}, {lm.n_parameters:,} parameters): loss at <mask> "
            + (f"{ov['estimate']:.4f} [{ov['low']:.4f}, {ov['high']:.4f}]" if ov else "n/a")
            + (f"; {over} sequences over its {lm.positional_limit}-token limit" if over else "")
            + f" ({losses.seconds:.1f} s)")
        models.append({
            "label": lm.label, "path": lm.path, "kind": lm.kind, "n_parameters": lm.n_parameters,
            "training_length": lm.training_length, "positional_limit": lm.positional_limit,
            "extrapolation_evaluated": extrapolates, "mask_digest": ms.digest, "seconds": round(losses.seconds, 2),
            **summary,
            "per_sequence": {
                "mask_nll": [None if not e else round(float(v), 6) for v, e in zip(losses.mask_nll, losses.evaluated)],
                "mask_n": losses.mask_n.tolist(),
                "all_nll": [None if not e else round(float(v), 6) for v, e in zip(losses.all_nll, losses.evaluated)],
                "all_n": losses.all_n.tolist(),
            },
        })
    return {
        "settings": {"fasta": ms.fasta, "bins": list(ms.edges), "bin_labels": bin_labels(ms.edges), "per_bin": per_bin,
                     "seed": seed, "mask_prob": mask_prob, "bootstrap": n_boot, "interval": "95% percentile bootstrap over sequences",
                     "loss": "mean cross entropy (nats) at targets shown as <mask>, token-weighted"},
        "data": {"n_in_file": ms.n_in_file, "n_evaluated": len(ms.ids), "n_beyond_last_bin": ms.n_beyond,
                 "n_per_bin_in_file": ms.n_per_bin_in_file, "mask_digest": ms.digest},
        "sequences": {"ids": ms.ids, "positions": ms.positions.tolist(), "token_lengths": ms.token_lengths.tolist(),
                      "bins": ms.bins.tolist()},
        "models": models,
        "seconds": round(time.time() - t0, 1),
    }


# ---------------------------------------------------------------------------------- outputs


def _cell(row: dict) -> str:
    if row["state"] == "empty":
        return "empty"
    if row["state"] == "over_limit":
        return f"over limit ({row['n_over_limit']})"
    if row["state"] == "no_targets":
        return "no <mask> targets"
    iv = row["loss"]
    extra = f", {row['n_over_limit']} over limit" if row["n_over_limit"] else ""
    return f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}] (n={row['n_evaluated']}{extra})"


def markdown(result: dict) -> str:
    s, models = result["settings"], result["models"]
    lines = [
        "# Held-out masked-LM loss by sequence length",
        "",
        f"{s['fasta']}: {result['data']['n_evaluated']:,} sequences"
        + (f" (at most {s['per_bin']} per bin)" if s["per_bin"] else "")
        + f"; {s['loss']}; {s['interval']} ({s['bootstrap']} resamples); mask seed {s['seed']}, "
        f"masks {result['data']['mask_digest'][:12]} (identical for every checkpoint).",
        f"Sequences longer than {s['bins'][-1]} tokens: {result['data']['n_beyond_last_bin']:,} (not evaluated).",
        "",
    ]
    for m in models:
        tl = f"trained at {m['training_length']} tokens" if m["training_length"] else "training length unknown"
        lim = f", limit {m['positional_limit']} tokens" if m["positional_limit"] else ""
        lines.append(f"- **{m['label']}**: {m['kind']}, {m['n_parameters']:,} parameters, {tl}{lim} ({m['path']})")
    lines += ["", "| length (tokens) | sequences | " + " | ".join(m["label"] for m in models) + " |",
              "|---|---:|" + "---:|" * len(models)]
    for b, label in enumerate(s["bin_labels"]):
        n = models[0]["bins"][b]["n_sequences"]
        lines.append(f"| {label} | {n} | " + " | ".join(_cell(m["bins"][b]) for m in models) + " |")
    cells = []
    for m in models:
        o = m["overall"]["loss"]
        cells.append(f"**{o['estimate']:.3f}** [{o['low']:.3f}, {o['high']:.3f}]" if o else "n/a")
    lines.append(f"| all | {result['data']['n_evaluated']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, m in enumerate(result["models"]):
        xs, ys, lo, hi = [], [], [], []
        for b, row in enumerate(m["bins"]):
            if row["state"] == "ok":
                xs.append(s["bins"][b])
                ys.append(row["loss"]["estimate"])
                lo.append(row["loss"]["estimate"] - row["loss"]["low"])
                hi.append(row["loss"]["high"] - row["loss"]["estimate"])
        color = f"C{k % 10}"
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, color=color, label=m["label"])
        if m["training_length"]:
            ax.axvline(m["training_length"], color=color, ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length, tokens (upper edge of the bin; dotted: training length)")
    ax.set_ylabel("loss at <mask> (nats)")
    ax.set_title("held-out masked-LM loss vs length (95% bootstrap intervals)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return Path(path)


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "lm_eval.json", "md": out / "lm_eval.md", "png": out / "lm_eval.png"}
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    atomic_write_text(paths["md"], markdown(result))
    plot(result, paths["png"])
    return paths
