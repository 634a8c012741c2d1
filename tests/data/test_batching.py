"""Token-budget batch sampler: budget, coverage, padding, sharding, resume; and the stats helpers."""

from __future__ import annotations

import numpy as np
import pytest

from lcplm.data.batching import (
    ResumableDataLoader,
    TokenBudgetBatchSampler,
    compare_batching,
    naive_padded_plan,
    plan_batches,
    plan_stats,
    token_lengths,
)


def protein_like_lengths(n: int, seed: int = 0, max_length: int = 1024) -> np.ndarray:
    """Log-normal token lengths around ~330 (like UniProt), cropped at max_length."""
    rng = np.random.default_rng(seed)
    return token_lengths(np.maximum(1, rng.lognormal(5.6, 0.6, n).astype(np.int64)), max_length)


def keys(sampler) -> list:
    return [(k.epoch, k.position, tuple(k.indices.tolist())) for k in sampler]


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("n", [1, 7, 2000])
def test_budget_and_exact_coverage(pack: bool, n: int):
    lengths = protein_like_lengths(n)
    s = TokenBudgetBatchSampler(lengths, 4096, pack=pack, bucket_size=256, seed=3)
    batches = [k.indices for k in s]
    assert len(batches) == len(s)
    for b in batches:
        cost = lengths[b].sum() if pack else len(b) * lengths[b].max()
        assert 0 < cost <= 4096
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(n))  # every record exactly once in epoch 0


def test_later_epochs_keep_length_and_nearly_cover():
    lengths = protein_like_lengths(5000)
    s = TokenBudgetBatchSampler(lengths, 8192, bucket_size=512, seed=0)
    first = keys(s)
    for epoch in (1, 2, 3):
        s.set_epoch(epoch)
        ks = list(s)
        assert len(ks) == len(s)
        seen = np.concatenate([k.indices for k in ks])
        # a replanned epoch is cut or cyclically padded to epoch 0's batch count
        assert len(np.unique(seen)) >= 0.98 * 5000
        assert keys(s) != first


def test_padding_fraction_is_small_with_buckets():
    lengths = protein_like_lengths(20_000)
    rng = np.random.default_rng(0)
    st = plan_stats(plan_batches(lengths, 16384, False, 4096, rng), lengths, 16384, pack=False)
    naive = plan_stats(naive_padded_plan(lengths, 16384, np.random.default_rng(0)), lengths, 16384, pack=False)
    assert st.padding_fraction < 0.03 < 0.3 < naive.padding_fraction
    packed = plan_stats(plan_batches(lengths, 16384, True, 4096, rng), lengths, 16384, pack=True)
    assert packed.padding_fraction == 0.0 and packed.budget_fill > 0.95


def test_compare_batching_counts_tokens_consistently():
    residues = np.array([10, 500, 2000, 33, 77] * 40)
    out = compare_batching(residues, max_tokens=3000, max_length=1024)
    tokens = int(token_lengths(residues, 1024).sum())
    assert {k: v.tokens for k, v in out.items()} == {"naive": tokens, "padded": tokens, "packed": tokens}
    assert out["packed"].tensor_tokens == tokens
    for st in out.values():
        assert st.tensor_tokens <= st.batches * 3000


def test_seeded_by_seed_and_epoch():
    lengths = protein_like_lengths(1000)
    a = TokenBudgetBatchSampler(lengths, 4096, seed=1)
    b = TokenBudgetBatchSampler(lengths, 4096, seed=1)
    c = TokenBudgetBatchSampler(lengths, 4096, seed=2)
    assert keys(a) == keys(b) != keys(c)
    a.set_epoch(1)
    assert keys(a) != keys(b)


def test_fixed_order_for_validation():
    lengths = protein_like_lengths(500)
    s = TokenBudgetBatchSampler(lengths, 4096, shuffle=False, seed=4)
    first = keys(s)
    s.set_epoch(5)  # Lightning sets the epoch on validation samplers too: nothing may change
    assert keys(s) == first and all(k[0] == 0 for k in first)


@pytest.mark.parametrize("replicas", [2, 3, 8])
def test_sharding_partitions_the_global_order(replicas: int):
    lengths = protein_like_lengths(997)
    one = TokenBudgetBatchSampler(lengths, 2048, seed=9)
    ranks = [TokenBudgetBatchSampler(lengths, 2048, seed=9, num_replicas=replicas, rank=r) for r in range(replicas)]
    per_rank = [list(s) for s in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])  # lock-step
    positions = sorted(k.position for p in per_rank for k in p)
    assert positions == list(range(replicas * len(ranks[0])))  # disjoint, complete
    # rank r takes batches r::R of the same global order that one process would see
    glob = {k.position: tuple(k.indices.tolist()) for p in per_rank for k in p}
    single = keys(one)
    for pos, (_, p1, idx) in enumerate(single):
        assert glob[pos] == idx and p1 == pos
    # padded by repeating the first batches: every record is still seen, a few twice
    seen = np.concatenate([k.indices for p in per_rank for k in p])
    assert set(seen.tolist()) == set(range(997))


@pytest.mark.parametrize("replicas", [1, 3])
def test_skip_batches_resumes_the_same_order(replicas: int):
    lengths = protein_like_lengths(800)
    for rank in range(replicas):
        full = TokenBudgetBatchSampler(lengths, 2048, seed=5, num_replicas=replicas, rank=rank)
        full.set_epoch(2)
        expected = keys(full)
        resumed = TokenBudgetBatchSampler(lengths, 2048, seed=5, num_replicas=replicas, rank=rank)
        resumed.set_epoch(2)
        resumed.skip_batches(7)
        assert keys(resumed) == expected[7:]
        assert keys(resumed) == expected  # the skip is consumed by one iteration


def test_set_epoch_drops_a_skip_for_another_epoch():
    s = TokenBudgetBatchSampler(protein_like_lengths(300), 2048)
    s.set_epoch(3)
    s.skip_batches(len(s))  # resumed exactly at the end of epoch 3 ...
    s.set_epoch(3)
    assert list(s) == []
    s.set_epoch(3)
    s.skip_batches(len(s))
    s.set_epoch(4)  # ... and Lightning moves on to epoch 4: nothing of it is skipped
    assert len(list(s)) == len(s)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBudgetBatchSampler(np.array([10, 5000]), 4096)
    with pytest.raises(ValueError, match="at least one"):
        TokenBudgetBatchSampler(np.array([], dtype=np.int64), 4096)
    with pytest.raises(ValueError, match="rank"):
        TokenBudgetBatchSampler(np.array([10]), 4096, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="skip"):
        TokenBudgetBatchSampler(np.array([10]), 4096).skip_batches(5)


class _KeyEcho:
    """dataset[key] -> the key itself, to watch what the loader hands out."""

    def __getitem__(self, key):
        return (key.epoch, key.position)


def test_resumable_loader_state_round_trip():
    lengths = protein_like_lengths(600)

    def make() -> ResumableDataLoader:
        return ResumableDataLoader(_KeyEcho(), TokenBudgetBatchSampler(lengths, 2048, seed=1))

    full = make()
    full.sampler.set_epoch(1)
    expected = list(full)
    run = make()
    run.sampler.set_epoch(1)
    it = iter(run)
    got = [next(it) for _ in range(5)]
    state = run.state_dict()
    assert state == {"epoch": 1, "batches_done": 5, "num_replicas": 1}
    resumed = make()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # what Lightning does next: same epoch, the skip stays
    assert got + list(resumed) == expected
