"""Unmasked batches of whole proteins, for inference (``lcplm embed``, the downstream embedding
cache) and fine-tuning: the suite's one sampler and one framing, without masks.

:func:`protein_batch_loader` is a DataLoader over :class:`ProteinBatches` driven by
:class:`~lcplm.data.batching.TokenBudgetBatchSampler` (one bucket: every record sorted longest
first, then cut greedily so that ``B * L <= max_tokens``; a record longer than the budget goes
alone). Each record's residue ids are framed ``<cls> ... <eos>`` and right-padded with
``<pad>``: batch ``{"input_ids": (B, L), "lengths": (B,)}``, plus ``"y"`` (the records'
targets) when targets are given and ``"index"`` (B,) (the records' positions) when asked.

``shuffle=False`` (inference, validation, test) gives one fixed plan and order; ``shuffle=True``
(training) a new plan each epoch seeded by ``(seed, epoch)``, as for pretraining batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from lcplm.data import tokenizer as tok
from lcplm.data.batching import BatchKey, TokenBudgetBatchSampler


def frame_residues(residues: np.ndarray) -> np.ndarray:
    """(n,) residue ids -> (n + 2,) ``<cls> residues <eos>``."""
    return np.concatenate(([tok.CLS], residues, [tok.EOS])).astype(np.int64)


class ProteinBatches:
    """``dataset[BatchKey]``: the key's records framed and padded (see the module docstring)."""

    def __init__(self, residues: Sequence[np.ndarray], targets: Optional[torch.Tensor] = None, with_index: bool = False):
        if targets is not None and len(targets) != len(residues):
            raise ValueError(f"{len(targets)} targets for {len(residues)} records")
        self.residues, self.targets, self.with_index = residues, targets, with_index

    def __len__(self) -> int:
        return len(self.residues)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        idx = key.indices
        ids, lengths = tok.pad_batch([torch.from_numpy(frame_residues(self.residues[i])) for i in idx])
        batch = {"input_ids": ids, "lengths": lengths}
        if self.targets is not None:
            batch["y"] = self.targets[torch.from_numpy(idx)]
        if self.with_index:
            batch["index"] = torch.from_numpy(np.asarray(idx, np.int64))
        return batch


def protein_batch_loader(residues: Sequence[np.ndarray], max_tokens: int, *, targets: Optional[torch.Tensor] = None,
                         shuffle: bool = False, seed: int = 0, with_index: bool = False) -> DataLoader:
    """Token-budget batches of ``residues`` (per record (n_i,) residue ids, n_i >= 1); see the
    module docstring. The budget is raised to the longest framed record, which then goes alone."""
    if not len(residues):
        raise ValueError("no records to batch")
    lengths = np.asarray([len(r) + 2 for r in residues], np.int64)
    sampler = TokenBudgetBatchSampler(lengths, max(int(max_tokens), int(lengths.max())), bucket_size=len(lengths),
                                      shuffle=shuffle, seed=seed)
    return DataLoader(ProteinBatches(residues, targets, with_index), batch_size=None, sampler=sampler)
