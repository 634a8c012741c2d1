"""LightningDataModules, one module per data source, picked by ``data.name``.

Each class takes ``(cfg, seed)`` and yields batches as dicts of tensors: ``labels``
(``[B, L]``, -100 where not a target) plus the model's keyword inputs (``input_ids`` and
``lengths`` for padded batches, ``cu_seqlens`` for packed ones, ``pid``/``allowed`` for genomes).

Every DataModule batches through :class:`lcplm.data.batching.ShardedBatchSampler` (one DDP rule,
one seed derivation, resume) and :func:`resumable_train_loader` below:
its dataset maps a :class:`~lcplm.data.batching.BatchKey` to a whole batch. The samplers shard by
rank themselves, so the Trainer is built with ``use_distributed_sampler=False``.

:mod:`lcplm.data.datamodules.downstream` holds the downstream tasks' DataModules (built by
``eval-downstream`` per task and seed, not picked by ``data.name``); their fine-tuning batches come
from the same token-budget sampler.
"""

from __future__ import annotations

import importlib
from typing import Any

from lcplm.data.batching import ResumableDataLoader, ShardedBatchSampler

DATAMODULES: dict[str, str] = {
    "fasta": "lcplm.data.datamodules.fasta:FastaDataModule",
    "ppi_walks": "lcplm.data.datamodules.ppi_walks:PPIWalkDataModule",
    "genome": "lcplm.data.datamodules.genome:GenomeDataModule",
}


def build_datamodule(cfg: Any, seed: int = 0):
    module, _, cls = DATAMODULES[cfg.name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, seed=seed)


def resume_position(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches of that epoch already trained)`` for building a train loader.

    Lightning restores its loop counters before it asks for the train dataloader; when the
    run restarts mid-epoch (``--resume`` from a step checkpoint) the batch sampler must skip the
    batches that the checkpoint already contains, so the resumed run sees exactly the batches
    an uninterrupted run would. Without a trainer (plain iteration): ``(0, 0)``.
    """
    if trainer is None:
        return 0, 0
    fit_loop = trainer.fit_loop
    done = fit_loop.epoch_loop.batch_progress.current.processed if fit_loop.restarting else 0
    return int(trainer.current_epoch), int(done)


def shard(trainer: Any) -> tuple[int, int]:
    """``(num_replicas, rank)`` for a sampler: the trainer's world (``(1, 0)`` without one)."""
    if trainer is None:
        return 1, 0
    if trainer.world_size > 1 and getattr(getattr(trainer, "_accelerator_connector", None), "use_distributed_sampler", False):
        raise RuntimeError("lcplm samplers shard batches across ranks themselves: build the Trainer with use_distributed_sampler=False")
    return int(trainer.world_size), int(trainer.global_rank)


def resumable_train_loader(dataset: Any, sampler: ShardedBatchSampler, trainer: Any, **kwargs: Any) -> ResumableDataLoader:
    """The training loader: continues where a resumed run's checkpoint stopped (:func:`resume_position`)."""
    if trainer is not None:
        epoch, done = resume_position(trainer)
        sampler.set_epoch(epoch)
        sampler.skip_batches(min(done, len(sampler)))
    return ResumableDataLoader(dataset, sampler, **kwargs)

