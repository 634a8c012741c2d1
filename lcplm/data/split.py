"""Train/validation split by a stable hash of the record id, not by position.

A record is held out iff ``blake2b_64(id) / 2**64 < val_fraction``. The side depends on the id
alone: the same protein lands on the same side in every run, process and machine, whatever
the file order, and adding records to a file never moves existing ones across the split;
duplicated ids always share a side. Raising ``val_fraction`` only moves records from train
to validation.
"""

from __future__ import annotations

import numpy as np

from lcplm.data.fasta import id_hash


def is_validation(id_hashes: np.ndarray, val_fraction: float) -> np.ndarray:
    """id_hashes: (n,) uint64 (``FastaIndex.id_hashes``). Returns (n,) bool, True = validation."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    # the top 53 bits as a float in [0, 1) is exact in float64
    u = (np.asarray(id_hashes, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < val_fraction


def is_validation_id(record_id: str, val_fraction: float) -> bool:
    """The same rule for one id."""
    return bool(is_validation(np.array([id_hash(record_id)], dtype=np.uint64), val_fraction)[0])


def split_indices(id_hashes: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``, each int64 and ascending."""
    val = is_validation(id_hashes, val_fraction)
    return np.flatnonzero(~val).astype(np.int64), np.flatnonzero(val).astype(np.int64)
