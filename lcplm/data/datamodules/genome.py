"""Whole genomes as MLM batches for the sparse genome transformer.

Genomes come from GenBank files and/or protein FASTA files grouped into genomes
(:mod:`lcplm.data.genomes`), are cut into windows of at most ``max_tokens`` tokens at
protein boundaries, and each window gets its ``allowed`` protein-pair matrix from the
configured pair source (:mod:`lcplm.data.pair_sources`). Validation holds out whole genomes.

Every protein of a window is framed ``<cls> P <eos>`` whatever the pair source, so the arms of
a pair-source comparison see the same tokens, windows and MLM targets and differ only in
``allowed``; under ``single_protein`` the model is ESM-2 on each protein of the window (same
logits as Hugging Face ``EsmForMaskedLM`` with the converted weights).

A batch (contract)::

    input_ids (B, L) long   masked ids, right-padded with <pad>
    labels    (B, L) long   original residue at MLM targets, -100 elsewhere
    lengths   (B,)   long
    pid       (B, L) long   protein index per token (see lcplm.data.genomes), -1 for padding
    allowed   (B, P, P) bool  per-window protein-pair matrix, padded with False

Batches are seeded: the order of an epoch is a permutation drawn from ``(seed, epoch)`` and
the masking of a batch from ``(seed, epoch, batch number)``, so a resumed run (see
:func:`~lcplm.data.datamodules.resume_position`) sees exactly the batches an uninterrupted one
would. With several ranks, each takes every world_size-th batch of the same order.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lcplm.data import tokenizer
from lcplm.data.datamodules import resume_position
from lcplm.data.genomes import (
    Genome,
    GenomeWindow,
    check_unique_protein_ids,
    genome_windows,
    read_genbank,
    read_protein_fasta,
)
from lcplm.data.pair_sources import PairSource, PairSourceConfig, build_pair_source
from lcplm.data.paths import resolve_data_path
from lcplm.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class GenomeDataConfig:
    name: str = "genome"
    genbank: list[str] = field(default_factory=list)  # GenBank files; 'shared:' / 'package:' prefixes resolve
    fasta: list[str] = field(default_factory=list)  # protein FASTA files, grouped into genomes by the rule
    fasta_genome_rule: str = "prodigal"  # prodigal | regex:PATTERN | file (see lcplm.data.genomes)
    protein_table: Optional[str] = None  # 'protein<TAB>genome[<TAB>order]': overrides the rule
    max_tokens: int = 1024  # tokens per window, every protein's <cls> and <eos> included
    batch_size: int = 2  # windows per batch
    val_genomes: list[str] = field(default_factory=list)  # genome ids held out for validation
    val_fraction: float = 0.2  # without val_genomes: this share of genomes (at least one), by seed
    pair_source: PairSourceConfig = field(default_factory=PairSourceConfig)
    mask_prob: float = 0.15  # MLM targets among residues (80% <mask>, 10% random, 10% kept)
    pad_to_multiple_of: int = 8
    num_workers: int = 0


def load_genomes(cfg: GenomeDataConfig) -> list[Genome]:
    """Every genome the config names, in file order; protein ids checked unique."""
    genomes: list[Genome] = []
    for p in cfg.genbank:
        genomes += read_genbank(resolve_data_path(p))
    table = resolve_data_path(cfg.protein_table) if cfg.protein_table else None
    for p in cfg.fasta:
        genomes += read_protein_fasta(resolve_data_path(p), cfg.fasta_genome_rule, table)
    if not genomes:
        raise UserError("data: no genomes: give data.genbank and/or data.fasta files")
    ids = [g.genome_id for g in genomes]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"data: genome id(s) {sorted(dup)} appear in more than one file or record")
    check_unique_protein_ids(genomes)
    return genomes


def split_genomes(genomes: Sequence[Genome], cfg: GenomeDataConfig, seed: int) -> tuple[list[Genome], list[Genome]]:
    """(train, val) by genome: ``val_genomes`` if given, else a seeded ``val_fraction``."""
    ids = [g.genome_id for g in genomes]
    if cfg.val_genomes:
        unknown = sorted(set(cfg.val_genomes) - set(ids))
        if unknown:
            raise UserError(f"data.val_genomes: unknown genome id(s) {unknown}; known: {ids}")
        held = set(cfg.val_genomes)
    elif cfg.val_fraction > 0 and len(genomes) > 1:
        k = max(1, round(cfg.val_fraction * len(genomes)))
        held = set(random.Random(seed).sample(ids, k))
    else:
        held = set()
    train = [g for g in genomes if g.genome_id not in held]
    if not train:
        raise UserError("data: every genome is held out for validation; leave some for training")
    return train, [g for g in genomes if g.genome_id in held]


@dataclass
class WindowItem:
    window: GenomeWindow
    allowed: torch.Tensor  # (P, P) bool
    mask_seed: int


class GenomeWindowDataset(Dataset):
    """Windows of a list of genomes with their ``allowed`` matrices (computed once)."""

    def __init__(self, genomes: Sequence[Genome], max_tokens: int, pair_source: PairSource):
        self.windows: list[GenomeWindow] = [w for g in genomes for w in genome_windows(g, max_tokens)]
        self.allowed: list[torch.Tensor] = [pair_source.allowed(w) for w in self.windows]
        cropped = [p for w in self.windows for p in w.cropped]
        if cropped:
            log.warning("%d protein(s) longer than max_tokens-2 were cropped, e.g. %s", len(cropped), cropped[0])

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: tuple[int, int]) -> WindowItem:
        idx, mask_seed = key
        return WindowItem(self.windows[idx], self.allowed[idx], mask_seed)


class SeededBatchSampler(Sampler):
    """Yields lists of ``(window index, mask seed)``; order from (seed, epoch), rank-sharded."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        epoch: int = 0,
        skip: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.bs, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.epoch, self.skip, self.rank, self.world = epoch, skip, rank, world_size

    def _batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i : i + self.bs] for i in range(0, self.n, self.bs)]
        usable = len(batches) - len(batches) % self.world if self.world > 1 else len(batches)
        return batches[:usable]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self._batches()
        for b in range(self.rank + self.skip * self.world, len(batches), self.world):
            seed = (self.seed * 1_000_003 + self.epoch) * 1_000_033 + b
            yield [(i, seed + j) for j, i in enumerate(batches[b])]

    def __len__(self) -> int:
        # The whole epoch's count, skipped batches included: on resume Lightning restores its
        # batch counter to ``skip`` and ends the epoch when the counter reaches this length.
        return len(self._batches()) // self.world


def collate_windows(items: Sequence[WindowItem], mask_prob: float, pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad windows into a genome batch and mask it (seeded by the first item's mask seed)."""
    from lcplm.data.masking import mask_tokens

    ids, lengths = tokenizer.pad_batch([it.window.input_ids for it in items], pad_to_multiple_of)
    B, L = ids.shape
    pid = torch.full((B, L), -1, dtype=torch.long)
    P = max(it.allowed.shape[0] for it in items)
    allowed = torch.zeros(B, P, P, dtype=torch.bool)
    for b, it in enumerate(items):
        pid[b, : len(it.window)] = it.window.pid
        n = it.allowed.shape[0]
        allowed[b, :n, :n] = it.allowed
    g = torch.Generator().manual_seed(items[0].mask_seed)
    masked, labels = mask_tokens(ids, g, mask_prob=mask_prob)
    return {"input_ids": masked, "labels": labels, "lengths": lengths, "pid": pid, "allowed": allowed}


class _Collate:
    def __init__(self, mask_prob: float, pad_to_multiple_of: int):
        self.mask_prob, self.pad = mask_prob, pad_to_multiple_of

    def __call__(self, items: Sequence[WindowItem]) -> dict[str, torch.Tensor]:
        return collate_windows(items, self.mask_prob, self.pad)


class GenomeDataModule(L.LightningDataModule):
    """Genome windows with pair-source ``allowed`` matrices; held-out genomes for validation."""

    def __init__(self, cfg: GenomeDataConfig, seed: int = 0):
        super().__init__()
        if cfg.max_tokens < 3:
            raise UserError(f"data.max_tokens must be at least 3, got {cfg.max_tokens}")
        if cfg.batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {cfg.batch_size}")
        self.cfg, self.seed = cfg, seed
        self.train_set: Optional[GenomeWindowDataset] = None
        self.val_set: Optional[GenomeWindowDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        genomes = load_genomes(self.cfg)
        train, val = split_genomes(genomes, self.cfg, self.seed)
        source = build_pair_source(self.cfg.pair_source, genomes)
        self.train_set = GenomeWindowDataset(train, self.cfg.max_tokens, source)
        self.val_set = GenomeWindowDataset(val, self.cfg.max_tokens, source)
        log.info(
            "genomes: %d train (%d windows), %d validation (%d windows); pair source %s",
            len(train), len(self.train_set), len(val), len(self.val_set), source.name,
        )

    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def _loader(self, ds: GenomeWindowDataset, sampler: SeededBatchSampler) -> DataLoader:
        return DataLoader(
            ds,
            batch_sampler=sampler,
            collate_fn=_Collate(self.cfg.mask_prob, self.cfg.pad_to_multiple_of),
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        epoch, done = resume_position(self.trainer)
        rank, world = self._rank()
        sampler = SeededBatchSampler(
            len(self.train_set), self.cfg.batch_size, self.seed, True, epoch, done, rank, world
        )
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        rank, world = self._rank()
        # a fixed masking seed (epoch -1): every validation sees the same targets
        sampler = SeededBatchSampler(len(self.val_set), self.cfg.batch_size, self.seed, False, -1, 0, rank, world)
        return self._loader(self.val_set, sampler)
