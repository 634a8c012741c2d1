"""Batching: the one sharded, seeded, resumable batch sampler every DataModule uses, and
token-budget batch plans with length bucketing.

**The sampler** (:class:`ShardedBatchSampler`). A subclass says only how one epoch's items are
cut into batches (:meth:`~ShardedBatchSampler.plan`): token-budget batches of FASTA records
(:class:`TokenBudgetBatchSampler`), fixed-size batches of genome windows or walk starts
(:class:`FixedSizeBatchSampler`). Everything else is the base's, the same for every data source:

- *Seeds.* Every random choice of the data pipeline comes from one derivation,
  :func:`seed_sequence` ``(run.seed, stream, epoch, position)``: an epoch's plan from stream
  :data:`PLAN_STREAM`, its batch order from :data:`ORDER_STREAM` (position 0), and a batch's own
  randomness (crops, masks, walks; :func:`batch_generator`) from the data source's stream and the
  batch's epoch and position. Streams in use: 0/1 FASTA train/validation (``collate``), 10/11/12
  walks train/validation/node split (``ppi_walks``), 20/21 genome train/validation
  (``genome``), 90/91 the sampler. A fixed-order sampler (``shuffle=False``, validation) draws
  with epoch word :data:`FIXED_EPOCH` and hands out keys of epoch 0: the same batches and masks at
  every evaluation.
- *One DDP rule.* Every epoch has ``N = ceil(batches of epoch 0 / R)`` batches per rank for ``R``
  ranks (so Lightning's epoch length and DDP's lock-step hold). The epoch's batches are shuffled
  into a global order, which is cut or cyclically repeated to ``N * R`` (epoch 0 covers every item
  exactly once and repeats its first batches when ``R`` does not divide the count; a later epoch
  whose plan has a few more or fewer batches drops or repeats a few randomly chosen ones). Rank
  ``r`` takes global positions ``r, r + R, r + 2R, ...``: ranks are disjoint and together cover
  the order.
- *Keys.* A batch is a :class:`BatchKey` ``(epoch, position, item indices)``; the dataset builds
  the batch from the key alone, seeding its randomness from ``(seed, stream, epoch, position)``,
  so a batch is the same whatever ``num_workers``, whichever rank draws it, and wherever a
  resumed run restarted.
- *Resume.* ``set_epoch(e)`` then ``skip_batches(k)``: the next iteration yields batches
  ``k..N-1`` of epoch ``e`` (Lightning's restored counters give ``k``:
  :func:`lcplm.data.datamodules.resumable_train_loader`); :class:`ResumableDataLoader` also
  saves and restores the position through Lightning's loader state.

**Token-budget plans** (:func:`plan_batches`), from record lengths alone (no sequence is read):
padded batches: the records are shuffled, cut into buckets of ``bucket_size``, each bucket sorted
longest first and cut greedily into batches with ``B * max_len <= max_tokens``; packed batches:
the shuffled records are cut greedily so that ``sum(len) <= max_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

FIXED_EPOCH = 2**32 - 1  # epoch word of fixed-order samplers (validation): their plan never changes
PLAN_STREAM, ORDER_STREAM = 90, 91  # the sampler's streams: an epoch's batches, their order


def seed_sequence(seed: int, stream: int, epoch: int, position: int) -> np.random.SeedSequence:
    """The one seed derivation of the data pipeline (all words >= 0; see the module docstring)."""
    return np.random.SeedSequence([seed, stream, epoch, position])


def batch_generator(seed: int, stream: int, epoch: int, position: int) -> torch.Generator:
    """A CPU torch generator for one batch's randomness, from :func:`seed_sequence`."""
    state = seed_sequence(seed, stream, epoch, position).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


class BatchKey(NamedTuple):
    """What a dataset needs to build one batch deterministically."""

    epoch: int  # the epoch it belongs to (0 for fixed-order samplers)
    position: int  # its place in the global (all ranks) batch order of that epoch
    indices: np.ndarray  # (B,) int64 dataset indices of its records, in batch order


def token_lengths(residue_lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Tokens per record after cropping to ``max_length - 2`` residues and adding <cls>/<eos>."""
    return np.minimum(np.asarray(residue_lengths, dtype=np.int64), max_length - 2) + 2


class BatchPlan(NamedTuple):
    """Batches of one epoch in formation order: batch b is ``order[starts[b]:starts[b + 1]]``."""

    order: np.ndarray  # (n,) int64 positions into the lengths array
    starts: np.ndarray  # (n_batches + 1,) int64

    def __len__(self) -> int:
        return len(self.starts) - 1

    def batch(self, b: int) -> np.ndarray:
        return self.order[self.starts[b] : self.starts[b + 1]]


def plan_batches(
    lengths: np.ndarray, max_tokens: int, pack: bool, bucket_size: int, rng: np.random.Generator
) -> BatchPlan:
    """One epoch of token-budget batches; ``lengths`` (n,) are token counts, all <= max_tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = rng.permutation(len(lengths)).astype(np.int64)
    starts = [0]
    if pack:
        cum = np.concatenate(([0], np.cumsum(lengths[order])))
        i, n = 0, len(order)
        while i < n:
            # the furthest j with sum(lengths[order[i:j]]) <= max_tokens; j > i since every length fits
            i = int(np.searchsorted(cum, cum[i] + max_tokens, side="right")) - 1
            starts.append(i)
    else:
        for b0 in range(0, len(order), bucket_size):
            bucket = order[b0 : b0 + bucket_size]
            bucket[:] = bucket[np.argsort(-lengths[bucket], kind="stable")]
            bl = lengths[bucket]
            i = 0
            while i < len(bucket):
                i = min(i + max_tokens // int(bl[i]), len(bucket))
                starts.append(b0 + i)
    return BatchPlan(order, np.asarray(starts, dtype=np.int64))


def naive_padded_plan(lengths: np.ndarray, max_tokens: int, rng: np.random.Generator) -> BatchPlan:
    """Baseline without bucketing: shuffled order, a batch grows while ``B * max_len`` fits."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = rng.permutation(len(lengths)).astype(np.int64)
    starts, longest, count = [0], 0, 0
    for pos, length in enumerate(lengths[order].tolist()):
        if count and (count + 1) * max(longest, length) > max_tokens:
            starts.append(pos)
            longest, count = 0, 0
        longest, count = max(longest, length), count + 1
    starts.append(len(order))
    return BatchPlan(order, np.asarray(starts, dtype=np.int64))


@dataclass
class PlanStats:
    batches: int
    tokens: int  # real tokens (specials included)
    tensor_tokens: int  # tokens the model processes: B * max_len per padded batch, T per packed one
    padding_fraction: float  # (tensor_tokens - tokens) / tensor_tokens
    budget_fill: float  # tensor_tokens / (batches * max_tokens): how full the budget is
    mean_batch_size: float


def plan_stats(plan: BatchPlan, lengths: np.ndarray, max_tokens: int, pack: bool) -> PlanStats:
    lengths = np.asarray(lengths, dtype=np.int64)
    per = lengths[plan.order]
    sizes = np.diff(plan.starts)
    tokens = int(per.sum())
    if pack:
        tensor = tokens
    else:
        maxima = np.maximum.reduceat(per, plan.starts[:-1]) if len(plan) else np.zeros(0, np.int64)
        tensor = int((maxima * sizes).sum())
    nb = len(plan)
    return PlanStats(
        batches=nb,
        tokens=tokens,
        tensor_tokens=tensor,
        padding_fraction=(tensor - tokens) / tensor if tensor else 0.0,
        budget_fill=tensor / (nb * max_tokens) if nb else 0.0,
        mean_batch_size=float(sizes.mean()) if nb else 0.0,
    )


class ShardedBatchSampler(Sampler[BatchKey]):
    """Yields this rank's :class:`BatchKey` s of the current epoch (see the module docstring).

    n: number of items; indices: (n,) the dataset index of each item (default ``arange(n)``).
    ``shuffle=True``: a new plan and order each epoch, seeded by ``(seed, epoch)``;
    ``shuffle=False``: one fixed plan and order for every epoch, keys carry epoch 0.
    Subclasses implement :meth:`plan`. Zero items give zero batches (an empty validation split).

    Resume: ``set_epoch(e)`` then ``skip_batches(k)`` makes the next iteration yield batches
    ``k..N-1`` of epoch ``e``, exactly those an uninterrupted run had not yet seen. A pending
    skip is consumed by the next iteration, and dropped by ``set_epoch`` to a different epoch.
    """

    def __init__(
        self,
        n: int,
        *,
        indices: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        if len(self.indices) != n:
            raise ValueError(f"{len(self.indices)} indices for {n} items")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.pending_skip = 0
        self._cached: tuple[int, BatchPlan, np.ndarray] | None = None
        self.num_batches = math.ceil(len(self._plan(0)) / num_replicas) if n else 0

    def plan(self, rng: np.random.Generator) -> BatchPlan:
        """One epoch's batches over items ``0..n-1`` (positions into ``indices``), drawn from ``rng``."""
        raise NotImplementedError

    def _epoch_word(self, epoch: int) -> int:
        return epoch if self.shuffle else FIXED_EPOCH

    def _plan(self, epoch: int) -> BatchPlan:
        return self.plan(np.random.default_rng(seed_sequence(self.seed, PLAN_STREAM, self._epoch_word(epoch), 0)))

    def global_order(self, epoch: int) -> tuple[BatchPlan, np.ndarray]:
        """The epoch's plan and its ``N * R`` batch ids in global order (cached for one epoch)."""
        epoch = epoch if self.shuffle else 0
        if self._cached is None or self._cached[0] != epoch:
            plan = self._plan(epoch)
            rng = np.random.default_rng(seed_sequence(self.seed, ORDER_STREAM, self._epoch_word(epoch), 0))
            perm = rng.permutation(len(plan))
            # np.resize repeats cyclically: cuts or pads the list to the fixed epoch length
            ids = np.resize(perm, self.num_batches * self.num_replicas).astype(np.int64) if len(plan) else perm
            self._cached = (epoch, plan, ids)
        return self._cached[1], self._cached[2]

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.pending_skip = 0
        self.epoch = int(epoch)

    def skip_batches(self, n: int) -> None:
        """Let the next iteration start at this rank's batch ``n`` of the current epoch."""
        if not 0 <= n <= self.num_batches:
            raise ValueError(f"cannot skip {n} of {self.num_batches} batches")
        self.pending_skip = int(n)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[BatchKey]:
        epoch, skip = self.epoch, self.pending_skip
        self.pending_skip = 0
        if not self.num_batches:
            return
        plan, ids = self.global_order(epoch)
        key_epoch = epoch if self.shuffle else 0
        for local in range(skip, self.num_batches):
            position = self.rank + local * self.num_replicas
            yield BatchKey(key_epoch, position, self.indices[plan.batch(int(ids[position]))])


class TokenBudgetBatchSampler(ShardedBatchSampler):
    """Token-budget batches (:func:`plan_batches`) of items with ``lengths`` (n,) token counts
    (see :func:`token_lengths`); sharding, seeds and resume as :class:`ShardedBatchSampler`."""

    def __init__(
        self,
        lengths: np.ndarray,
        max_tokens: int,
        *,
        indices: np.ndarray | None = None,
        pack: bool = False,
        bucket_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) == 0:
            raise ValueError("TokenBudgetBatchSampler needs at least one item")
        if int(self.lengths.max()) > max_tokens or int(self.lengths.min()) < 1:
            raise ValueError(f"item lengths must be in [1, max_tokens={max_tokens}], got max {int(self.lengths.max())}")
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
        self.max_tokens, self.pack, self.bucket_size = max_tokens, pack, bucket_size
        super().__init__(len(self.lengths), indices=indices, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)

    def plan(self, rng: np.random.Generator) -> BatchPlan:
        return plan_batches(self.lengths, self.max_tokens, self.pack, self.bucket_size, rng)


class FixedSizeBatchSampler(ShardedBatchSampler):
    """Batches of ``batch_size`` items (the last may be smaller): a seeded permutation of the
    ``n`` items cut in order (``shuffle=False``: items in their own order); sharding, seeds and
    resume as :class:`ShardedBatchSampler`."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        indices: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        super().__init__(n, indices=indices, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)

    def plan(self, rng: np.random.Generator) -> BatchPlan:
        order = rng.permutation(self.n).astype(np.int64) if self.shuffle else np.arange(self.n, dtype=np.int64)
        starts = np.append(np.arange(0, self.n, self.batch_size, dtype=np.int64), self.n)
        return BatchPlan(order, starts)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ShardedBatchSampler` whose position Lightning checkpoints.

    ``dataset[key]`` must return a whole batch (automatic batching is off). ``state_dict()``
    records the epoch and how many batches this iteration has handed out; Lightning saves it
    in the checkpoint and calls ``load_state_dict`` on resume, which makes the next iteration
    continue after them. The underlying iterator (and its workers) starts on the first
    ``next()``, after Lightning's ``set_epoch``, so the restored position is not lost.
    """

    def __init__(self, dataset: Any, sampler: ShardedBatchSampler, **kwargs: Any):
        super().__init__(dataset, batch_size=None, sampler=sampler, **kwargs)
        self._position: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        epoch, done = self.sampler.epoch, self.sampler.pending_skip
        self._position = (epoch, done)
        for batch in super().__iter__():
            done += 1
            self._position = (epoch, done)
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._position if self._position is not None else (self.sampler.epoch, self.sampler.pending_skip)
        return {"epoch": epoch, "batches_done": done, "num_replicas": self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = int(state["batches_done"])
        old_replicas = int(state.get("num_replicas", self.sampler.num_replicas))
        if old_replicas != self.sampler.num_replicas:
            # a different world size: continue after the same number of global batches (approximate)
            done = done * old_replicas // self.sampler.num_replicas
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip_batches(min(done, self.sampler.num_batches))


def compare_batching(
    residue_lengths: np.ndarray, max_tokens: int, max_length: int, bucket_size: int = 4096, seed: int = 0
) -> dict[str, PlanStats]:
    """One epoch's padding and budget fill for the three strategies, on the same records.

    ``naive``: shuffled padded batches without bucketing; ``padded``: bucketed padded batches
    (what ``pack=False`` trains on); ``packed``: packed batches (``pack=True``).
    """
    lengths = token_lengths(residue_lengths, max_length)

    def rng() -> np.random.Generator:  # the same shuffle for every strategy
        return np.random.default_rng([seed, 0])

    return {
        "naive": plan_stats(naive_padded_plan(lengths, max_tokens, rng()), lengths, max_tokens, pack=False),
        "padded": plan_stats(plan_batches(lengths, max_tokens, False, bucket_size, rng()), lengths, max_tokens, False),
        "packed": plan_stats(plan_batches(lengths, max_tokens, True, bucket_size, rng()), lengths, max_tokens, True),
    }
