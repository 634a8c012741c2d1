"""GNN-PPI's BFS / DFS pair splits (``traversal_edge_split``) and the random one (``edge_split``)."""

from __future__ import annotations

import numpy as np
import pytest

from lcplm.data import benchmark_splits as bs
from lcplm.errors import UserError


def _graph(n: int = 60, extra: int = 90, seed: int = 0) -> np.ndarray:
    """A connected random graph: a random spanning tree plus extra edges; (P, 2) sorted unique pairs."""
    rng = np.random.default_rng(seed)
    edges = {(min(i, int(rng.integers(0, i))), i) for i in range(1, n)}
    while len(edges) < n - 1 + extra:
        a, b = (int(x) for x in rng.integers(0, n, 2))
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return np.asarray(sorted(edges), np.int64)


def _incident(pairs: np.ndarray, n: int) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(n)]
    for k, (u, v) in enumerate(pairs.tolist()):
        out[u].append(k)
        out[v].append(k)
    return out


def _gnn_ppi_traversal(pairs: np.ndarray, incident: list[list[int]], root: int, size: int, order: str) -> set[int]:
    """GNN-PPI's get_bfs_sub_graph / get_dfs_sub_graph restated with plain lists, from a given root."""
    def end(k, node):
        return int(pairs[k][1]) if pairs[k][0] == node else int(pairs[k][0])

    selected: list[int] = []
    visited: list[int] = []
    frontier = [root]
    while len(selected) < size:
        if order == "bfs":
            node = frontier.pop(0)
            visited.append(node)
            for k in incident[node]:
                if k not in selected:
                    selected.append(k)
                    if end(k, node) not in visited and end(k, node) not in frontier:
                        frontier.append(end(k, node))
        else:
            node = frontier[-1]
            if node not in visited:
                visited.append(node)
                selected += [k for k in incident[node] if k not in selected]
                continue
            for k in incident[node]:
                if end(k, node) not in visited:
                    frontier.append(end(k, node))
                    break
            else:
                frontier.pop()
    return set(selected)


@pytest.mark.parametrize("order", ["bfs", "dfs"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_test_pairs_are_gnn_ppis_traversal_from_the_same_root(order, seed):
    pairs = _graph(seed=seed)
    n, p = 60, len(pairs)
    split = bs.traversal_edge_split(pairs, n, seed, 0.1, 0.2, order)
    incident = _incident(pairs, n)
    root = bs._draw_root(incident, np.zeros(p, bool), np.random.default_rng(seed))  # the split's first draw
    assert len(incident[root]) <= bs.ROOT_MAX_DEGREE
    assert set(split["test"].tolist()) == _gnn_ppi_traversal(pairs, incident, root, int(0.2 * p), order)


@pytest.mark.parametrize("order", ["bfs", "dfs"])
def test_traversal_split_partitions_the_pairs_seeded(order):
    pairs = _graph()
    p = len(pairs)
    split = bs.traversal_edge_split(pairs, 60, 7, 0.1, 0.2, order)
    joined = np.concatenate([split["train"], split["valid"], split["test"]])
    assert sorted(joined.tolist()) == list(range(p))  # disjoint and complete
    assert len(split["test"]) >= int(0.2 * p) and len(split["valid"]) >= int(0.1 * p)
    again = bs.traversal_edge_split(pairs, 60, 7, 0.1, 0.2, order)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    other = bs.traversal_edge_split(pairs, 60, 8, 0.1, 0.2, order)
    assert not np.array_equal(split["test"], other["test"])


def test_bfs_and_dfs_test_sets_are_connected_and_differ():
    pairs = _graph(n=120, extra=200, seed=5)
    sets = {}
    for order in ("bfs", "dfs"):
        test = bs.traversal_edge_split(pairs, 120, 0, 0.1, 0.2, order)["test"]
        sub = pairs[test]
        reached, todo = {int(sub[0, 0])}, [int(sub[0, 0])]
        while todo:  # flood fill over the test pairs only
            u = todo.pop()
            for a, b in sub.tolist():
                for x, y in ((a, b), (b, a)):
                    if x == u and y not in reached:
                        reached.add(y)
                        todo.append(y)
        assert reached == set(sub.reshape(-1).tolist()), order
        sets[order] = set(test.tolist())
    assert sets["bfs"] != sets["dfs"]


@pytest.mark.parametrize("order", ["bfs", "dfs"])
def test_a_used_up_component_restarts_from_a_new_root(order):
    # nodes 0-3: a path (degrees <= 2, so the root is drawn there); nodes 4-11: a clique (degree 7)
    path = [(0, 1), (1, 2), (2, 3)]
    clique = [(a, b) for a in range(4, 12) for b in range(a + 1, 12)]
    pairs = np.asarray(path + clique, np.int64)
    for seed in range(3):
        test = set(bs.traversal_edge_split(pairs, 12, seed, 0.0, 0.3, order)["test"].tolist())
        assert {0, 1, 2} <= test  # the whole path, where GNN-PPI would fail for lack of nodes ...
        assert len(test) >= int(0.3 * len(pairs))  # ... then clique pairs up to the target


def test_edge_split_by_name():
    pairs = _graph()
    assert all(np.array_equal(a, b) for a, b in zip(bs.edge_split(pairs, 60, 3, 0.1, 0.2, "random").values(),
                                                    bs.split_fractions(len(pairs), 3, 0.1, 0.2).values()))
    with pytest.raises(UserError, match="edge split must be one of"):
        bs.edge_split(pairs, 60, 0, 0.1, 0.2, "species")
    with pytest.raises(UserError, match="must be >= 0 and sum below 1"):
        bs.traversal_edge_split(pairs, 60, 0, 0.5, 0.5, "bfs")
