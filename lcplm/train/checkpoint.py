"""Rebuilding models from lcplm checkpoints (always ``weights_only=True``).

Every problem with a checkpoint file, on every path that reads one (``--resume``,
``run.init_from``, eval and embed loading), is one :class:`~lcplm.errors.UserError` line naming
the file: missing, a folder, empty, truncated, not a torch file, holding Python objects beyond
tensors and plain values (refused unread: loading those could run code), not a Lightning
checkpoint, weights only where training state is needed, or weights of another model.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcplm.config import PretrainConfig, validate
from lcplm.errors import UserError
from lcplm.models import build_model


# what a checkpoint needs beyond weights to continue training (Lightning's trainer state)
TRAINING_STATE_KEYS = ("global_step", "loops", "optimizer_states", "lr_schedulers")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """The checkpoint dict at ``path`` (``weights_only=True``); any problem is one UserError line.

    ``mmap``: map tensors from the file instead of reading them (cheap checks of large files).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a checkpoint (a write that never finished?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler names a refused Python object as "GLOBAL module.name";
        # anything else it rejects is bytes that are no pickle at all
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise UserError(
                f"{path}: refused: it holds Python objects beyond tensors and plain values ({found.group(1)}), "
                "which could run code when loaded (lcplm checkpoints never do)"
            ) from None
        raise UserError(f"{path}: cannot read checkpoint, truncated or not a torch file (not a pickle)") from None
    except Exception as e:  # truncated file, not a torch file, not a zip archive
        raise UserError(f"{path}: cannot read checkpoint, truncated or not a torch file ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        what = "a dict without 'state_dict'" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise UserError(f"{path}: not an lcplm/Lightning checkpoint ({what})")
    return ckpt


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


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load an lcplm checkpoint's model weights into ``model`` (strict; one-line error on mismatch)."""
    state = model_state_dict(read_checkpoint(path))
    check_weights_fit(model, state, path)
    model.load_state_dict(state)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """``(model, model_cfg)`` rebuilt from an lcplm checkpoint, in eval mode."""
    ckpt = read_checkpoint(path, map_location)
    cfg = experiment_config(ckpt, path)
    model = build_model(cfg.model)
    state = model_state_dict(ckpt)
    check_weights_fit(model, state, path)
    model.load_state_dict(state)
    model.eval()
    return model.to(map_location), cfg.model
