"""Seeded splits of the downstream data sets (their readers are :mod:`lcplm.data.benchmarks` and
:mod:`lcplm.data.edge_lists`). Every function is a pure function of its inputs and ``seed``.

* :func:`split_fractions`: random train/valid/test indices (function tables, PPI pairs split by pair,
  interaction types split at random);
* :func:`astral_holdout_splits`: TAPE-style fold / superfamily / family hold-outs of ASTRAL domains;
* :func:`split_pairs`: labelled pairs split by pair or by protein (no valid/test protein in training);
* :func:`string_pairs`: STRING links as positives plus sampled non-linked pairs as negatives;
* :func:`traversal_edge_split`: GNN-PPI's BFS / DFS splits of an interaction graph (Lv et al. 2021):
  connected sets of test (and validation) pairs, see there for the exact rule;
* :func:`edge_split`: one of random / bfs / dfs by name.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcplm.data.benchmarks import HomologyRecord, LabelledPairs
from lcplm.data.edge_lists import read_string_links
from lcplm.errors import UserError

EDGE_SPLITS = ("random", "bfs", "dfs")
ROOT_MAX_DEGREE = 5  # GNN-PPI draws traversal roots among proteins with at most this many pairs


@dataclass
class HoldoutReport:
    n_records: int
    n_excluded_classes: int  # records of SCOP classes left out (see ``classes``)
    sizes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        return f"{self.n_records} domains ({self.n_excluded_classes} of excluded classes left out): {parts}"


def astral_holdout_splits(
    records: list[HomologyRecord],
    seed: int,
    fold_test_frac: float = 0.05,
    superfamily_test_frac: float = 0.08,
    family_test_frac: float = 0.08,
    valid_frac: float = 0.05,
    classes: str = "abcdefg",
) -> tuple[dict[str, list[HomologyRecord]], HoldoutReport]:
    """TAPE-style hold-outs for fold classification, seeded.

    The label is the fold, so a test domain's fold must be seen in training; what is held out
    is the level *below* the one a test set is named after (TAPE, after Hou et al. 2018):

    * ``test_fold_holdout``: whole superfamilies absent from training (their folds present);
    * ``test_superfamily_holdout``: whole families absent from training (superfamilies present);
    * ``test_family_holdout``: domains whose families also have training domains;
    * ``valid``: like the family hold-out, drawn from what is left.

    Each set takes whole groups in a seeded random order until it holds about its fraction of
    the domains, never the last remaining group of its parent. Domains of SCOP classes not in
    ``classes`` (h-l: coiled coils, low resolution, peptides, designed, artifacts) are left out
    and counted in the report.
    """
    kept = [r for r in records if r.family[0] in classes]
    report = HoldoutReport(len(records), len(records) - len(kept))
    rng = np.random.default_rng(seed)
    n = len(kept)

    def hold_out(pool: list[int], child, parent, frac: float) -> tuple[list[int], list[int]]:
        """Move whole ``child`` groups out of ``pool`` while each ``parent`` keeps another child."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i in pool:
            groups[child(kept[i])].append(i)
        children_of: dict[str, set[str]] = defaultdict(set)
        for name, members in groups.items():
            children_of[parent(kept[members[0]])].add(name)
        names = sorted(groups)
        target = int(round(frac * n))
        out: set[str] = set()
        taken = 0
        for j in rng.permutation(len(names)):
            if taken >= target:
                break
            name = names[j]
            siblings = children_of[parent(kept[groups[name][0]])]
            if len(siblings) > 1:
                siblings.discard(name)
                out.add(name)
                taken += len(groups[name])
        held = [i for i in pool if child(kept[i]) in out]
        return [i for i in pool if child(kept[i]) not in out], held

    pool = list(range(n))
    pool, fold_test = hold_out(pool, lambda r: r.superfamily, lambda r: r.fold, fold_test_frac)
    pool, sf_test = hold_out(pool, lambda r: r.family, lambda r: r.superfamily, superfamily_test_frac)
    # single domains are the children here: a domain leaves only if its family keeps another
    pool, fam_test = hold_out(pool, lambda r: r.id, lambda r: r.family, family_test_frac)
    pool, valid = hold_out(pool, lambda r: r.id, lambda r: r.family, valid_frac)
    splits = {
        "train": [kept[i] for i in pool],
        "valid": [kept[i] for i in valid],
        "test_fold_holdout": [kept[i] for i in fold_test],
        "test_superfamily_holdout": [kept[i] for i in sf_test],
        "test_family_holdout": [kept[i] for i in fam_test],
    }
    report.sizes = {k: len(v) for k, v in splits.items()}
    return splits, report


def string_pairs(links_path: str | Path, proteins: list[str], seed: int, min_score: float = 700,
                 negatives_per_positive: float = 1.0) -> LabelledPairs:
    """STRING links with ``combined_score >= min_score`` as positives among ``proteins``, and
    seeded uniformly random non-linked pairs of those proteins as negatives."""
    edges = read_string_links(links_path, min_score)
    names = list(proteins)
    node = {p: k for k, p in enumerate(names)}
    keep_a, keep_b = [], []
    for s, d in zip(edges.src.tolist(), edges.dst.tolist()):
        u, v = node.get(edges.names[s]), node.get(edges.names[d])
        if u is not None and v is not None and u != v:
            keep_a.append(min(u, v)), keep_b.append(max(u, v))
    if not keep_a:
        raise UserError(f"{links_path}: no link with score >= {min_score} between proteins that have sequences")
    n = len(names)
    pos_keys = np.unique(np.asarray(keep_a, np.int64) * n + np.asarray(keep_b, np.int64))
    n_neg = int(round(negatives_per_positive * len(pos_keys)))
    if n_neg > n * (n - 1) // 2 - len(pos_keys):
        raise UserError(f"{links_path}: not enough unlinked pairs for {n_neg} negatives")
    rng = np.random.default_rng(seed)
    neg: set[int] = set()
    pos_set = set(pos_keys.tolist())
    while len(neg) < n_neg:
        u = rng.integers(0, n, 2 * (n_neg - len(neg)) + 16)
        v = rng.integers(0, n, len(u))
        for x, z in zip(np.minimum(u, v).tolist(), np.maximum(u, v).tolist()):
            k = x * n + z
            if x != z and k not in pos_set and len(neg) < n_neg:
                neg.add(k)
    keys = np.concatenate([pos_keys, np.fromiter(sorted(neg), np.int64, len(neg))])
    y = np.concatenate([np.ones(len(pos_keys), np.float32), np.zeros(len(neg), np.float32)])
    return LabelledPairs(str(links_path), names, keys // n, keys % n, y)


def split_pairs(pairs: LabelledPairs, seed: int, valid_frac: float = 0.1, test_frac: float = 0.2,
                by: str = "pair") -> dict[str, np.ndarray]:
    """Seeded train/valid/test indices into ``pairs``.

    ``by="pair"``: pairs are shuffled and cut. ``by="protein"``: proteins are shuffled and
    assigned to test, valid and train so that the pairs touching them come close to the
    fractions; a pair touching a test protein is a test pair, else one touching a valid
    protein is a valid pair. No training pair contains a valid or test protein, and no pair
    is dropped.
    """
    n = len(pairs)
    if by == "pair":
        return split_fractions(n, seed, valid_frac, test_frac)
    if by != "protein":
        raise UserError(f"pair split must be 'pair' or 'protein', got {by!r}")
    rng = np.random.default_rng(seed)
    n_prot = len(pairs.names)
    side = np.zeros(n_prot, np.int64)  # 0 train, 1 valid, 2 test
    unassigned = np.ones(n, bool)
    counts = np.zeros(3, np.int64)
    order = rng.permutation(n_prot)
    k = 0
    touching: list[list[int]] = [[] for _ in range(n_prot)]
    for idx, (u, v) in enumerate(zip(pairs.a.tolist(), pairs.b.tolist())):
        touching[u].append(idx)
        touching[v].append(idx)
    for split, frac in ((2, test_frac), (1, valid_frac)):
        target = int(round(frac * n))
        while counts[split] < target and k < n_prot:
            p = order[k]
            k += 1
            side[p] = split
            new = [i for i in touching[p] if unassigned[i]]
            unassigned[new] = False
            counts[split] += len(new)
    pair_side = np.maximum(side[pairs.a], side[pairs.b])
    return {"test": np.flatnonzero(pair_side == 2), "valid": np.flatnonzero(pair_side == 1),
            "train": np.flatnonzero(pair_side == 0)}


def split_fractions(n: int, seed: int, valid_frac: float, test_frac: float) -> dict[str, np.ndarray]:
    """Seeded random train/valid/test indices of ``n`` items (sorted within each split)."""
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise UserError(f"split fractions valid={valid_frac}, test={test_frac} must be >= 0 and sum below 1")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(math.floor(test_frac * n + 0.5)), int(math.floor(valid_frac * n + 0.5))
    return {"train": np.sort(order[n_test + n_valid:]), "valid": np.sort(order[n_test:n_test + n_valid]),
            "test": np.sort(order[:n_test])}


def edge_split(pairs: np.ndarray, n_nodes: int, seed: int, valid_frac: float, test_frac: float,
               method: str) -> dict[str, np.ndarray]:
    """Train/valid/test indices into ``pairs`` (P, 2) by ``method``: ``random``
    (:func:`split_fractions`), ``bfs`` or ``dfs`` (:func:`traversal_edge_split`)."""
    if method == "random":
        return split_fractions(len(pairs), seed, valid_frac, test_frac)
    if method in ("bfs", "dfs"):
        return traversal_edge_split(pairs, n_nodes, seed, valid_frac, test_frac, method)
    raise UserError(f"edge split must be one of {list(EDGE_SPLITS)}, got {method!r}")


def traversal_edge_split(pairs: np.ndarray, n_nodes: int, seed: int, valid_frac: float, test_frac: float,
                         order: str = "bfs") -> dict[str, np.ndarray]:
    """GNN-PPI's BFS / DFS split (Lv et al. 2021, ``get_bfs_sub_graph`` / ``get_dfs_sub_graph``):
    the test pairs form a connected region of the interaction graph, so that test proteins are
    mostly unseen in training.

    pairs: (P, 2) node indices in ``0..n_nodes-1`` of undirected pairs, each listed once. The
    rule, for the test set and then, on the pairs left, for the validation set:

    * target: ``floor(frac * P)`` pairs (GNN-PPI: ``int(edge_num * test_size)``);
    * root: drawn uniformly (seeded) among proteins with 1 to :data:`ROOT_MAX_DEGREE` pairs still
      available (GNN-PPI redraws a random protein until it has at most 5 pairs); when none has,
      among all proteins with an available pair;
    * ``bfs``: a queue from the root; visiting a protein selects all its available pairs and
      queues each newly reached neighbour once;
      ``dfs``: a stack from the root; visiting a protein selects all its available pairs; a
      visited protein on top of the stack pushes its first unvisited neighbour (pairs in input
      order) or, having none, is popped;
    * selection stops before visiting the next protein once the target is reached, so a set may
      exceed its target by the last protein's pairs;
    * when the queue or stack runs empty first (the root's component is used up; GNN-PPI would
      fail there) a new root is drawn by the same rule.

    GNN-PPI tests on its traversal set and has no validation set; here the validation pairs are a
    second traversal of what the test set left, so model selection sees the same kind of split.
    Returns sorted int64 indices into ``pairs`` for ``train``, ``valid`` and ``test``.
    """
    if order not in ("bfs", "dfs"):
        raise UserError(f"traversal order must be 'bfs' or 'dfs', got {order!r}")
    if not (0 <= valid_frac and 0 <= test_frac and valid_frac + test_frac < 1):
        raise UserError(f"split fractions valid={valid_frac}, test={test_frac} must be >= 0 and sum below 1")
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    n_pairs = len(pairs)
    incident: list[list[int]] = [[] for _ in range(n_nodes)]
    for k, (u, v) in enumerate(pairs.tolist()):
        incident[u].append(k)
        incident[v].append(k)
    taken = np.zeros(n_pairs, bool)
    rng = np.random.default_rng(seed)
    test = _traverse(pairs, incident, taken, int(test_frac * n_pairs), rng, order)
    valid = _traverse(pairs, incident, taken, int(valid_frac * n_pairs), rng, order)
    return {"train": np.flatnonzero(~taken).astype(np.int64), "valid": np.sort(valid), "test": np.sort(test)}


def _traverse(pairs: np.ndarray, incident: list[list[int]], taken: np.ndarray, target: int,
              rng: np.random.Generator, order: str) -> np.ndarray:
    """Select about ``target`` available pairs (``~taken``) by one traversal (see
    :func:`traversal_edge_split`); marks them taken and returns their indices."""
    available = ~taken  # the graph this traversal walks: pairs of earlier sets are removed
    visited: set[int] = set()
    selected: list[int] = []

    def other(k: int, node: int) -> int:
        u, v = pairs[k]
        return int(v) if u == node else int(u)

    def visit(node: int) -> list[int]:
        """Select the node's available pairs; return the neighbours they reach."""
        visited.add(node)
        reached = []
        for k in incident[node]:
            if not taken[k]:  # pairs of earlier sets are taken too
                taken[k] = True
                selected.append(k)
                reached.append(other(k, node))
        return reached

    while len(selected) < target:
        root = _draw_root(incident, taken, rng)
        if root is None:  # no pair left to select
            break
        if order == "bfs":
            queue, queued = deque([root]), {root}
            while queue and len(selected) < target:
                for nb in visit(queue.popleft()):
                    if nb not in visited and nb not in queued:
                        queue.append(nb)
                        queued.add(nb)
        else:
            stack, scan = [root], defaultdict(int)  # scan[node]: incident pairs already looked at
            while stack and len(selected) < target:
                node = stack[-1]
                if node not in visited:
                    visit(node)
                    continue
                edges = incident[node]
                while scan[node] < len(edges):
                    k = edges[scan[node]]
                    scan[node] += 1
                    if available[k] and other(k, node) not in visited:
                        stack.append(other(k, node))
                        break
                else:
                    stack.pop()
    return np.asarray(selected, np.int64)


def _draw_root(incident: list[list[int]], taken: np.ndarray, rng: np.random.Generator) -> int | None:
    """A uniformly drawn node with 1..ROOT_MAX_DEGREE untaken pairs (else with any); None if none."""
    degree = np.asarray([int((~taken[edges]).sum()) if edges else 0 for edges in incident], np.int64)
    low = np.flatnonzero((degree >= 1) & (degree <= ROOT_MAX_DEGREE))
    pool = low if len(low) else np.flatnonzero(degree >= 1)
    return int(pool[rng.integers(len(pool))]) if len(pool) else None
