"""From residue ids to a masked-LM batch: crop, add <cls>/<eos>, pad or pack, mask.

Layouts (DESIGN.md "Batch" contract):

- padded: ``input_ids`` (B, L) right-padded with <pad>, ``lengths`` (B,) long, ``labels`` (B, L);
- packed: ``input_ids`` (1, T), ``cu_seqlens`` (n + 1,) int32 cumulative lengths from 0,
  ``labels`` (1, T).

Crops: a sequence longer than ``max_length - 2`` residues is cut to a window of that many
residues (a random window in training, the first one in validation) and <cls>/<eos> are added
*after* cropping, so every window is framed like a whole protein and no input exceeds
``max_length`` tokens.

Randomness (crop offsets, then masks) comes from one generator per batch seeded from
``(seed, stream, epoch, position)`` (:func:`lcplm.data.batching.batch_generator`). Masks are
drawn over the concatenated tokens in batch order, so the padded and packed layouts of the
same batch carry exactly the same targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lcplm.data.batching import batch_generator
from lcplm.data.masking import IGNORE_INDEX, mask_tokens
from lcplm.data.tokenizer import CLS, EOS, PAD

TRAIN_STREAM, VAL_STREAM = 0, 1  # generator streams: validation masks never repeat training ones


def crop_residues(ids: np.ndarray, max_residues: int, generator: torch.Generator | None) -> np.ndarray:
    """ids: (n,) residue ids. A window of at most ``max_residues``: random when a generator is given, else the start."""
    n = len(ids)
    if n <= max_residues:
        return ids
    if generator is None:
        return ids[:max_residues]
    start = int(torch.randint(n - max_residues + 1, (1,), generator=generator))
    return ids[start : start + max_residues]


class MLMCollator:
    """Builds a masked-LM batch from the residue ids of its records (see the module docstring)."""

    def __init__(
        self,
        max_length: int,
        pack: bool,
        random_crop: bool,
        seed: int,
        stream: int,
        mask_prob: float = 0.15,
        mask_token_frac: float = 0.8,
        random_token_frac: float = 0.1,
    ):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<cls>, one residue, <eos>), got {max_length}")
        self.max_length, self.pack, self.random_crop = max_length, pack, random_crop
        self.seed, self.stream = seed, stream
        self.mask_prob, self.mask_token_frac, self.random_token_frac = mask_prob, mask_token_frac, random_token_frac

    def __call__(self, residues: Sequence[np.ndarray], epoch: int, position: int) -> dict[str, torch.Tensor]:
        """residues: per record (n_i,) int64 residue ids, n_i >= 1. Returns the batch dict."""
        g = batch_generator(self.seed, self.stream, epoch, position)
        pieces = []
        for ids in residues:
            window = crop_residues(ids, self.max_length - 2, g if self.random_crop else None)
            pieces.append(np.concatenate(([CLS], window, [EOS])))
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        flat = torch.from_numpy(np.concatenate(pieces).astype(np.int64))[None]  # (1, T)
        masked, labels = mask_tokens(flat, g, self.mask_prob, self.mask_token_frac, self.random_token_frac)
        if self.pack:
            cu = torch.zeros(len(pieces) + 1, dtype=torch.int32)
            cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
            return {"input_ids": masked, "cu_seqlens": cu, "labels": labels}
        B, L = len(pieces), int(lengths.max())
        valid = torch.arange(L)[None, :] < lengths[:, None]  # (B, L), row-major = concatenation order
        input_ids = torch.full((B, L), PAD, dtype=torch.long)
        input_ids[valid] = masked[0]
        padded_labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        padded_labels[valid] = labels[0]
        return {"input_ids": input_ids, "lengths": lengths, "labels": padded_labels}
