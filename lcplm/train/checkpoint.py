"""The trainer's view of model files: a run's Lightning ``.ckpt`` for ``--resume`` and
``run.init_from``, always read with ``weights_only=True``.

Model files have one home, :mod:`lcplm.models.io` (below this layer, so models never import
train); its ``read_checkpoint`` and ``load_weights`` are re-exported here. Every problem with a
checkpoint file, on every path that reads one (``--resume``, ``run.init_from``, eval and embed
loading), is one :class:`~lcplm.errors.UserError` line naming the file: missing, a folder, empty,
truncated, not a torch file, holding Python objects beyond tensors and plain values (refused
unread: loading those could run code), not a Lightning checkpoint, weights only where training
state is needed, or weights of another model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcplm.config import PretrainConfig, validate
from lcplm.errors import UserError
from lcplm.models.io import from_pretrained, load_weights, read_checkpoint


# what a checkpoint needs beyond weights to continue training (Lightning's trainer state)
TRAINING_STATE_KEYS = ("global_step", "loops", "optimizer_states", "lr_schedulers")



def read_training_checkpoint(path: str | Path) -> dict:
    """A checkpoint that ``--resume`` can continue (weights and trainer state), memory-mapped."""
    ckpt = read_checkpoint(path, mmap=True)
    missing = [k for k in TRAINING_STATE_KEYS if k not in ckpt]
    if missing:
        raise UserError(
            f"{path}: weights without training state (no {missing[0]!r}), so it cannot be resumed; "
            f"start a new run from its weights with run.init_from={path}"
        )
    return ckpt


def stored_config(ckpt: dict, path: str | Path = "checkpoint") -> dict | None:
    """The raw experiment config a checkpoint carries (None when it has none)."""
    hp = ckpt.get("hyper_parameters")
    raw = hp.get("config") if isinstance(hp, dict) else None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: its stored experiment config (hyper_parameters.config) is not a mapping")
    return raw or None


def experiment_config(ckpt: dict, path: str | Path = "checkpoint") -> PretrainConfig:
    """The validated experiment config stored in a checkpoint by :class:`MLMTask`."""
    raw = stored_config(ckpt, path)
    if not raw:
        raise UserError(f"{path}: checkpoint has no lcplm experiment config (hyper_parameters.config)")
    return validate(PretrainConfig, raw, where=f"{path} (stored config)")


def model_state_dict(ckpt: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def check_weights_fit(model: nn.Module, state: dict, path: str | Path) -> None:
    """One-line UserError unless ``state`` has exactly ``model``'s tensors, in its shapes."""
    own = model.state_dict()
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if k not in bad and own[k].shape != state[k].shape)
    if missing or unexpected or shape or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if bad:
            parts.append(f"{bad[0]} is not a tensor")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise UserError(f"{path}: weights do not fit this model: " + "; ".join(parts))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """``(model, model_cfg)`` from any model file (:func:`lcplm.models.io.from_pretrained`), in eval mode."""
    model = from_pretrained(path, device=map_location)
    return model, model.cfg


__all__ = ["check_weights_fit", "experiment_config", "load_model", "load_weights", "model_state_dict",
           "read_checkpoint", "read_training_checkpoint", "stored_config"]
