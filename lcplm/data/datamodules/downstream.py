"""Downstream DataModules, one per kind of task data (:mod:`lcplm.data.downstream_tasks`), built per
seed: the seed draws the split (where the task's split is seeded) and the training order.

* :class:`SequenceDataModule`: per-protein rows ``{"x": (B, D), "y"}`` of standardised embeddings,
  or, for fine-tuning, token batches ``{"input_ids", "lengths", "y"}`` of the proteins themselves
  through the suite's token-budget sampler and framing (:func:`lcplm.data.protein_batches.protein_batch_loader`);
* :class:`PairDataModule`: pair rows ``{"a", "b", "y"}`` (node indices into :attr:`PairDataModule.features`),
  and the training graph a GNN may propagate over (:attr:`PairDataModule.train_edges`);
* :class:`NodeDataModule`: node rows ``{"node", "y"}`` on a fixed graph.

Features are standardised with the mean and standard deviation of the training rows (sequence
tasks), the proteins of training pairs (pair tasks) or the training nodes (node tasks).
``train_dataloader`` shuffles row batches with a generator seeded by the seed (``batch_size``
0: the whole split in one batch); ``val_dataloader`` and :meth:`SplitsDataModule.loader` for
each test split give the whole split in order. Every split other than ``train`` and ``valid``
is a test split (:attr:`SplitsDataModule.test_splits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lcplm.data import tokenizer as tok
from lcplm.data.collate import crop_residues
from lcplm.data.downstream_tasks import NodeTask, PairTask, SequenceTask
from lcplm.data.protein_batches import protein_batch_loader


class DictDataset(Dataset):
    """Rows of a dict of equally long tensors; batches are fetched by one indexing per key."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"DictDataset: tensors of different lengths {sizes}")
        self.tensors = dict(tensors)
        self.n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


def _already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


def tensor_loader(tensors: Mapping[str, torch.Tensor], batch_size: int, shuffle: bool = False,
                  seed: int = 0) -> DataLoader:
    """A DataLoader over a dict of tensors (seeded shuffling); ``batch_size <= 0`` means one batch."""
    ds = DictDataset(tensors)
    bs = len(ds) if batch_size <= 0 else batch_size
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=max(bs, 1), shuffle=shuffle, generator=gen, collate_fn=_already_batched)


def standardize(x: torch.Tensor, fit_rows: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with the statistics of ``x[fit_rows]`` (std floored to avoid 0/0)."""
    ref = x[fit_rows].double()
    mean, std = ref.mean(0), ref.std(0, unbiased=False).clamp_min(1e-6)
    return ((x.double() - mean) / std).float()


class SplitsDataModule(L.LightningDataModule):
    """Row tensors per split: ``splits[split] = {key: (n, ...) tensor}``, one key ``y``."""

    def __init__(self, splits: dict[str, dict[str, torch.Tensor]], batch_size: int = 0, seed: int = 0):
        super().__init__()
        missing = [s for s in ("train", "valid") if s not in splits]
        if missing:
            raise ValueError(f"splits lack {missing}")
        self.splits, self.batch_size, self.seed = splits, batch_size, seed

    @property
    def test_splits(self) -> list[str]:
        return [s for s in self.splits if s not in ("train", "valid")]

    def loader(self, split: str) -> DataLoader:
        """Training rows shuffled in ``batch_size`` batches; any other split whole, in order."""
        shuffle = split == "train"
        return tensor_loader(self.splits[split], self.batch_size if shuffle else 0, shuffle, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("valid")


class SequenceDataModule(SplitsDataModule):
    """A :class:`SequenceTask` for one seed: embeddings rows (``features`` (N, D)) or, without
    features, token batches of at most ``max_tokens`` for fine-tuning (proteins cut to their first
    ``max_residues``; training on a seeded subset of at most ``max_train`` proteins)."""

    def __init__(self, task: SequenceTask, seed: int, *, features: Optional[torch.Tensor] = None, batch_size: int = 0,
                 max_tokens: Optional[int] = None, max_residues: Optional[int] = None, max_train: Optional[int] = None):
        self.task, self.kind, self.n_outputs = task, task.kind, task.n_outputs
        self.rows = task.split_fn(seed)  # split -> (rows, y)
        self.features: Optional[torch.Tensor] = None
        if features is not None:
            self.features = standardize(features, torch.from_numpy(self.rows["train"][0]))
            splits = {s: {"x": self.features[torch.from_numpy(r)], "y": y} for s, (r, y) in self.rows.items()}
        elif max_tokens is None:
            raise ValueError("SequenceDataModule needs features (embedding rows) or max_tokens (token batches)")
        else:
            splits = {s: {"y": y} for s, (_, y) in self.rows.items()}
        super().__init__(splits, batch_size, seed)
        self.max_tokens, self.max_residues, self.max_train = max_tokens, max_residues, max_train

    def loader(self, split: str) -> DataLoader:
        if self.features is not None:
            return super().loader(split)
        rows, y = self.rows[split]
        shuffle = split == "train"
        if shuffle and self.max_train is not None and len(rows) > self.max_train:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(rows), self.max_train, replace=False))
            rows, y = rows[keep], y[torch.from_numpy(keep)]
        limit = self.max_residues or 10**9
        residues = [crop_residues(tok.encode_residues(self.task.sequences[r], self.task.names[r]), limit, None) for r in rows]
        return protein_batch_loader(residues, self.max_tokens, targets=y, shuffle=shuffle, seed=self.seed)


class PairDataModule(SplitsDataModule):
    """A :class:`PairTask` for one seed over node ``features`` (N, D) of its proteins.

    :attr:`train_edges` (2, 2E): the training pairs with a positive label (links) or any
    interaction type, in both directions: the only graph a GNN may see (valid/test pairs never
    leak into message passing)."""

    def __init__(self, task: PairTask, seed: int, features: torch.Tensor, batch_size: int = 0):
        self.task, self.kind, self.n_outputs, self.hits_k = task, task.kind, task.n_outputs, task.hits_k
        by_split = task.split_fn(seed)
        a_tr, b_tr, y_tr = by_split["train"]
        self.features = standardize(features, torch.from_numpy(np.unique(np.concatenate([a_tr, b_tr]))))
        pos = np.asarray(y_tr).reshape(len(y_tr), -1).max(1) > 0
        self.train_edges = torch.from_numpy(np.stack([np.concatenate([a_tr[pos], b_tr[pos]]),
                                                      np.concatenate([b_tr[pos], a_tr[pos]])]))
        splits = {s: {"a": torch.from_numpy(a), "b": torch.from_numpy(b), "y": torch.from_numpy(y)}
                  for s, (a, b, y) in by_split.items()}
        super().__init__(splits, batch_size, seed)


class NodeDataModule(SplitsDataModule):
    """A :class:`NodeTask` (its split is fixed) over node ``features`` (N, D); :attr:`edge_index`
    is the task's graph."""

    def __init__(self, task: NodeTask, seed: int, features: torch.Tensor, batch_size: int = 0):
        self.task, self.kind, self.n_outputs = task, "multilabel", int(task.y.shape[1])
        self.features = standardize(features, task.split["train"])
        self.edge_index = task.edge_index
        splits = {s: {"node": idx, "y": task.y[idx]} for s, idx in task.split.items()}
        super().__init__(splits, batch_size, seed)
