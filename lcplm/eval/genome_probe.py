"""Genome-context evaluation: a linear probe of PHROG function categories.

``lcplm genome probe EXPERIMENT.yaml [--checkpoint [LABEL=]CKPT ...]
[--sources single_protein,dense,window,ppi,scored] [--out DIR] [key=value ...]``
(:mod:`lcplm.cli.genome`; :func:`run_probe` here)

EXPERIMENT is a genome pretraining config (its ``data`` section names the genomes, the window
size and the pair-source parameters; ``--sources`` swaps only ``data.pair_source.name``). For
each model (each checkpoint, or the config's model at random initialisation when none is
given) and each pair source, every protein is embedded *inside its genome window* (mean of
the final hidden states over its residue tokens, no masking). Proteins whose GenBank
``/function`` is a PHROG category other than "unknown function" are labelled. A multinomial
logistic regression (standardised features, L2, full-batch L-BFGS) is trained with whole
genomes held out: leave-one-genome-out over the labelled genomes, predictions pooled over the
folds. Reported: accuracy, macro-F1 over the categories present, and the majority-class
accuracy of the same folds. Results go to ``DIR/genome_probe.json`` and ``DIR/genome_probe.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from lcplm.config import PretrainConfig
from lcplm.data.datamodules.genome import GenomeDataConfig, load_genomes
from lcplm.data.genomes import PHROG_CATEGORIES, Genome, GenomeWindow, genome_windows, protein_residue_mask
from lcplm.data.pair_sources import PAIR_SOURCES, PairSource, build_pair_source
from lcplm.errors import UserError
from lcplm.files import atomic_write_text
from lcplm.models import model_class

UNKNOWN = "unknown function"


def _takes_genomes(model_cls: type) -> bool:
    """Whether a model class takes protein indices and a protein-pair pattern (genome windows)."""
    return {"pid", "allowed"} <= set(model_cls.keyword_inputs)


def genome_config(cfg: PretrainConfig, where: str) -> GenomeDataConfig:
    if not isinstance(cfg.data, GenomeDataConfig) or not _takes_genomes(model_class(cfg.model.name)):
        raise UserError(f"{where}: expected a genome experiment (data.name genome, a model that takes pid/allowed)")
    return cfg.data


def load_models(cfg: PretrainConfig, checkpoints: Sequence[str], device: torch.device) -> list[tuple[str, torch.nn.Module]]:
    """``(label, model)`` per ``[LABEL=]PATH`` (a run checkpoint or a model directory); the
    config's model at random init when none."""
    from lcplm.models import build_model
    from lcplm.models.io import from_pretrained

    if not checkpoints:
        torch.manual_seed(cfg.run.seed)
        return [("random-init", build_model(cfg.model).eval().to(device))]
    out = []
    for spec in checkpoints:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).parent.parent.name or spec, spec
        model = from_pretrained(path)
        if not _takes_genomes(type(model)):
            raise UserError(f"{path}: a {model.cfg.name!r} model, expected a genome model (one that takes pid/allowed)")
        out.append((label, model.to(device)))
    return out


def _window_batch(window: GenomeWindow, allowed: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "input_ids": window.input_ids[None].to(device),
        "lengths": torch.tensor([len(window)], device=device),
        "pid": window.pid[None].to(device),
        "allowed": allowed[None].to(device),
    }


@torch.no_grad()
def protein_embeddings(
    model: torch.nn.Module, genomes: Sequence[Genome], source: PairSource, max_tokens: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """{protein id: (hidden,) fp32 mean over its residues, from inside its genome window}."""
    out: dict[str, torch.Tensor] = {}
    for g in genomes:
        for w in genome_windows(g, max_tokens):
            h = model.encode(**_window_batch(w, source.allowed(w), device))[0].float().cpu()  # (L, d)
            mask = protein_residue_mask(w.input_ids, w.pid, len(w.proteins)).float()  # (P, L)
            means = (mask @ h) / mask.sum(1, keepdim=True).clamp_min(1)
            for k, p in enumerate(w.proteins):
                out[p.protein_id] = means[k]
    return out


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2, steps: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised x (N, d); returns (W, b, mean, std)."""
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    W = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    z = z.double()
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ W + b, y) + l2 * (W**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach(), mean, std


def predict_logistic(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (((x - mean) / std).double() @ W + b).argmax(1)


def macro_f1(y: torch.Tensor, pred: torch.Tensor, n_classes: int) -> float:
    """Mean F1 over the classes that occur in ``y`` or ``pred``."""
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else float("nan")


def labelled_proteins(genomes: Sequence[Genome]) -> list[tuple[str, str, int]]:
    """(genome id, protein id, category index) for proteins with a known PHROG category."""
    cats = [c for c in PHROG_CATEGORIES if c != UNKNOWN]
    out = []
    for g in genomes:
        for p in g.proteins:
            if p.category is not None and p.category != UNKNOWN:
                out.append((g.genome_id, p.protein_id, cats.index(p.category)))
    return out


def leave_one_genome_out(
    emb: dict[str, torch.Tensor], labelled: list[tuple[str, str, int]], n_classes: int, l2: float
) -> dict[str, Any]:
    """Pooled held-out predictions over folds, one fold per labelled genome."""
    gids = sorted({g for g, _, _ in labelled})
    if len(gids) < 2:
        raise UserError("the probe needs labelled proteins (PHROG /function) in at least two genomes")
    ys, preds, majority = [], [], []
    folds = {}
    for held in gids:
        tr = [(p, c) for g, p, c in labelled if g != held]
        te = [(p, c) for g, p, c in labelled if g == held]
        x_tr = torch.stack([emb[p] for p, _ in tr])
        y_tr = torch.tensor([c for _, c in tr])
        x_te = torch.stack([emb[p] for p, _ in te])
        y_te = torch.tensor([c for _, c in te])
        pred = predict_logistic(x_te, *fit_logistic(x_tr, y_tr, n_classes, l2))
        maj = torch.full_like(y_te, int(torch.bincount(y_tr, minlength=n_classes).argmax()))
        ys.append(y_te)
        preds.append(pred)
        majority.append(maj)
        folds[held] = {"n": len(te), "accuracy": float((pred == y_te).float().mean())}
    y, pred, maj = torch.cat(ys), torch.cat(preds), torch.cat(majority)
    return {
        "n_proteins": int(y.numel()),
        "accuracy": float((pred == y).float().mean()),
        "macro_f1": macro_f1(y, pred, n_classes),
        "majority_accuracy": float((maj == y).float().mean()),
        "folds": folds,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | pair source | proteins | accuracy | macro-F1 | majority acc. |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['source']} | {r['n_proteins']} | {r['accuracy']:.3f} | "
            f"{r['macro_f1']:.3f} | {r['majority_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run_probe(
    cfg: PretrainConfig,
    checkpoints: Sequence[str],
    sources: Sequence[str],
    out_dir: Path,
    l2: float = 1e-2,
    device: Optional[torch.device] = None,
    where: str = "config",
) -> list[dict[str, Any]]:
    data = genome_config(cfg, where)
    unknown = [s for s in sources if s not in PAIR_SOURCES]
    if unknown:
        raise UserError(f"--sources: unknown pair source(s) {unknown}; choose from {list(PAIR_SOURCES)}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    genomes = load_genomes(data)
    labelled = labelled_proteins(genomes)
    n_classes = len(PHROG_CATEGORIES) - 1
    models = load_models(cfg, checkpoints, device)
    rows = []
    for label, model in models:
        for source_name in sources:
            t0 = time.time()
            source = build_pair_source(dataclasses.replace(data.pair_source, name=source_name), genomes)
            emb = protein_embeddings(model, genomes, source, data.max_tokens, device)
            res = leave_one_genome_out(emb, labelled, n_classes, l2)
            rows.append({"model": label, "source": source_name, **res, "seconds": round(time.time() - t0, 1)})
    meta = {
        "config": where,
        "categories": [c for c in PHROG_CATEGORIES if c != UNKNOWN],
        "genomes": [g.genome_id for g in genomes],
        "max_tokens": data.max_tokens,
        "l2": l2,
        "protocol": "leave-one-genome-out over labelled genomes; predictions pooled over folds",
    }
    atomic_write_text(out_dir / "genome_probe.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out_dir / "genome_probe.md", markdown_table(rows))
    return rows
