"""The one batch sampler of every DataModule (FASTA, PPI walks, genomes): a batch depends only on
(seed, epoch, position), whatever num_workers, rank or resume point; ranks are disjoint and cover."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lcplm.data.batching import FixedSizeBatchSampler, ShardedBatchSampler, TokenBudgetBatchSampler
from lcplm.data.datamodules import build_datamodule

AA = "ACDEFGHIKLMNPQRSTVWY"
SOURCES = ["fasta", "ppi_walks", "genome"]


def _write_inputs(kind: str, tmp: Path) -> dict:
    rnd = random.Random(0)

    def seq(lo: int, hi: int) -> str:
        return "".join(rnd.choice(AA) for _ in range(rnd.randint(lo, hi)))

    if kind == "fasta":
        path = tmp / "p.fasta"
        path.write_text("".join(f">r{i}\n{seq(10, 90)}\n" for i in range(90)))
        return dict(path=str(path), cache_dir=str(tmp / "cache"), max_length=64, max_tokens=256, val_fraction=0.2)
    if kind == "ppi_walks":
        names = [f"P{i:02d}" for i in range(40)]
        (tmp / "seqs.tsv").write_text("".join(f"{n}\t{seq(5, 60)}\n" for n in names))
        edges = {tuple(sorted(rnd.sample(names, 2))) for _ in range(90)}
        (tmp / "pairs.tsv").write_text("".join(f"{a}\t{b}\t1\n" for a, b in sorted(edges)))
        return dict(edges=str(tmp / "pairs.tsv"), sequences=str(tmp / "seqs.tsv"), context_len=200,
                    max_protein_len=60, batch_size=3, walks_per_node=2, val_fraction=0.2)
    lines, pos = [], 1
    for g in range(5):
        for i in range(1, 9):
            n = rnd.randint(20, 90)
            lines += [f">c{g}_{i} # {pos} # {pos + 3 * n} # 1 # ID=x", seq(n, n)]
            pos += 3 * n + 10
    (tmp / "genomes.faa").write_text("\n".join(lines) + "\n")
    return dict(fasta=[str(tmp / "genomes.faa")], max_tokens=192, batch_size=2, val_genomes=["c4"])


def _datamodule(kind: str, tmp: Path, **kw):
    from lcplm.config import PretrainConfig, validate

    cfg = validate(PretrainConfig, {"data": {"name": kind, **_write_inputs(kind, tmp), **kw}}).data
    return build_datamodule(cfg, seed=7)


def _trainer(epoch: int = 1, world: int = 1, rank: int = 0, done: int | None = None) -> SimpleNamespace:
    """What the DataModules read of a Lightning Trainer (``done``: a run resumed after that many batches)."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=done or 0))
    return SimpleNamespace(
        world_size=world, global_rank=rank, current_epoch=epoch,
        fit_loop=SimpleNamespace(restarting=done is not None, epoch_loop=SimpleNamespace(batch_progress=progress)),
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
    )


def _train(dm, trainer) -> tuple[list, list[dict]]:
    """(keys, batches) of the train loader as the trainer would see them."""
    dm.trainer = trainer
    loader = dm.train_dataloader()
    skip = loader.sampler.pending_skip
    batches = list(loader)
    loader.sampler.set_epoch(trainer.current_epoch)
    loader.sampler.skip_batches(skip)
    keys = [(k.epoch, k.position, tuple(k.indices.tolist())) for k in loader.sampler]
    return keys, batches


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", SOURCES)
def test_every_datamodule_batches_through_the_one_sampler(kind: str, tmp_path: Path):
    dm = _datamodule(kind, tmp_path)
    dm.trainer = _trainer()
    assert isinstance(dm.train_dataloader().sampler, ShardedBatchSampler)
    assert isinstance(dm.val_dataloader().sampler, ShardedBatchSampler)


@pytest.mark.parametrize("kind", SOURCES)
def test_same_batches_across_num_workers_and_resume(kind: str, tmp_path: Path):
    dm = _datamodule(kind, tmp_path)
    keys, full = _train(dm, _trainer(epoch=1))
    assert len(full) == len(keys) >= 6
    _, with_workers = _train(_datamodule(kind, tmp_path, num_workers=2), _trainer(epoch=1))
    assert len(with_workers) == len(full) and all(_same(a, b) for a, b in zip(full, with_workers))
    for k in (1, 4):  # a run resumed after k batches of epoch 1 sees exactly the rest
        rkeys, resumed = _train(_datamodule(kind, tmp_path), _trainer(epoch=1, done=k))
        assert rkeys == keys[k:] and len(resumed) == len(full) - k
        assert all(_same(a, b) for a, b in zip(full[k:], resumed))
    _, other_epoch = _train(_datamodule(kind, tmp_path), _trainer(epoch=2))
    assert not all(_same(a, b) for a, b in zip(full, other_epoch))


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_cover_the_epoch_and_a_batch_depends_only_on_its_position(kind: str, world: int, tmp_path: Path):
    single_keys, single = _train(_datamodule(kind, tmp_path), _trainer(epoch=1))
    n_batches = len(single)
    by_position = {}
    per_rank = []
    for rank in range(world):
        keys, batches = _train(_datamodule(kind, tmp_path), _trainer(epoch=1, world=world, rank=rank))
        per_rank.append(len(keys))
        for key, batch in zip(keys, batches):
            assert key[1] % world == rank  # rank r takes positions r, r + R, ...
            by_position[key[1]] = (key, batch)
    assert len(set(per_rank)) == 1  # lock-step: the same count on every rank
    assert sorted(by_position) == list(range(world * per_rank[0]))  # disjoint, complete
    assert per_rank[0] == -(-n_batches // world)
    for pos in range(n_batches):  # the same global order and batch content as one process
        key, batch = by_position[pos]
        assert key == single_keys[pos] and _same(batch, single[pos])
    covered = {i for key, _ in by_position.values() for i in key[2]}
    assert covered == {i for key in single_keys for i in key[2]}


@pytest.mark.parametrize("kind", SOURCES)
def test_validation_batches_are_the_same_every_epoch(kind: str, tmp_path: Path):
    dm = _datamodule(kind, tmp_path)
    dm.trainer = _trainer()
    loader = dm.val_dataloader()
    first = list(loader)
    loader.sampler.set_epoch(5)
    again = list(loader)
    assert first and len(first) == len(again) and all(_same(a, b) for a, b in zip(first, again))


def test_fixed_size_sampler_covers_each_epoch_and_pads_ranks_cyclically():
    for epoch in (0, 1):
        ranks = []
        for r in range(3):
            s = FixedSizeBatchSampler(10, 3, seed=2, num_replicas=3, rank=r)
            s.set_epoch(epoch)
            ranks.append(list(s))
        assert [len(r) for r in ranks] == [2, 2, 2]  # 4 batches over 3 ranks: 2 each, 2 repeated
        items = np.concatenate([k.indices for r in ranks for k in r])
        assert set(items.tolist()) == set(range(10))
        assert sorted(k.position for r in ranks for k in r) == list(range(6))
    assert list(FixedSizeBatchSampler(0, 3)) == [] and len(FixedSizeBatchSampler(0, 3, num_replicas=2, rank=1)) == 0


def test_token_budget_and_fixed_size_share_order_sharding_and_seeds():
    """Equal lengths make a token-budget plan the fixed-size plan of the same permutation: then
    both samplers hand out the same keys, because everything but the plan is the base's."""
    lengths = np.full(17, 10)
    a = TokenBudgetBatchSampler(lengths, 40, bucket_size=17, seed=3, num_replicas=2, rank=1)
    b = FixedSizeBatchSampler(17, 4, seed=3, num_replicas=2, rank=1)
    for s in (a, b):
        s.set_epoch(4)
    ka, kb = ([(k.epoch, k.position, k.indices.tolist()) for k in s] for s in (a, b))
    assert ka == kb and len(ka) == 3  # 5 batches (4, 4, 4, 4, 1 items) over 2 ranks
