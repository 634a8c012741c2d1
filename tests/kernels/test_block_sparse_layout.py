"""Block layouts against the dense token mask, the CSR invariants, the allowed builders."""

from __future__ import annotations

import pytest
import torch
from block_sparse_cases import random_allowed, random_pid

from lcplm_kernels.block_sparse_attn import (
    allowed_from_pairs,
    build_layout,
    dense_allowed,
    global_allowed,
    naive_block_mask,
    single_protein_allowed,
    window_allowed,
)
from lcplm_kernels.block_sparse_attn import layout as layout_mod

CASES = [
    # B, L, P, block_m, block_n, density, pad_last, split_protein
    (1, 1, 1, 64, 64, 1.0, 0, False),
    (2, 63, 4, 32, 32, 0.5, 10, False),
    (2, 1000, 12, 64, 64, 0.3, 97, True),
    (3, 517, 9, 16, 64, 0.4, 0, True),
    (2, 300, 30, 64, 16, 0.2, 40, False),
    (1, 640, 5, 128, 128, 1.0, 0, False),
    (2, 250, 6, 32, 32, 0.0, 0, False),
    (1, 256, 256, 16, 16, 0.05, 0, False),
]


@pytest.mark.parametrize("B,L,P,bm,bn,density,pad_last,split", CASES)
def test_layout_matches_dense_mask(B, L, P, bm, bn, density, pad_last, split):
    gen = torch.Generator().manual_seed(L * 7 + P)
    pid = random_pid(B, L, P, gen, pad_last=pad_last, split_protein=split)
    allowed = random_allowed(B, P, density, gen)
    layout = build_layout(pid, allowed, bm, bn)
    want_computed, want_full = naive_block_mask(pid, allowed, bm, bn)
    for key_major in (False, True):
        computed, full = layout.tile_matrix(key_major=key_major)
        assert torch.equal(computed, want_computed)
        assert torch.equal(full, want_full)
    assert layout.num_tiles == int(want_computed.sum())
    assert layout.num_full_tiles == int(want_full.sum())


@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_join_and_incidence_paths_agree(density):
    # build_layout picks one of two equivalent counting paths by cost; both must agree exactly
    gen = torch.Generator().manual_seed(3)
    B, L, P, bm, bn = 2, 700, 15, 32, 64
    pid = random_pid(B, L, P, gen, pad_last=33, split_protein=True)
    allowed = random_allowed(B, P, density, gen)
    pid_ext = torch.where(pid < 0, P, pid)
    allowed_ext = torch.zeros(B, P + 1, P + 1, dtype=torch.bool)
    allowed_ext[:, :P, :P] = allowed
    nq, nk = -(-L // bm), -(-L // bn)
    q_row, q_pid = layout_mod._segments(pid_ext, bm)
    k_row, k_pid = layout_mod._segments(pid_ext, bn)
    q_pp = torch.bincount(q_row // nq * (P + 1) + q_pid, minlength=B * (P + 1)).view(B, P + 1)
    k_pp = torch.bincount(k_row // nk * (P + 1) + k_pid, minlength=B * (P + 1)).view(B, P + 1)
    args = (q_row, q_pid, k_row, k_pid, allowed_ext, nq, nk, q_pp, k_pp)
    by_join = layout_mod._tiles_by_join(*args)
    by_incidence = layout_mod._tiles_by_incidence(*args)
    for orientation_join, orientation_incidence in zip(by_join, by_incidence):
        for a, b in zip(orientation_join, orientation_incidence):
            assert torch.equal(a, b)
    assert by_join[0][0].numel() > 0


def test_csr_invariants():
    gen = torch.Generator().manual_seed(5)
    pid = random_pid(2, 900, 10, gen, pad_last=50)
    layout = build_layout(pid, random_allowed(2, 10, 0.4, gen), 64, 32)
    for prefix, n_rows, n_cols in (("q", layout.num_q_blocks, layout.num_k_blocks), ("k", layout.num_k_blocks, layout.num_q_blocks)):
        ptrs = []
        for ptr_name, idx_name in ((f"{prefix}_ptr", f"{prefix}_idx"), (f"{prefix}_full_ptr", f"{prefix}_full_idx")):
            ptr, idx = getattr(layout, ptr_name), getattr(layout, idx_name)
            assert ptr.dtype == idx.dtype == torch.int32 and ptr.is_contiguous() and idx.is_contiguous()
            assert ptr.shape == (2 * n_rows + 1,) and int(ptr[0]) == 0 and int(ptr[-1]) == idx.numel()
            assert bool((ptr[1:] >= ptr[:-1]).all())
            assert idx.numel() == 0 or (0 <= int(idx.min()) and int(idx.max()) < n_cols)
            ptrs.append(ptr.long())
        counts = sum(p[1:] - p[:-1] for p in ptrs)
        order = getattr(layout, f"{prefix}_order").long()
        assert torch.equal(torch.sort(order).values, torch.arange(2 * n_rows))
        assert bool((counts[order][1:] <= counts[order][:-1]).all())
    assert layout.kernel_pid.dtype == torch.int32 and int(layout.kernel_pid.max()) == 10  # padding -> P
    assert torch.equal(layout.kernel_pid.long(), torch.where(pid < 0, 10, pid))
    assert layout.kernel_allowed.dtype == torch.uint8 and layout.kernel_allowed.shape == (2, 11, 11)
    assert int(layout.kernel_allowed[:, 10].sum() + layout.kernel_allowed[:, :, 10].sum()) == 0
    assert torch.equal(layout.pid, pid) and layout.allowed.shape == (2, 10, 10)


def test_shared_allowed_and_to():
    gen = torch.Generator().manual_seed(6)
    pid = random_pid(3, 200, 5, gen)
    allowed = window_allowed(5, 1)
    shared = build_layout(pid, allowed, 32, 32)
    per_sample = build_layout(pid, allowed.expand(3, -1, -1), 32, 32)
    moved = shared.to("cpu")
    for a, b in ((shared, per_sample), (shared, moved)):
        assert torch.equal(a.tile_matrix()[0], b.tile_matrix()[0])
        assert torch.equal(a.tile_matrix()[1], b.tile_matrix()[1])
    assert moved.block_m == 32 and moved.seqlen == 200 and moved.batch_size == 3 and moved.num_proteins == 5
    assert 0 < shared.density <= 1


def test_long_genome_never_builds_l_by_l():
    # 200k tokens: an L x L bool mask would need 40 GB; the tile counts need ~40 MB
    L, P = 200_000, 900
    pid = torch.repeat_interleave(torch.arange(P), L // P)
    pid = torch.cat([pid, torch.full((L - pid.numel(),), -1)])[None]
    layout = build_layout(pid, window_allowed(P, 2))
    assert layout.seqlen == L and 0 < layout.density < 0.02


@pytest.mark.needs_shared_data
def test_layout_of_real_phage_proteins():
    from conftest import shared_data
    from Bio import SeqIO

    gbk = shared_data("genomes", "pharokka_meta_phages.gbk")
    rec = next(SeqIO.parse(str(gbk), "genbank"))
    lengths = [len(f.qualifiers["translation"][0]) for f in rec.features if f.type == "CDS" and "translation" in f.qualifiers]
    lengths = torch.tensor(lengths[:12])
    pid = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)[None]
    for allowed in (window_allowed(12, 2), global_allowed(12, [0, 7]), single_protein_allowed(12)):
        layout = build_layout(pid, allowed)
        computed, full = layout.tile_matrix()
        want_computed, want_full = naive_block_mask(pid, allowed, 64, 64)
        assert torch.equal(computed, want_computed) and torch.equal(full, want_full)


def test_allowed_builders():
    n = 7
    assert dense_allowed(n).all() and dense_allowed(n).shape == (n, n)
    assert torch.equal(single_protein_allowed(n), torch.eye(n, dtype=torch.bool))
    w = window_allowed(n, 2)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(w, (i - j).abs() <= 2)
    assert torch.equal(window_allowed(n, 0), torch.eye(n, dtype=torch.bool))
    g = global_allowed(n, [2, 5])
    assert torch.equal(g, torch.eye(n, dtype=torch.bool) | (i == 2) | (j == 2) | (i == 5) | (j == 5))
    assert torch.equal(global_allowed(n, []), torch.eye(n, dtype=torch.bool))
    pairs = allowed_from_pairs(n, [(0, 3), (6, 1)])
    want = torch.eye(n, dtype=torch.bool)
    want[0, 3] = want[3, 0] = want[6, 1] = want[1, 6] = True
    assert torch.equal(pairs, want)
    assert torch.equal(allowed_from_pairs(n, torch.tensor([[0, 3], [1, 6]])), want)
    assert torch.equal(allowed_from_pairs(n, []), torch.eye(n, dtype=torch.bool))
    for m in (dense_allowed(n), w, g, pairs):
        assert m.dtype == torch.bool and bool(m.diagonal().all())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: allowed_from_pairs(4, [(0, 4)]), r"pair \[0, 4\] is out of range for 4 proteins"),
        (lambda: allowed_from_pairs(4, torch.zeros(3, 3, dtype=torch.long)), r"shape \(E, 2\)"),
        (lambda: global_allowed(4, [9]), r"global protein indices must lie in \[0, 3\]"),
        (lambda: window_allowed(4, -1), "non-negative"),
        (lambda: dense_allowed(0), "positive integer"),
        (lambda: build_layout(torch.tensor([[0, 1, 3]]), dense_allowed(3)), r"pid values must lie in \[-1, 2\]"),
        (lambda: build_layout(torch.tensor([[0, -2]]), dense_allowed(3)), r"found \[-2, 0\]"),
        (lambda: build_layout(torch.tensor([[0.0]]), dense_allowed(1)), "integer tensor"),
        (lambda: build_layout(torch.tensor([[0]]), torch.ones(1, 1)), "bool tensor"),
        (lambda: build_layout(torch.zeros(2, 5, dtype=torch.long), torch.ones(3, 1, 1, dtype=torch.bool)), "B=2"),
        (lambda: build_layout(torch.zeros(1, 5, dtype=torch.long), dense_allowed(1), block_m=48), "block_m must be a power of two"),
        (lambda: build_layout(torch.zeros(1, 5, dtype=torch.long), dense_allowed(1), block_n=256), "block_n must be a power of two"),
        (lambda: build_layout(torch.zeros(1, 0, dtype=torch.long), dense_allowed(1)), "non-empty"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
