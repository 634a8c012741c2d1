"""Checkpoint files that are either the old complete file or the new complete file.

``atomic_torch_save`` streams ``torch.save`` through :mod:`lcplm.files` (a uniquely named
temporary file in the same directory, fsynced, ``os.replace``d over the target, directory
fsynced). A process killed at any point leaves the previous checkpoint intact and loadable
(at worst a stray ``.<name>.<pid>.<hex>.tmp`` file). Lightning's own writer serialises the
whole checkpoint into memory first (twice the host memory of a 790M-parameter state) and
does not fsync; this one streams.

Loading defaults to ``weights_only=True``: our checkpoints hold tensors and plain types only.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lcplm.files import atomic_write_with


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint (dicts, lists, tuples): about its file size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path`` (lcplm.files); a
    full disk is a one-line UserError naming ``path`` and about how much space it needs."""
    atomic_write_with(path, lambda f: torch.save(obj, f), expected_bytes=tensor_bytes(obj))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` plugin: atomic, streamed, fsynced saves; ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
