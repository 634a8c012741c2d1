"""Stage-1 masked-LM data: proteins from FASTA files in token-budget batches.

``FastaDataModule(cfg, seed)`` indexes each FASTA once (``FastaIndex``, cached), splits records
into train/validation by a hash of their id, and serves batches built by
``TokenBudgetBatchSampler`` + ``MLMCollator`` (see those modules for the exact semantics).

Hooks for the training glue (all optional, Lightning drives them by itself):

- ``train_dataloader()`` asks ``resume_position(self.trainer)`` where a restarted run stands
  and skips the batches the checkpoint already contains; its ``ResumableDataLoader`` also
  saves and restores that position through Lightning's loader state;
- Lightning's ``set_epoch`` reaches the sampler (``dataloader.sampler``) every epoch;
- ``set_epoch(epoch)`` / ``skip_batches(n)`` do the same by hand (plain loops, tests).

Sharding: with a trainer attached, batches are split across ``trainer.world_size`` ranks by the
sampler itself, so the Trainer must be built with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lcplm.data.batching import BatchKey, ResumableDataLoader, TokenBudgetBatchSampler, token_lengths
from lcplm.data.cache import resolve_named_fasta
from lcplm.data.collate import TRAIN_STREAM, VAL_STREAM, MLMCollator
from lcplm.data.datamodules import resumable_train_loader, shard
from lcplm.data.fasta import FastaCounts, FastaIndex
from lcplm.data.inputs import spool_input
from lcplm.data.split import split_indices
from lcplm.data.tokenizer import encode_residues
from lcplm.errors import UserError

DEFAULT_PATH = "default"


@dataclass
class FastaDataConfig:
    """``data:`` section for FASTA pretraining (``name: fasta``)."""

    name: str = "fasta"
    # A FASTA path (plain, gzip or BGZF) or a list of them, read as one data set. "default" is
    # the embedded default proteome prepared by `lcplm data prepare-default` in the cache;
    # "swissprot:train" / "swissprot:heldout" / "swissprot:all" are `lcplm data prepare-swissprot`'s.
    path: Any = DEFAULT_PATH
    cache_dir: Optional[str] = None  # cache root for indexes and the default data ($LCPLM_CACHE_DIR or ./.cache)
    val_fraction: float = 0.05  # share of records held out for validation, by a stable hash of the id
    max_length: int = 1024  # tokens per sequence including <cls>/<eos>; longer proteins are cropped
    max_tokens: int = 16384  # token budget per batch: B * max_len (padded) or sum of lengths (packed)
    pack: bool = False  # True: packed [1, T] batches with cu_seqlens; False: padded [B, L] with lengths
    bucket_size: int = 4096  # records per length-sorting bucket (padded batches): larger = less padding
    mask_prob: float = 0.15  # probability that a residue is an MLM target
    mask_token_frac: float = 0.8  # share of targets replaced by <mask>
    random_token_frac: float = 0.1  # share of targets replaced by a random standard amino acid
    num_workers: int = 0  # DataLoader worker processes (batches do not depend on this)

    def __post_init__(self) -> None:
        paths = [self.path] if isinstance(self.path, str) else self.path
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise UserError(f"data.path must be a FASTA path or a non-empty list of paths, got {self.path!r}")
        checks = [
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("max_length", self.max_length >= 3, ">= 3 (<cls>, a residue, <eos>)"),
            ("max_tokens", self.max_tokens >= self.max_length, f">= data.max_length ({self.max_length})"),
            ("bucket_size", self.bucket_size >= 1, ">= 1"),
            ("mask_prob", 0.0 < self.mask_prob <= 1.0, "in (0, 1]"),
            ("mask_token_frac", 0.0 <= self.mask_token_frac <= 1.0, "in [0, 1]"),
            ("random_token_frac", 0.0 <= self.random_token_frac <= 1.0 - self.mask_token_frac,
             "in [0, 1 - data.mask_token_frac]"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise UserError(f"data.{key} must be {want}, got {getattr(self, key)!r}")

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class FastaBatchDataset:
    """``dataset[BatchKey] -> batch dict``: reads, tokenizes and collates one batch.

    Global record index i addresses the concatenation of ``sources`` in order.
    """

    def __init__(self, sources: list[FastaIndex], collator: MLMCollator):
        self.sources, self.collator = sources, collator
        self.starts = np.cumsum([0] + [len(s) for s in sources])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def record(self, i: int):
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.sources[s][int(i - self.starts[s])]

    def residues(self, i: int) -> np.ndarray:
        rec = self.record(i)
        return encode_residues(rec.sequence, record=rec.id)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        return self.collator([self.residues(int(i)) for i in key.indices], key.epoch, key.position)


class FastaDataModule(L.LightningDataModule):
    """Train/validation loaders of masked-LM batches over FASTA files (see the module docstring)."""

    def __init__(self, cfg: FastaDataConfig, seed: int = 0):
        super().__init__()
        if seed < 0:
            raise UserError(f"run.seed must be >= 0 for data sampling, got {seed}")
        self.cfg, self.seed = cfg, seed
        self.sources: list[FastaIndex] | None = None
        self._resolved: list[str] | None = None
        self.train_indices: np.ndarray | None = None
        self.val_indices: np.ndarray | None = None
        self._token_lengths: np.ndarray | None = None
        self._train_sampler: TokenBudgetBatchSampler | None = None

    # ---- data ------------------------------------------------------------------------------

    def resolved_paths(self) -> list[str]:
        """The FASTA files to index; a pipe, FIFO or '-' is copied into the cache once (the
        first call), so prepare_data and setup read the same bytes."""
        if self._resolved is not None:
            return self._resolved
        out = []
        for p in self.cfg.paths():
            p = resolve_named_fasta(p, self.cfg.cache_dir)  # default, swissprot:PART, or a path
            out.append(str(spool_input(p, self.cfg.cache_dir, "FASTA")))
        self._resolved = out
        return out

    def prepare_data(self) -> None:
        """Build (or validate) the FASTA indexes once per node before the ranks read them."""
        for p in self.resolved_paths():
            FastaIndex(p, self.cfg.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.sources is not None:
            return
        self.sources = [FastaIndex(p, self.cfg.cache_dir) for p in self.resolved_paths()]
        lengths = np.concatenate([np.asarray(s.lengths) for s in self.sources])
        hashes = np.concatenate([np.asarray(s.id_hashes) for s in self.sources])
        self._token_lengths = token_lengths(lengths, self.cfg.max_length)
        self.train_indices, self.val_indices = split_indices(hashes, self.cfg.val_fraction)
        where = ", ".join(self.resolved_paths())
        total = FastaCounts()
        for source in self.sources:
            total.add(source.counts)
        rank_zero_info(f"data: {total.records:,} records, {total.residues:,} residues from {where}{total.unk_note()}")
        if len(self.train_indices) == 0:
            raise UserError(f"data.val_fraction={self.cfg.val_fraction} leaves no training records in {where}")
        if self.cfg.val_fraction > 0 and len(self.val_indices) == 0:
            raise UserError(
                f"data.val_fraction={self.cfg.val_fraction} selects no validation records among "
                f"{len(lengths)} in {where}: raise it (or set 0 for no validation)"
            )

    def _dataset(self, train: bool) -> FastaBatchDataset:
        c = self.cfg
        collator = MLMCollator(
            c.max_length, c.pack, random_crop=train, seed=self.seed, stream=TRAIN_STREAM if train else VAL_STREAM,
            mask_prob=c.mask_prob, mask_token_frac=c.mask_token_frac, random_token_frac=c.random_token_frac,
        )
        return FastaBatchDataset(self.sources, collator)

    # ---- distribution ----------------------------------------------------------------------

    def _world(self) -> tuple[int, int]:
        return shard(self.trainer)

    def _sampler(self, indices: np.ndarray, shuffle: bool) -> TokenBudgetBatchSampler:
        world, rank = self._world()
        return TokenBudgetBatchSampler(
            self._token_lengths[indices], self.cfg.max_tokens, indices=indices, pack=self.cfg.pack,
            bucket_size=self.cfg.bucket_size, shuffle=shuffle, seed=self.seed, num_replicas=world, rank=rank,
        )

    @property
    def train_sampler(self) -> TokenBudgetBatchSampler:
        self.setup()
        world, rank = self._world()
        s = self._train_sampler
        if s is None or (s.num_replicas, s.rank) != (world, rank):
            self._train_sampler = self._sampler(self.train_indices, shuffle=True)
        return self._train_sampler

    def set_epoch(self, epoch: int) -> None:
        """Select the training epoch (its shuffle, crops and masks)."""
        self.train_sampler.set_epoch(epoch)

    def skip_batches(self, n: int) -> None:
        """Make the next training iteration start at this rank's batch ``n`` of the current epoch."""
        self.train_sampler.skip_batches(n)

    # ---- loaders ---------------------------------------------------------------------------

    def _loader_kwargs(self) -> dict[str, Any]:
        workers = self.cfg.num_workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def train_dataloader(self) -> ResumableDataLoader:
        sampler = self.train_sampler  # sets the data up first
        return resumable_train_loader(self._dataset(train=True), sampler, self.trainer, **self._loader_kwargs())

    def val_dataloader(self):
        self.setup()
        if len(self.val_indices) == 0:
            return []
        sampler = self._sampler(self.val_indices, shuffle=False)
        return torch.utils.data.DataLoader(
            self._dataset(train=False), batch_size=None, sampler=sampler, **self._loader_kwargs()
        )
