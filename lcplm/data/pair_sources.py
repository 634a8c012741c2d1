"""Pair sources: which proteins of a genome window may attend to each other.

A pair source turns a :class:`~lcplm.data.genomes.GenomeWindow` into ``allowed``, a
``(P, P)`` bool matrix over the window's proteins (P = number of proteins). Query token i
attends key token j iff ``allowed[pid[i], pid[j]]``. Every source keeps the diagonal true
(full attention inside a protein) and every source here is symmetric.

=================  =============================================================================
``dense``          all pairs (a plain genome transformer)
``single_protein`` the diagonal only (each protein alone: an ESM-2 baseline on the same data)
``window``         proteins at most ``window`` positions apart in genome order
``global``         ``num_global`` evenly spaced proteins see and are seen by every protein
``ppi``            pairs from an edge file keyed by protein id (``edges``; any format and the one
                   edge rule of :mod:`lcplm.data.edge_lists`), and/or STRING's
                   gene-neighbourhood evidence (``neighbourhood_max_gap``): proteins in one run
                   of same-strand genes whose intergenic gaps are at most that many bp
``scored``         the ``top_k`` partners per protein by a pair-score file written by the
                   model's own attention pass (``lcplm genome pair-scores``)
=================  =============================================================================

The static matrices come from one home, ``lcplm_kernels.block_sparse_attn.layout``
(``dense_allowed``, ``single_protein_allowed``, ``window_allowed``, ``global_allowed``,
``allowed_from_pairs``): they are the kernel's input contract, the kernel package must stay
standalone (it imports only torch, triton and the standard library, never lcplm), and data may
import it because it sits below every lcplm layer (importing ``layout`` loads torch only, not
Triton).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from lcplm_kernels.block_sparse_attn.layout import (
    allowed_from_pairs,
    dense_allowed,
    global_allowed,
    single_protein_allowed,
    window_allowed,
)

from lcplm.data.edge_lists import check_edge_options, read_edges
from lcplm.data.genomes import Genome, GenomeWindow
from lcplm.data.paths import resolve_data_path
from lcplm.errors import UserError

log = logging.getLogger(__name__)

PAIR_SOURCES = ("dense", "single_protein", "window", "global", "ppi", "scored")


@dataclass
class PairSourceConfig:
    name: str = "dense"  # dense | single_protein | window | global | ppi | scored
    window: int = 2  # window: proteins at most this many positions apart attend to each other
    num_global: int = 1  # global: number of evenly spaced global proteins per window
    edges: Optional[str] = None  # ppi: edge file keyed by protein id (shared:/package: paths ok)
    edge_format: str = "pairs"  # ppi: pairs (id1 id2 [score|label]) | string (protein.links) | string_actions
    min_score: Optional[float] = None  # ppi: a line is an edge when it has no score or score >= this (null: 0.5 pairs, 700 STRING)
    modes: Optional[list[str]] = None  # ppi, string_actions: keep only these STRING modes (null: all)
    neighbourhood_max_gap: Optional[int] = None  # ppi: link same-strand gene runs with gaps <= this (bp)
    scores: Optional[str] = None  # scored: 'id1 id2 score' file from lcplm.eval.genome_pair_scores
    top_k: int = 4  # scored: partners kept per protein (the union over both ends is used)


# ----------------------------------------------------------------------------- static matrices


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread over range(n): the centres of k equal parts."""
    k = min(k, n)
    return sorted({int((i + 0.5) * n / k) for i in range(k)})


# ----------------------------------------------------------------------------- files


def read_pair_scores(path: Path) -> dict[frozenset[str], float]:
    """``id1 <TAB> id2 <TAB> score`` lines (a ``#`` header allowed) -> symmetric scores."""
    if not path.is_file():
        raise UserError(
            f"{path}: pair-score file not found (write it first with "
            "'lcplm genome pair-scores CONFIG --checkpoint CKPT --out FILE')"
        )
    scores: dict[frozenset[str], float] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split()
            try:
                a, b, s = cols[0], cols[1], float(cols[2])
                if len(cols) != 3:
                    raise ValueError
            except (ValueError, IndexError):
                raise UserError(f"{path}:{n}: expected 'id1 id2 score', got {line.strip()!r}") from None
            if a != b:
                scores[frozenset((a, b))] = s
    if not scores:
        raise UserError(f"{path}: no pair scores")
    return scores


# ----------------------------------------------------------------------------- sources


class PairSource(abc.ABC):
    """Builds ``allowed`` (P, P) bool for a window; diagonal always true."""

    name: str

    @abc.abstractmethod
    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        """(P, P) bool over ``window.proteins``."""


class DensePairs(PairSource):
    name = "dense"

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        return dense_allowed(len(window.proteins))


class SingleProteinPairs(PairSource):
    name = "single_protein"

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        return single_protein_allowed(len(window.proteins))


class WindowPairs(PairSource):
    name = "window"

    def __init__(self, w: int):
        if w < 0:
            raise UserError(f"pair_source.window must be >= 0, got {w}")
        self.w = w

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        return window_allowed(len(window.proteins), self.w)


class GlobalPairs(PairSource):
    name = "global"

    def __init__(self, num_global: int):
        if num_global < 1:
            raise UserError(f"pair_source.num_global must be >= 1, got {num_global}")
        self.k = num_global

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        n = len(window.proteins)
        return global_allowed(n, evenly_spaced(n, self.k))


class _KeyedPairs(PairSource):
    """Pairs keyed by protein id, looked up inside each window."""

    def __init__(self, pairs: set[frozenset[str]]):
        self.partners: dict[str, set[str]] = {}
        for a, b in (tuple(e) for e in pairs):
            self.partners.setdefault(a, set()).add(b)
            self.partners.setdefault(b, set()).add(a)

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        index = {p: i for i, p in enumerate(window.protein_ids)}
        found = [
            (i, index[b]) for a, i in index.items() for b in self.partners.get(a, ()) if b in index
        ]
        return allowed_from_pairs(len(index), found)


def neighbourhood_pairs(genomes: Sequence[Genome], max_gap: int) -> set[frozenset[str]]:
    """STRING-style gene-neighbourhood associations: all pairs inside each run of consecutive
    same-strand genes whose intergenic distance is at most ``max_gap`` bp (putative operons)."""
    pairs: set[frozenset[str]] = set()
    for g in genomes:
        for p in g.proteins:
            if p.start is None or p.end is None or p.strand is None:
                raise UserError(
                    f"genome {g.genome_id!r} ({g.source}): protein {p.protein_id!r} has no "
                    "coordinates/strand, needed by pair_source.neighbourhood_max_gap"
                )
        run: list[str] = [g.proteins[0].protein_id] if g.proteins else []
        for prev, cur in zip(g.proteins, g.proteins[1:]):
            if cur.strand == prev.strand and cur.start - prev.end - 1 <= max_gap:
                run.append(cur.protein_id)
                continue
            pairs.update(frozenset((a, b)) for i, a in enumerate(run) for b in run[i + 1 :])
            run = [cur.protein_id]
        pairs.update(frozenset((a, b)) for i, a in enumerate(run) for b in run[i + 1 :])
    return pairs


class PPIPairs(_KeyedPairs):
    name = "ppi"


class ScoredPairs(PairSource):
    """Top-k partners per protein among the window's proteins by a pair score; symmetric union."""

    name = "scored"

    def __init__(self, scores: dict[frozenset[str], float], top_k: int):
        if top_k < 0:
            raise UserError(f"pair_source.top_k must be >= 0, got {top_k}")
        self.scores, self.k = scores, top_k

    def allowed(self, window: GenomeWindow) -> torch.Tensor:
        ids = window.protein_ids
        n = len(ids)
        s = torch.full((n, n), float("-inf"))
        for i in range(n):
            for j in range(i + 1, n):
                v = self.scores.get(frozenset((ids[i], ids[j])))
                if v is not None:
                    s[i, j] = s[j, i] = v
        a = torch.eye(n, dtype=torch.bool)
        k = min(self.k, n - 1)
        if k > 0:
            top, idx = s.topk(k, dim=1)
            keep = torch.isfinite(top)
            rows = torch.arange(n).unsqueeze(1).expand_as(idx)
            a[rows[keep], idx[keep]] = True
            a = a | a.T
        return a


def build_pair_source(cfg: PairSourceConfig, genomes: Sequence[Genome] = ()) -> PairSource:
    """The pair source a config names; ``genomes`` are needed by ``ppi`` (to match edges)."""
    if cfg.name == "dense":
        return DensePairs()
    if cfg.name == "single_protein":
        return SingleProteinPairs()
    if cfg.name == "window":
        return WindowPairs(cfg.window)
    if cfg.name == "global":
        return GlobalPairs(cfg.num_global)
    if cfg.name == "ppi":
        if cfg.edges is None and cfg.neighbourhood_max_gap is None:
            raise UserError("pair_source 'ppi' needs 'edges' (an edge list) and/or 'neighbourhood_max_gap'")
        check_edge_options(cfg.edge_format, cfg.min_score, cfg.modes, "data.pair_source")
        pairs: set[frozenset[str]] = set()
        known = {p.protein_id for g in genomes for p in g.proteins}
        if cfg.edges is not None:
            path = resolve_data_path(cfg.edges)
            edges = read_edges(path, cfg.edge_format, cfg.min_score, cfg.modes).pair_set()
            matched = {e for e in edges if e <= known}
            if genomes and not matched:
                raise UserError(
                    f"{path}: none of its {len(edges)} pairs joins two proteins of the genomes "
                    "(protein ids are locus tags for GenBank, record ids for FASTA)"
                )
            log.info("%s: %d of %d pairs join proteins of the genomes", path, len(matched), len(edges))
            pairs |= matched
        if cfg.neighbourhood_max_gap is not None:
            pairs |= neighbourhood_pairs(genomes, cfg.neighbourhood_max_gap)
        return PPIPairs(pairs)
    if cfg.name == "scored":
        if cfg.scores is None:
            raise UserError("pair_source 'scored' needs 'scores' (a file from lcplm.eval.genome_pair_scores)")
        return ScoredPairs(read_pair_scores(resolve_data_path(cfg.scores)), cfg.top_k)
    raise UserError(f"pair_source.name must be one of {list(PAIR_SOURCES)}, got {cfg.name!r}")
