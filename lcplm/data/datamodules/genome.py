"""Whole genomes as MLM batches for the sparse genome transformer.

Genomes come from GenBank files, protein FASTA files grouped into genomes and/or ViralEmbed
genome FASTA files (:mod:`lcplm.data.genomes`; one summary line says what was read and skipped), are cut into windows of at most ``max_tokens`` tokens at
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

Batches come from :class:`~lcplm.data.batching.FixedSizeBatchSampler` (``batch_size`` windows,
shuffled per (seed, epoch), sharded by rank, resumable) and are masked from
``(seed, stream, epoch, batch position)``, so a resumed run sees exactly the batches an
uninterrupted one would, whatever ``num_workers``. A genome set that leaves no validation
genome (one genome, or ``val_fraction: 0``) trains without validation.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from lcplm.data import tokenizer
from lcplm.data.batching import BatchKey, FixedSizeBatchSampler, batch_generator
from lcplm.data.datamodules import resumable_train_loader, shard
from lcplm.data.genomes import (
    Genome,
    GenomeReadSummary,
    GenomeWindow,
    check_unique_protein_ids,
    genome_windows,
    read_genbank,
    read_protein_fasta,
    read_viralembed,
)
from lcplm.data.pair_sources import PairSource, PairSourceConfig, build_pair_source
from lcplm.data.paths import resolve_data_path
from lcplm.errors import UserError

log = logging.getLogger(__name__)

# generator streams (lcplm.data.batching.seed_sequence) of training and validation masks
TRAIN_STREAM, VAL_STREAM = 20, 21


@dataclass
class GenomeDataConfig:
    name: str = "genome"
    genbank: list[str] = field(default_factory=list)  # GenBank files; 'shared:' / 'package:' prefixes resolve
    fasta: list[str] = field(default_factory=list)  # protein FASTA files, grouped into genomes by the rule
    fasta_genome_rule: str = "prodigal"  # prodigal | regex:PATTERN | file (see lcplm.data.genomes)
    protein_table: Optional[str] = None  # 'protein<TAB>genome[<TAB>order]': overrides the rule
    viralembed: list[str] = field(default_factory=list)  # ViralEmbed genome FASTA: one record per genome, lengths in the header
    max_tokens: int = 1024  # tokens per window, every protein's <cls> and <eos> included
    batch_size: int = 2  # windows per batch
    val_genomes: list[str] = field(default_factory=list)  # genome ids held out for validation
    val_fraction: float = 0.2  # without val_genomes: this share of genomes (at least one), by seed
    pair_source: PairSourceConfig = field(default_factory=PairSourceConfig)
    mask_prob: float = 0.15  # MLM targets among residues (80% <mask>, 10% random, 10% kept)
    pad_to_multiple_of: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("max_tokens", self.max_tokens >= 3, ">= 3 (<cls>, a residue, <eos>)"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("mask_prob", 0.0 < self.mask_prob <= 1.0, "in (0, 1]"),
            ("pad_to_multiple_of", self.pad_to_multiple_of >= 1, ">= 1"),
            ("num_workers", self.num_workers >= 0, ">= 0"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise UserError(f"data.{key} must be {want}, got {getattr(self, key)!r}")


def load_genomes(cfg: GenomeDataConfig) -> list[Genome]:
    """Every genome the config names, in file order; protein ids checked unique. Logs one
    summary line (a warning when CDS were skipped)."""
    genomes: list[Genome] = []
    summary = GenomeReadSummary()
    for p in cfg.genbank:
        genomes += read_genbank(resolve_data_path(p), summary)
    table = resolve_data_path(cfg.protein_table) if cfg.protein_table else None
    for p in cfg.fasta:
        genomes += read_protein_fasta(resolve_data_path(p), cfg.fasta_genome_rule, table, summary)
    for p in cfg.viralembed:
        genomes += read_viralembed(resolve_data_path(p), summary)
    if not genomes:
        raise UserError("data: no genomes: give data.genbank, data.fasta and/or data.viralembed files")
    (log.warning if summary.skipped else log.info)(summary.line())
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


class GenomeWindowDataset:
    """Windows of a list of genomes with their ``allowed`` matrices (computed once);
    ``dataset[BatchKey]`` is one masked batch of the key's windows."""

    def __init__(
        self, genomes: Sequence[Genome], max_tokens: int, pair_source: PairSource,
        seed: int = 0, stream: int = TRAIN_STREAM, mask_prob: float = 0.15, pad_to_multiple_of: int = 8,
    ):
        self.windows: list[GenomeWindow] = [w for g in genomes for w in genome_windows(g, max_tokens)]
        self.allowed: list[torch.Tensor] = [pair_source.allowed(w) for w in self.windows]
        self.seed, self.stream, self.mask_prob, self.pad = seed, stream, mask_prob, pad_to_multiple_of
        cropped = [p for w in self.windows for p in w.cropped]
        if cropped:
            log.warning("%d protein(s) longer than max_tokens-2 were cropped, e.g. %s", len(cropped), cropped[0])

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        idx = [int(i) for i in key.indices]
        g = batch_generator(self.seed, self.stream, key.epoch, key.position)
        return collate_windows([self.windows[i] for i in idx], [self.allowed[i] for i in idx], self.mask_prob, g, self.pad)


def collate_windows(
    windows: Sequence[GenomeWindow], allowed: Sequence[torch.Tensor], mask_prob: float,
    generator: torch.Generator, pad_to_multiple_of: int = 8,
) -> dict[str, torch.Tensor]:
    """Pad windows (with their (P, P) ``allowed`` matrices) into a genome batch and mask it."""
    from lcplm.data.masking import mask_tokens

    ids, lengths = tokenizer.pad_batch([w.input_ids for w in windows], pad_to_multiple_of)
    B, L = ids.shape
    pid = torch.full((B, L), -1, dtype=torch.long)
    P = max(a.shape[0] for a in allowed)
    allowed_b = torch.zeros(B, P, P, dtype=torch.bool)
    for b, (w, a) in enumerate(zip(windows, allowed)):
        pid[b, : len(w)] = w.pid
        n = a.shape[0]
        allowed_b[b, :n, :n] = a
    masked, labels = mask_tokens(ids, generator, mask_prob=mask_prob)
    return {"input_ids": masked, "labels": labels, "lengths": lengths, "pid": pid, "allowed": allowed_b}


class GenomeDataModule(L.LightningDataModule):
    """Genome windows with pair-source ``allowed`` matrices; held-out genomes for validation."""

    def __init__(self, cfg: GenomeDataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_set: Optional[GenomeWindowDataset] = None
        self.val_set: Optional[GenomeWindowDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        genomes = load_genomes(self.cfg)
        train, val = split_genomes(genomes, self.cfg, self.seed)
        source = build_pair_source(self.cfg.pair_source, genomes)
        c = self.cfg
        self.train_set = GenomeWindowDataset(train, c.max_tokens, source, self.seed, TRAIN_STREAM, c.mask_prob, c.pad_to_multiple_of)
        self.val_set = GenomeWindowDataset(val, c.max_tokens, source, self.seed, VAL_STREAM, c.mask_prob, c.pad_to_multiple_of)
        log.info(
            "genomes: %d train (%d windows), %d validation (%d windows); pair source %s",
            len(train), len(self.train_set), len(val), len(self.val_set), source.name,
        )
        if not val:
            log.warning("no validation genome (data.val_genomes / data.val_fraction): training without validation")

    def _sampler(self, ds: GenomeWindowDataset, shuffle: bool) -> FixedSizeBatchSampler:
        world, rank = shard(self.trainer)
        return FixedSizeBatchSampler(len(ds), self.cfg.batch_size, shuffle=shuffle, seed=self.seed, num_replicas=world, rank=rank)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = self._sampler(self.train_set, shuffle=True)
        return resumable_train_loader(self.train_set, sampler, self.trainer, num_workers=self.cfg.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        # a fixed plan and masks (keys of epoch 0, validation stream): every validation sees the same targets
        return DataLoader(self.val_set, batch_size=None, sampler=self._sampler(self.val_set, shuffle=False),
                          num_workers=self.cfg.num_workers)
