"""Genome embeddings -> taxonomy: ViralEmbed's genome-level evaluation.

``lcplm genome taxonomy EXPERIMENT.yaml --taxonomy FILE [--format auto|genbank|tsv|vcontact]
[--gene-to-genome CSV --proteins FASTA] [--checkpoint [LABEL=]CKPT ...] [--sources S1,S2]
[--ranks R1,R2] [--folds 5] [--out DIR] [key=value ...]``

EXPERIMENT is a genome pretraining config: its ``data`` section names the genomes, the window
size and the pair-source parameters (``--sources`` swaps only ``data.pair_source.name``; default:
the config's own source). With ``--gene-to-genome`` and ``--proteins`` (vConTACT's inputs) the
genomes are that FASTA grouped by that CSV instead. For each model and pair source:

- every protein is embedded *in context* (mean final hidden state over its residue tokens inside
  its genome window under the pair source, as :mod:`lcplm.eval.genome_probe` does), and a
  genome's embedding is the mean of its proteins' embeddings (each protein counts once);
- per rank, over the genomes labelled at that rank: a multinomial logistic regression
  (standardised features fitted on the training folds, L2, full-batch L-BFGS; the probe's) with
  stratified k-fold cross-validation over genomes (seeded by ``run.seed``), predictions pooled
  over the folds, scored by support-weighted F1 (scikit-learn's ``average="weighted"``), beside
  the weighted F1 of predicting each training fold's majority class;
- per rank, the cosine silhouette of the genome embeddings (raw, not standardised) grouped by
  label, over every genome labelled at that rank.

Too few labels is an outcome, not an error: a rank whose genomes carry a single class is
skipped; classes with fewer genomes than folds are left out of the classification (counted in
the table) and the rank is skipped when fewer than two classes remain; the silhouette needs 2 to
N-1 classes among N genomes. Each skip is a line of the table with its reason. Genomes without
any label and table entries naming no genome are counted (stdout and JSON); no labelled genome
at all is an error. Output: ``DIR/genome_taxonomy.json`` and ``DIR/genome_taxonomy.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from lcplm.config import PretrainConfig
from lcplm.data.datamodules.genome import load_genomes
from lcplm.data.genomes import Genome
from lcplm.data.pair_sources import PAIR_SOURCES, build_pair_source
from lcplm.data.taxonomy import (
    Taxonomy,
    rank_order,
    read_genbank_taxonomy,
    read_rank_table,
    read_vcontact_taxonomy,
)
from lcplm.errors import UserError
from lcplm.eval.genome_probe import fit_logistic, genome_config, load_models, predict_logistic, protein_embeddings
from lcplm.tasks.metrics import cosine_silhouette, weighted_f1
from lcplm.files import atomic_write_text

FORMATS = ("auto", "genbank", "tsv", "vcontact")
_GENBANK_SUFFIXES = (".gb", ".gbk", ".gbff", ".genbank")


# ----------------------------------------------------------------------------- inputs


def taxonomy_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.suffix.lower() in _GENBANK_SUFFIXES:
        return "genbank"
    return "vcontact" if path.suffix.lower() == ".csv" else "tsv"


def read_taxonomy(
    paths: Sequence[str], fmt: str = "auto", gene_to_genome: Optional[str] = None, proteins: Optional[str] = None
) -> Taxonomy:
    """Merge the taxonomy files (each in ``fmt``, or guessed from its suffix); a genome in two
    files is an error."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    merged: Taxonomy = {}
    where: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        kind = taxonomy_format(path, fmt)
        if kind == "genbank":
            table = read_genbank_taxonomy(path)
        elif kind == "tsv":
            table = read_rank_table(path)
        else:
            if gene_to_genome is None or proteins is None:
                raise UserError(f"{path}: a vConTACT reference CSV needs --gene-to-genome CSV and --proteins FASTA")
            table = read_vcontact_taxonomy(path, gene_to_genome, proteins)
        for gid, labels in table.items():
            if gid in merged:
                raise UserError(f"genome {gid!r} is in two taxonomy files: {where[gid]} and {path}")
            merged[gid], where[gid] = labels, str(path)
    return merged


def match_taxonomy(genomes: Sequence[Genome], taxonomy: Taxonomy, sources: Sequence[str]) -> dict[str, Any]:
    """Which genomes have labels: counts (and a few examples) of genomes without a table entry,
    with an entry but no label, and entries naming no genome. No labelled genome is an error."""
    ids = [g.genome_id for g in genomes]
    known = set(ids)
    missing = [g for g in ids if g not in taxonomy]
    empty = [g for g in ids if g in taxonomy and not taxonomy[g]]
    extra = sorted(set(taxonomy) - known)
    labelled = [g for g in ids if taxonomy.get(g)]
    if not labelled:
        raise UserError(
            f"no genome has a taxonomy label: {len(missing)} of {len(ids)} genomes are not in "
            f"{', '.join(sources)} (genome ids look like {ids[:3]}; the table's like {sorted(taxonomy)[:3]})"
            + (f", {len(empty)} have only empty labels" if empty else "")
        )
    return {
        "genomes": len(ids),
        "labelled": len(labelled),
        "missing_from_table": len(missing),
        "missing_examples": missing[:5],
        "no_label_in_table": len(empty),
        "table_entries_without_genome": len(extra),
        "table_entries_without_genome_examples": extra[:5],
    }


# ----------------------------------------------------------------------------- evaluation


def genome_embeddings(protein_emb: dict[str, torch.Tensor], genomes: Sequence[Genome]) -> dict[str, torch.Tensor]:
    """{genome id: mean of its proteins' embeddings}."""
    return {g.genome_id: torch.stack([protein_emb[p.protein_id] for p in g.proteins]).mean(0) for g in genomes}


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> torch.Tensor:
    """(N,) fold index in [0, k) per sample: each class's members, in a seeded random order, are
    dealt to the folds in turn, starting where the previous class stopped, so every class is
    spread over the folds (counts differ by at most one) and fold sizes stay balanced."""
    y = torch.as_tensor(list(labels), dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(y)
    start = 0
    for c in torch.unique(y).tolist():
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        fold[members] = (start + torch.arange(members.numel())) % k
        start = (start + members.numel()) % k
    return fold


def cross_validate(x: torch.Tensor, y: torch.Tensor, folds: int, seed: int, l2: float) -> dict[str, Any]:
    """Pooled out-of-fold predictions of the logistic regression and of the majority class."""
    n_classes = int(y.max()) + 1
    fold = stratified_folds(y.tolist(), folds, seed)
    pred = torch.empty_like(y)
    majority = torch.empty_like(y)
    for f in range(folds):
        test = fold == f
        train = ~test
        pred[test] = predict_logistic(x[test], *fit_logistic(x[train], y[train], n_classes, l2))
        majority[test] = int(torch.bincount(y[train], minlength=n_classes).argmax())
    return {
        "weighted_f1": weighted_f1(y, pred),
        "majority_weighted_f1": weighted_f1(y, majority),
        "accuracy": float((pred == y).float().mean()),
    }


def evaluate_rank(
    emb: dict[str, torch.Tensor], taxonomy: Taxonomy, rank: str, folds: int, seed: int, l2: float
) -> dict[str, Any]:
    """Classification and silhouette of one rank; skips are rows with a ``*_skip`` reason."""
    gids = sorted(g for g in emb if rank in taxonomy.get(g, {}))
    labels = [taxonomy[g][rank] for g in gids]
    classes = sorted(set(labels))
    row: dict[str, Any] = {"rank": rank, "n_genomes": len(gids), "n_classes": len(classes)}
    counts = {c: labels.count(c) for c in classes}

    # silhouette: every labelled genome
    row["silhouette"] = None
    if 2 <= len(classes) <= len(gids) - 1:
        x = torch.stack([emb[g] for g in gids])
        row["silhouette"] = cosine_silhouette(x, [classes.index(c) for c in labels])
        row["silhouette_skip"] = None
    elif len(classes) < 2:
        row["silhouette_skip"] = f"{len(classes)} class" if classes else "no labelled genome"
    else:
        row["silhouette_skip"] = f"every genome its own class ({len(gids)})"

    # classification: classes with at least `folds` genomes
    row.update(weighted_f1=None, majority_weighted_f1=None, accuracy=None)
    small = [c for c in classes if counts[c] < folds]
    row["classes_left_out"] = len(small)
    row["genomes_left_out"] = sum(counts[c] for c in small)
    kept = [c for c in classes if counts[c] >= folds]
    row["n_evaluated"] = row["n_classes_evaluated"] = 0
    if not gids:
        row["classification_skip"] = "no labelled genome"
    elif len(classes) == 1:
        row["classification_skip"] = f"a single class ({classes[0]!r}, {len(gids)} genomes)"
    elif len(kept) < 2:
        row["classification_skip"] = (
            f"{len(kept)} of {len(classes)} classes have at least {folds} genomes (the number of folds)"
        )
    else:
        row["classification_skip"] = None
        sel = [g for g in gids if taxonomy[g][rank] in kept]
        row["n_evaluated"], row["n_classes_evaluated"] = len(sel), len(kept)
        x = torch.stack([emb[g] for g in sel])
        y = torch.tensor([kept.index(taxonomy[g][rank]) for g in sel])
        row.update(cross_validate(x, y, folds, seed, l2))
    return row


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_table(rows: list[dict[str, Any]], folds: int) -> str:
    lines = [
        "| model | pair source | rank | genomes | classes | evaluated (classes) | weighted F1 | majority F1 | silhouette | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        notes = []
        if r["classification_skip"]:
            notes.append(f"classification skipped: {r['classification_skip']}")
        elif r["classes_left_out"]:
            notes.append(
                f"left out {r['classes_left_out']} classes ({r['genomes_left_out']} genomes) with < {folds} genomes"
            )
        if r["silhouette_skip"]:
            notes.append(f"silhouette skipped: {r['silhouette_skip']}")
        lines.append(
            f"| {r['model']} | {r['source']} | {r['rank']} | {r['n_genomes']} | {r['n_classes']} | "
            f"{r['n_evaluated']} ({r['n_classes_evaluated']}) | {_fmt(r['weighted_f1'])} | "
            f"{_fmt(r['majority_weighted_f1'])} | {_fmt(r['silhouette'])} | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def run_taxonomy(
    cfg: PretrainConfig,
    taxonomy: Taxonomy,
    out_dir: Path,
    checkpoints: Sequence[str] = (),
    sources: Optional[Sequence[str]] = None,
    ranks: Optional[Sequence[str]] = None,
    folds: int = 5,
    l2: float = 1e-2,
    genomes: Optional[Sequence[Genome]] = None,
    taxonomy_files: Sequence[str] = (),
    device: Optional[torch.device] = None,
    where: str = "config",
) -> dict[str, Any]:
    """Evaluate every (model, pair source, rank); write JSON and Markdown; return the report."""
    data = genome_config(cfg, where)
    if folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    sources = list(sources) if sources else [data.pair_source.name]
    unknown = [s for s in sources if s not in PAIR_SOURCES]
    if unknown:
        raise UserError(f"--sources: unknown pair source(s) {unknown}; choose from {list(PAIR_SOURCES)}")
    genomes = list(genomes) if genomes is not None else load_genomes(data)
    coverage = match_taxonomy(genomes, taxonomy, taxonomy_files or ["the taxonomy table"])
    present = {r for g in genomes for r in taxonomy.get(g.genome_id, {})}
    ranks = list(ranks) if ranks else [r for r in rank_order(present) if r != "taxid"]
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for label, model in load_models(cfg, checkpoints, device):
        for source_name in sources:
            t0 = time.time()
            source = build_pair_source(dataclasses.replace(data.pair_source, name=source_name), genomes)
            emb = genome_embeddings(protein_embeddings(model, genomes, source, data.max_tokens, device), genomes)
            seconds = round(time.time() - t0, 1)
            for rank in ranks:
                row = evaluate_rank(emb, taxonomy, rank, folds, cfg.run.seed, l2)
                rows.append({"model": label, "source": source_name, **row, "embedding_seconds": seconds})
    meta = {
        "config": where,
        "taxonomy": list(taxonomy_files),
        "coverage": coverage,
        "ranks": ranks,
        "max_tokens": data.max_tokens,
        "folds": folds,
        "seed": cfg.run.seed,
        "l2": l2,
        "embedding": "genome = mean over its proteins of each protein's mean final hidden state over its residues, "
        "taken inside its genome window under the pair source",
        "classifier": "multinomial logistic regression on standardised features (L2, L-BFGS), stratified k-fold "
        "over genomes, predictions pooled over folds; classes with fewer genomes than folds left out",
        "silhouette": "cosine distance on raw genome embeddings, all genomes labelled at the rank",
    }
    report = {"meta": meta, "rows": rows}
    atomic_write_text(out_dir / "genome_taxonomy.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "genome_taxonomy.md", markdown_table(rows, folds))
    return report


def _comma_list(text: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None
