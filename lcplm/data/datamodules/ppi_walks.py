"""Stage-2 (LC-PLM-G) data: MLM batches of random-walk contexts over a PPI graph.

The graph is read once (:mod:`lcplm.data.ppi_graph`); a held-out node set grown breadth-first
(:func:`~lcplm.data.ppi_graph.split_nodes`) gives validation, and training and validation
walks run on the two induced subgraphs, so no protein is in both. A training epoch starts
``walks_per_node`` walks from every training node: its start list (every node ``walks_per_node``
times) is batched by :class:`~lcplm.data.batching.FixedSizeBatchSampler` (shuffled per
(seed, epoch), sharded by rank, resumable). Each batch is one vectorised call
(:func:`~lcplm.data.walks.walk_contexts`) seeded by (seed, split stream, epoch, batch position),
then masked by :func:`lcplm.data.masking.mask_tokens` (residues only: the special tokens stay
visible), so a batch is the same whatever the number of workers, and a resumed run sees the
batches an uninterrupted one would.

Batch: ``input_ids`` (B, L) right-padded with PAD, ``lengths`` (B,), ``labels`` (B, L).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch.utils.data import DataLoader

from lcplm.data.batching import BatchKey, FixedSizeBatchSampler, batch_generator
from lcplm.data.datamodules import resumable_train_loader, shard
from lcplm.data.edge_lists import check_edge_options
from lcplm.data.ppi_graph import PPIGraph, load_ppi_graph, split_nodes
from lcplm.data.walks import CSRGraph, ProteinTable, check_budget, walk_contexts
from lcplm.data.paths import is_shared, resolve_data_path
from lcplm.errors import UserError

# generator streams (lcplm.data.batching.seed_sequence): training and validation batches, the node split
TRAIN_STREAM, VAL_STREAM, SPLIT_STREAM = 10, 11, 12


@dataclass
class PPIWalkDataConfig:
    """``data.name: ppi_walks``. Paths starting ``../shared/data/`` resolve under ``$LCPLM_DATA_DIR``."""

    name: str = "ppi_walks"
    edges: str = "../shared/data/ppi/yeast_guo/protein.actions.tsv"  # edge file
    sequences: str = "../shared/data/ppi/yeast_guo/protein.dictionary.tsv"  # FASTA or id<TAB>sequence
    edge_format: str = "pairs"  # pairs (id1 id2 [score|label]) | string (protein.links) | string_actions (protein.actions)
    # The edge rule (lcplm.data.edge_lists): a line is an edge when it has no score or score >= min_score;
    # null = the format's default (700 for STRING files, 0.5 for pairs, so 0/1 labels keep the 1s).
    min_score: Optional[float] = None
    modes: Optional[list[str]] = None  # string_actions: keep only these modes (activation, binding, ...); null = all
    strict: bool = False  # proteins without a sequence: error (true) or report and drop (false)
    keep_isolated: bool = False  # also make nodes of sequences without any edge (they only jump)
    context_len: int = 2048  # token budget per context, <cls> and <eos> included
    max_protein_len: int = 1000  # longer proteins are cropped to a random window of this length
    p_neg: float = 0.2  # probability of a [NO_EDGE] jump to a random non-neighbour at each step
    fill_budget: bool = True  # crop the protein that does not fit to fill the budget
    batch_size: int = 4  # contexts per batch
    walks_per_node: int = 1  # training walks started from every node per epoch
    val_fraction: float = 0.1  # nodes held out (grown breadth-first) for validation walks
    mask_prob: float = 0.15  # fraction of residues that are MLM targets
    mask_token_frac: float = 0.8  # of the targets: replaced by <mask>
    random_token_frac: float = 0.1  # of the targets: replaced by a random amino acid
    num_workers: int = 0  # DataLoader worker processes (batches do not depend on this)

    def __post_init__(self) -> None:
        check_config(self)


def _existing(path: str, key: str) -> Path:
    p = resolve_data_path(path)
    if str(p) != "-" and not p.exists():  # pipes, FIFOs and '-' are read as they are
        hint = (
            " (it comes from ../shared/data, beside the project; set LCPLM_DATA_DIR to that folder)"
            if is_shared(path)
            else ""
        )
        raise UserError(f"data.{key}: file {p} not found{hint}")
    return p


def check_config(cfg: PPIWalkDataConfig) -> None:
    """Reject impossible settings with the key's name, before any file is read."""
    check_edge_options(cfg.edge_format, cfg.min_score, cfg.modes, "data")
    check_budget(cfg.context_len, cfg.max_protein_len)
    if not 0.0 <= cfg.p_neg <= 1.0:
        raise UserError(f"data.p_neg must be in [0, 1], got {cfg.p_neg}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    for key in ("batch_size", "walks_per_node"):
        if getattr(cfg, key) < 1:
            raise UserError(f"data.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.num_workers < 0:
        raise UserError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
    if not 0.0 <= cfg.mask_prob <= 1.0:
        raise UserError(f"data.mask_prob must be in [0, 1], got {cfg.mask_prob}")
    if min(cfg.mask_token_frac, cfg.random_token_frac) < 0 or cfg.mask_token_frac + cfg.random_token_frac > 1:
        raise UserError(
            "data.mask_token_frac and data.random_token_frac must be >= 0 and sum to at most 1, "
            f"got {cfg.mask_token_frac} and {cfg.random_token_frac}"
        )


@dataclass
class WalkSplit:
    """One side of the split: its induced subgraph and its proteins, indexed alike."""

    graph: CSRGraph
    proteins: ProteinTable
    ids: list[str]

    @classmethod
    def induced(cls, ppi: PPIGraph, nodes: torch.Tensor) -> "WalkSplit":
        """nodes: (n,) sorted node indices of ``ppi``."""
        local = torch.full((ppi.num_nodes,), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        ei = local[ppi.data.edge_index]
        ei = ei[:, (ei >= 0).all(0)]
        idx = nodes.tolist()
        ids = [ppi.ids[i] for i in idx]
        return cls(CSRGraph.from_edge_index(ei, nodes.numel()), ProteinTable.from_sequences([ppi.sequences[i] for i in idx], ids), ids)

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes


class WalkContextDataset:
    """``dataset[BatchKey]`` is one batch: masked contexts of walks from the key's start items.

    Item ``i`` of an epoch's start list (``num_nodes * walks_per_node`` items) is node
    ``i % num_nodes``, so every node starts ``walks_per_node`` walks per epoch.
    """

    def __init__(self, split: WalkSplit, cfg: PPIWalkDataConfig, seed: int, stream: int, walks_per_node: int):
        self.split, self.cfg, self.seed, self.stream = split, cfg, seed, stream
        self.walks_per_node = walks_per_node

    @property
    def num_starts(self) -> int:
        return self.split.num_nodes * self.walks_per_node

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        from lcplm.data.masking import mask_tokens

        starts = torch.from_numpy(key.indices % self.split.num_nodes)
        g = batch_generator(self.seed, self.stream, key.epoch, key.position)
        c = self.cfg
        ids, lengths, _ = walk_contexts(
            self.split.graph, self.split.proteins, starts, c.context_len, c.max_protein_len, c.p_neg, g, c.fill_budget
        )
        masked, labels = mask_tokens(ids, g, mask_prob=c.mask_prob, mask_token_frac=c.mask_token_frac, random_token_frac=c.random_token_frac)
        return {"input_ids": masked, "lengths": lengths, "labels": labels}


class PPIWalkDataModule(L.LightningDataModule):
    """Random-walk contexts over a PPI graph; validation walks on a held-out node set."""

    def __init__(self, cfg: PPIWalkDataConfig, seed: int = 0):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.graph: Optional[PPIGraph] = None
        self.train_split: Optional[WalkSplit] = None
        self.val_split: Optional[WalkSplit] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_split is not None:
            return
        c = self.cfg
        edges, sequences = _existing(c.edges, "edges"), _existing(c.sequences, "sequences")
        self.graph = load_ppi_graph(edges, sequences, c.edge_format, c.min_score, c.strict, c.keep_isolated, c.modes)
        if self.graph.num_nodes < 2:
            raise UserError(f"{edges}: the graph needs at least 2 proteins to hold some out for validation")
        g = batch_generator(self.seed, SPLIT_STREAM, 0, 0)
        train, val = split_nodes(self.graph.data.edge_index, self.graph.num_nodes, c.val_fraction, g)
        self.train_split = WalkSplit.induced(self.graph, train)
        self.val_split = WalkSplit.induced(self.graph, val)
        rank_zero_info(
            f"{self.graph.report.summary()}; walks: {self.train_split.num_nodes} training proteins "
            f"({self.train_split.graph.col.numel() // 2} edges), {self.val_split.num_nodes} held out "
            f"({self.val_split.graph.col.numel() // 2} edges)"
        )

    def _sampler(self, ds: WalkContextDataset, shuffle: bool) -> FixedSizeBatchSampler:
        world, rank = shard(self.trainer)
        return FixedSizeBatchSampler(
            ds.num_starts, self.cfg.batch_size, shuffle=shuffle, seed=self.seed, num_replicas=world, rank=rank
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = WalkContextDataset(self.train_split, self.cfg, self.seed, TRAIN_STREAM, self.cfg.walks_per_node)
        return resumable_train_loader(ds, self._sampler(ds, shuffle=True), self.trainer, num_workers=self.cfg.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        # one walk from every held-out node, the same walks and masks at every validation
        ds = WalkContextDataset(self.val_split, self.cfg, self.seed, VAL_STREAM, walks_per_node=1)
        return DataLoader(ds, batch_size=None, sampler=self._sampler(ds, shuffle=False), num_workers=self.cfg.num_workers)
