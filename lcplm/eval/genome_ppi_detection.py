"""Protein-protein interactions detected from attention: ViralEmbed's two-step pair scores
against known interacting pairs.

``lcplm genome ppi-detection EXPERIMENT.yaml --pairs KNOWN [--scores FILE | --checkpoint CKPT
[--source dense]] [--top-k K | --threshold S] [--min-score 1] [--out DIR] [key=value ...]``

Scores are the first step of the ``scored`` pair source: the symmetrised inter-protein attention
mass of every pair of proteins that share a genome window (read from a file of ``lcplm genome
pair-scores``, or computed here from ``--checkpoint``, the config's model at random init without
one). The known pairs are an ``id1 id2 [score|label]`` list (protein ids as in the genomes:
locus tags for GenBank, record ids for FASTA; a third column keeps a pair when >= ``--min-score``,
so 0/1 labels keep the 1s), read by the same reader as the ``ppi`` pair source.

Decision rule (the second step): ViralEmbed lets each protein attend to its top-k partners by
these scores, and so does the ``scored`` pair source; a pair is *predicted* interacting when it
is among the top k partners of either of its proteins inside their window (the symmetric union
the pair source builds; k = ``data.pair_source.top_k`` unless ``--top-k``), or, with
``--threshold S``, when its score is >= S. Metrics are over the scored pairs (pairs sharing a
window and present in the scores): precision, recall and F1 of the predicted set, and the area
under the precision-recall curve as average precision over all scored pairs (torchmetrics'
``binary_average_precision``, equal to scikit-learn's ``average_precision_score``), beside the
share of positives (the AP of random scores). Known pairs naming proteins absent from the
genomes are counted and left out (none matching is an error); known pairs of proteins that never
share a window cannot be scored and are counted. Output: ``DIR/genome_ppi_detection.json`` and
``DIR/genome_ppi_detection.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torchmetrics.functional.classification import binary_average_precision

from lcplm.config import PretrainConfig
from lcplm.data.datamodules.genome import load_genomes
from lcplm.data.genomes import Genome, genome_windows
from lcplm.data.edge_lists import read_edges
from lcplm.data.pair_sources import ScoredPairs, read_pair_scores
from lcplm.errors import UserError
from lcplm.eval.genome_pair_scores import first_pass_source, window_pair_scores
from lcplm.eval.genome_probe import genome_config, load_models
from lcplm.files import atomic_write_text

Pair = frozenset  # of two protein ids


def match_known_pairs(path: Path, known: set[Pair], genomes: Sequence[Genome]) -> dict[str, Any]:
    """Split the known pairs into those joining two proteins of the genomes and the rest;
    none joining two is a UserError naming the file."""
    proteins = {p.protein_id for g in genomes for p in g.proteins}
    matched = {e for e in known if e <= proteins}
    absent = sorted({pid for e in known - matched for pid in e if pid not in proteins})
    if not matched:
        raise UserError(
            f"{path}: none of its {len(known)} pairs joins two proteins of the genomes ({len(absent)} protein ids "
            f"are absent from them, e.g. {absent[:3]}; protein ids are locus tags for GenBank, record ids for FASTA)"
        )
    return {
        "matched": matched,
        "pairs_in_file": len(known),
        "pairs_with_absent_proteins": len(known) - len(matched),
        "absent_proteins": len(absent),
        "absent_protein_examples": absent[:5],
    }


def window_pairs(genomes: Sequence[Genome], max_tokens: int) -> dict[Pair, tuple[str, int]]:
    """{pair: (genome id, window index)} for every pair of proteins that share a window."""
    out: dict[Pair, tuple[str, int]] = {}
    for g in genomes:
        for k, w in enumerate(genome_windows(g, max_tokens)):
            ids = w.protein_ids
            for i in range(len(ids)):
                for j in range(i + 1, len(ids)):
                    out[frozenset((ids[i], ids[j]))] = (g.genome_id, k)
    return out


def predicted_pairs(
    scores: dict[Pair, float], genomes: Sequence[Genome], max_tokens: int, top_k: Optional[int], threshold: Optional[float]
) -> set[Pair]:
    """The pairs the decision rule calls interacting: the scored pair source's top-k union per
    window, or every scored pair with score >= threshold."""
    if threshold is not None:
        return {e for e, s in scores.items() if s >= threshold}
    source = ScoredPairs(scores, top_k)
    out: set[Pair] = set()
    for g in genomes:
        for w in genome_windows(g, max_tokens):
            a = source.allowed(w)
            ids = w.protein_ids
            i, j = torch.nonzero(torch.triu(a, diagonal=1), as_tuple=True)
            out |= {frozenset((ids[x], ids[y])) for x, y in zip(i.tolist(), j.tolist())}
    return out


def detection_metrics(scores: dict[Pair, float], predicted: set[Pair], positives: set[Pair]) -> dict[str, Any]:
    """Precision / recall / F1 of ``predicted`` and average precision of ``scores`` over the
    scored pairs, with ``positives`` the known interacting pairs (only scored ones count)."""
    pairs = list(scores)
    y = torch.tensor([e in positives for e in pairs], dtype=torch.long)
    s = torch.tensor([scores[e] for e in pairs], dtype=torch.float64)
    pos = int(y.sum())
    pred = {e for e in predicted if e in scores}
    tp = len(pred & positives)
    fp, fn = len(pred) - tp, pos - tp
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / pos if pos else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {
        "scored_pairs": len(pairs),
        "positives": pos,
        "predicted": len(pred),
        "true_positives": tp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "average_precision": float(binary_average_precision(s, y)) if pos else None,
        "positive_rate": pos / len(pairs) if pairs else None,
    }


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_table(row: dict[str, Any]) -> str:
    lines = [
        "| scores | rule | scored pairs | known (scored) | predicted | precision | recall | F1 | AUPR (AP) | positive rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['scores_from']} | {row['rule']} | {row['scored_pairs']} | {row['positives']} | {row['predicted']} | "
        f"{_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | {_fmt(row['average_precision'])} | "
        f"{_fmt(row['positive_rate'])} |",
    ]
    notes = []
    k = row["known"]
    if k["pairs_with_absent_proteins"]:
        notes.append(
            f"{k['pairs_with_absent_proteins']} of {k['pairs_in_file']} known pairs name proteins absent from the genomes "
            f"(e.g. {', '.join(k['absent_protein_examples'][:3])}): left out"
        )
    if k["matched_unscored"]:
        notes.append(f"{k['matched_unscored']} known pairs join proteins that share no scored window: not scorable")
    if row["positives"] == 0:
        notes.append("no known pair among the scored pairs: precision, recall and AP are undefined")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def run_ppi_detection(
    cfg: PretrainConfig,
    pairs_path: Path,
    out_dir: Path,
    scores_path: Optional[Path] = None,
    checkpoint: Optional[str] = None,
    source: str = "dense",
    top_k: Optional[int] = None,
    threshold: Optional[float] = None,
    min_score: float = 1.0,
    device: Optional[torch.device] = None,
    where: str = "config",
) -> dict[str, Any]:
    data = genome_config(cfg, where)
    if threshold is not None and top_k is not None:
        raise UserError("give --top-k or --threshold, not both")
    top_k = data.pair_source.top_k if top_k is None and threshold is None else top_k
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if scores_path is not None and checkpoint is not None:
        raise UserError("give --scores (a pair-score file) or --checkpoint (score here), not both")
    genomes = load_genomes(data)
    known = match_known_pairs(pairs_path, read_edges(pairs_path, "pairs", min_score).pair_set(), genomes)
    shared = window_pairs(genomes, data.max_tokens)
    if scores_path is not None:
        all_scores = read_pair_scores(scores_path)
        scores = {e: s for e, s in all_scores.items() if e in shared}
        if not scores:
            raise UserError(
                f"{scores_path}: none of its {len(all_scores)} pairs joins two proteins sharing a window of the genomes "
                f"(data.max_tokens={data.max_tokens}); was it written for this experiment?"
            )
        scores_from = str(scores_path)
        scores_outside = len(all_scores) - len(scores)
    else:
        first_pass = first_pass_source(data, source, genomes)
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        (label, model), = load_models(cfg, [checkpoint] if checkpoint else [], device)
        scores = {frozenset((a, b)): s for a, b, s in window_pair_scores(model, genomes, first_pass, data.max_tokens, device)}
        scores_from = f"{label} ({source} pass)"
        scores_outside = 0
    matched = known.pop("matched")
    known["matched_scored"] = len(matched & scores.keys())
    known["matched_unscored"] = len(matched) - known["matched_scored"]
    rule = f"top-{top_k} per protein" if threshold is None else f"score >= {threshold:g}"
    row = {
        "scores_from": scores_from,
        "rule": rule,
        **detection_metrics(scores, predicted_pairs(scores, genomes, data.max_tokens, top_k, threshold), matched),
        "known": known,
        "score_pairs_outside_windows": scores_outside,
    }
    meta = {
        "config": where,
        "pairs": str(pairs_path),
        "min_score": min_score,
        "max_tokens": data.max_tokens,
        "genomes": len(genomes),
        "rule": (
            "a pair is predicted when it is among the top-k partners (by score, inside their window) of either "
            "protein: the scored pair source's selection (ViralEmbed's two-step attention)"
            if threshold is None
            else "a pair is predicted when its score is >= the threshold"
        ),
        "metrics": "over scored pairs (pairs sharing a window and present in the scores); AUPR = average precision",
    }
    report = {"meta": meta, "rows": [row]}
    atomic_write_text(out_dir / "genome_ppi_detection.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "genome_ppi_detection.md", markdown_table(row))
    return report
