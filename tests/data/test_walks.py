"""Random-walk contexts: graph semantics of [EDGE]/[NO_EDGE], sequences, budget, seeding, speed path = reference."""

from __future__ import annotations

import pytest
import torch

import lcplm.data.walks as walks
from lcplm.data.tokenizer import BON, CLS, EDGE, EOS, EON, NO_EDGE, PAD, encode_residues
from lcplm.data.walks import (
    MIN_FILL_RESIDUES,
    CSRGraph,
    ProteinTable,
    assemble_contexts,
    assemble_contexts_reference,
    plan_contexts,
    sample_non_neighbours,
    walk_contexts,
    walk_step,
)
from lcplm.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_graph(n: int, m: int, seed: int, isolated: int = 0) -> tuple[torch.Tensor, set[tuple[int, int]]]:
    """Undirected simple graph on n nodes (the last ``isolated`` without edges): edge_index (2, 2E)."""
    g = torch.Generator().manual_seed(seed)
    k = n - isolated
    a, b = torch.randint(0, k, (m,), generator=g), torch.randint(0, k, (m,), generator=g)
    pairs = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist()) if x != y}
    adj = pairs | {(y, x) for x, y in pairs}
    ei = torch.tensor(sorted(adj), dtype=torch.long).t().reshape(2, -1)
    return ei, adj


def random_sequences(n: int, seed: int, lo: int = 1, hi: int = 300) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g)
    return ["".join(AA[i] for i in torch.randint(0, 20, (int(L),), generator=g).tolist()) for L in lens]


def parse_context(tokens: list[int]) -> list[tuple[int | None, list[int]]]:
    """[(separator before the protein or None, residue ids)] of one context; asserts its grammar."""
    assert tokens[0] == CLS and tokens[-1] == EOS
    body, out, i = tokens[1:-1], [], 0
    while i < len(body):
        sep = None
        if out:
            sep = body[i]
            assert sep in (EDGE, NO_EDGE), f"expected a separator at {i}, got {sep}"
            i += 1
        assert body[i] == BON
        j = body.index(EON, i + 1)
        res = body[i + 1 : j]
        assert all(t not in (CLS, EOS, PAD, BON, EDGE, NO_EDGE) for t in res)
        out.append((sep, res))
        i = j + 1
    return out


def _setup(n=97, m=400, seed=0, isolated=3, lo=1, hi=300):
    ei, adj = random_graph(n, m, seed, isolated)
    seqs = random_sequences(n, seed + 1, lo, hi)
    return CSRGraph.from_edge_index(ei, n), ProteinTable.from_sequences(seqs), adj, seqs


@pytest.mark.parametrize("context_len, max_protein_len, W", [(37, 13, 1), (1000, 257, 63), (4096, 1000, 7)])
@pytest.mark.parametrize("fill_budget", [True, False])
def test_contexts_follow_the_graph_and_the_sequences(context_len, max_protein_len, W, fill_budget):
    graph, proteins, adj, seqs = _setup()
    starts = torch.randint(0, graph.num_nodes, (W,), generator=torch.Generator().manual_seed(5))
    ids, lengths, plan = walk_contexts(graph, proteins, starts, context_len, max_protein_len, 0.3, torch.Generator().manual_seed(1), fill_budget)
    assert ids.shape[0] == W and int(lengths.max()) == ids.shape[1]
    assert (lengths <= context_len).all()  # the budget holds
    n_edge = n_jump = 0
    for w in range(W):
        toks = ids[w].tolist()
        assert all(t == PAD for t in toks[int(lengths[w]):])
        blocks = parse_context(toks[: int(lengths[w])])
        nodes = plan.nodes[w][: len(blocks)].tolist()
        assert nodes[0] == int(starts[w]) and (plan.nodes[w][len(blocks):] == -1).all()
        for j, (sep, res) in enumerate(blocks):
            seq = seqs[nodes[j]]
            assert 1 <= len(res) <= max_protein_len
            assert bytes(res) in bytes(encode_residues(seq).tolist())  # the protein, or a contiguous crop
            if j < len(blocks) - 1:  # only the last protein may be cut to fill the budget
                assert len(res) == min(len(seq), max_protein_len)
            if j > 0:
                edge = (nodes[j - 1], nodes[j]) in adj
                assert edge == (sep == EDGE), f"context {w} protein {j}: separator {sep} but neighbours={edge}"
                assert nodes[j] != nodes[j - 1]
                n_edge += sep == EDGE
                n_jump += sep == NO_EDGE
        if fill_budget:
            # the walk stopped because the next protein did not fit and fewer than
            # MIN_FILL_RESIDUES residues were left for a crop of it
            assert int(lengths[w]) > context_len - 3 - MIN_FILL_RESIDUES
    if context_len > 100:
        assert n_edge > 0 and n_jump > 0


def test_fast_assembly_equals_the_reference():
    graph, proteins, _, _ = _setup(n=61, m=150, lo=1, hi=1000)
    for seed, (ctx, maxp) in enumerate([(9, 5), (63, 17), (1000, 300), (5000, 1000)]):
        plan = plan_contexts(graph, proteins, torch.arange(0, 61, 3), ctx, maxp, 0.25, torch.Generator().manual_seed(seed))
        fast, fl = assemble_contexts(plan, proteins)
        ref, rl = assemble_contexts_reference(plan, proteins)
        assert torch.equal(fl, rl) and torch.equal(fl, plan.lengths)
        assert torch.equal(fast, ref)


def test_same_seed_same_contexts_other_seed_other_contexts():
    graph, proteins, _, _ = _setup()
    starts = torch.arange(40)

    def run(seed):
        return walk_contexts(graph, proteins, starts, 800, 200, 0.2, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_isolated_nodes_only_jump_and_full_degree_nodes_only_step():
    # node 0 is adjacent to everyone, node 5 to no one
    n = 6
    pairs = [(0, i) for i in range(1, 5)] + [(1, 2)]
    adj = {(a, b) for a, b in pairs} | {(b, a) for a, b in pairs}
    ei = torch.tensor(sorted(adj)).t()
    graph = CSRGraph.from_edge_index(ei, n)
    u = torch.full((2000,), 5)
    nxt, is_edge, moved = walk_step(graph, u, 0.0, torch.Generator().manual_seed(0))
    assert moved.all() and not is_edge.any() and (nxt != 5).all()
    # node 0: not adjacent to 5 only, so with p_neg = 1 it always jumps to 5
    nxt, is_edge, _ = walk_step(graph, torch.zeros(500, dtype=torch.long), 1.0, torch.Generator().manual_seed(0))
    assert (nxt == 5).all() and not is_edge.any()
    full = CSRGraph.from_edge_index(torch.tensor([[0, 1, 0, 2, 1, 2], [1, 0, 2, 0, 2, 1]]), 3)
    nxt, is_edge, moved = walk_step(full, torch.zeros(500, dtype=torch.long), 1.0, torch.Generator().manual_seed(0))
    assert is_edge.all() and moved.all() and set(nxt.tolist()) == {1, 2}


def test_single_node_graph_gives_one_protein_contexts():
    graph = CSRGraph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), 1)
    proteins = ProteinTable.from_sequences(["MKTAYIAKQR"])
    ids, lengths, _ = walk_contexts(graph, proteins, torch.zeros(3, dtype=torch.long), 100, 50, 0.5, torch.Generator().manual_seed(0))
    assert ids.tolist() == [[CLS, BON] + encode_residues("MKTAYIAKQR").tolist() + [EON, EOS]] * 3


def _chi2_uniform(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def test_steps_are_uniform_over_neighbours_and_jumps_happen_at_p_neg():
    n = 50
    pairs = [(0, i) for i in range(1, 11)]  # node 0 has 10 neighbours, 39 non-neighbours
    adj = sorted({(a, b) for a, b in pairs} | {(b, a) for a, b in pairs})
    graph = CSRGraph.from_edge_index(torch.tensor(adj).t(), n)
    draws = 40000
    nxt, is_edge, _ = walk_step(graph, torch.zeros(draws, dtype=torch.long), 0.3, torch.Generator().manual_seed(0))
    frac = is_edge.logical_not().float().mean().item()
    assert abs(frac - 0.3) < 4 * (0.3 * 0.7 / draws) ** 0.5  # 4 standard errors
    nb = torch.bincount(nxt[is_edge], minlength=n)[1:11].double()
    jumps = torch.bincount(nxt[~is_edge], minlength=n).double()
    assert jumps[:11].sum() == 0  # never itself, never a neighbour
    # chi-square with 9 and 38 degrees of freedom: p < 1e-4 above ~33 and ~76
    assert _chi2_uniform(nb) < 33 and _chi2_uniform(jumps[11:]) < 76


@pytest.mark.parametrize("rounds", [0, walks._REJECTION_ROUNDS])
def test_non_neighbour_sampling_exact_on_dense_graphs(monkeypatch, rounds):
    # node 0 is adjacent to all but 4 of 300 nodes: rejection almost always fails, and with
    # 0 rounds every draw takes the exact fixed-point path
    monkeypatch.setattr(walks, "_REJECTION_ROUNDS", rounds)
    n = 300
    allowed = {17, 150, 151, 299}
    nbrs = [v for v in range(1, n) if v not in allowed]
    pairs = [(0, v) for v in nbrs] + [(v, 0) for v in nbrs]
    graph = CSRGraph.from_edge_index(torch.tensor(sorted(pairs)).t(), n)
    out = sample_non_neighbours(graph, torch.zeros(8000, dtype=torch.long), torch.Generator().manual_seed(1))
    assert set(out.tolist()) == allowed
    counts = torch.bincount(out, minlength=n)[sorted(allowed)].double()
    assert _chi2_uniform(counts) < 21  # 3 degrees of freedom, p < 1e-4
    # mixed nodes: node 5 has a single neighbour (0); its non-neighbours are everyone but 0 and 5
    u = torch.tensor([0, 5] * 500)
    out = sample_non_neighbours(graph, u, torch.Generator().manual_seed(2))
    assert all(v in allowed for v in out[u == 0].tolist())
    assert not ((out[u == 5] == 0) | (out[u == 5] == 5)).any()


def test_are_neighbours_and_degree_match_the_edge_set():
    ei, adj = random_graph(31, 80, 3, isolated=2)
    graph = CSRGraph.from_edge_index(ei, 31)
    u, v = torch.meshgrid(torch.arange(31), torch.arange(31), indexing="ij")
    got = graph.are_neighbours(u.flatten(), v.flatten()).view(31, 31)
    want = torch.zeros(31, 31, dtype=torch.bool)
    for a, b in adj:
        want[a, b] = True
    assert torch.equal(got, want)
    assert torch.equal(graph.degree(torch.arange(31)), want.sum(1))


def test_protein_table_tokenises_once_and_names_bad_records():
    t = ProteinTable.from_sequences(["MKV", "acd*", "X"], ids=["a", "b", "c"])
    assert t.residues.dtype == torch.int8 and t.lengths.tolist() == [3, 3, 1]
    assert t.residues[3:6].long().tolist() == encode_residues("ACD").tolist()
    with pytest.raises(UserError, match="'b'"):
        ProteinTable.from_sequences(["MKV", "*"], ids=["a", "b"])


def test_segment_arange_matches_concatenated_aranges():
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, 10_000, (57,), generator=g)
    lens = torch.randint(1, 40, (57,), generator=g)
    want = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), lens.tolist())])
    assert torch.equal(walks._segment_arange(starts, lens), want)


def test_budget_and_probability_errors():
    graph, proteins, _, _ = _setup(n=10, m=20, isolated=0)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(UserError, match=r"context_len \(100\) must hold at least one whole cropped protein"):
        plan_contexts(graph, proteins, torch.arange(3), 100, 97, 0.1, g)
    with pytest.raises(UserError, match="max_protein_len must be >= 1"):
        plan_contexts(graph, proteins, torch.arange(3), 100, 0, 0.1, g)
    with pytest.raises(UserError, match=r"p_neg must be in \[0, 1\]"):
        plan_contexts(graph, proteins, torch.arange(3), 100, 50, 1.5, g)
