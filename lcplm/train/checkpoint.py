"""Rebuilding models from lcplm checkpoints (always ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcplm.config import PretrainConfig, validate
from lcplm.errors import UserError
from lcplm.models import build_model


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unsafe pickle content
        raise UserError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an lcplm/Lightning checkpoint (no 'state_dict')")
    return ckpt


def experiment_config(ckpt: dict, path: str | Path = "checkpoint") -> PretrainConfig:
    """The validated experiment config stored in a checkpoint by :class:`MLMTask`."""
    raw = (ckpt.get("hyper_parameters") or {}).get("config")
    if not raw:
        raise UserError(f"{path}: checkpoint has no lcplm experiment config (hyper_parameters.config)")
    return validate(PretrainConfig, raw, where=f"{path} (stored config)")


def model_state_dict(ckpt: dict, prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load an lcplm checkpoint's model weights into ``model`` (strict; one-line error on mismatch)."""
    state = model_state_dict(read_checkpoint(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise UserError(f"{path}: weights do not fit this model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """``(model, model_cfg)`` rebuilt from an lcplm checkpoint, in eval mode."""
    ckpt = read_checkpoint(path, map_location)
    cfg = experiment_config(ckpt, path)
    model = build_model(cfg.model)
    model.load_state_dict(model_state_dict(ckpt))
    model.eval()
    return model.to(map_location), cfg.model
