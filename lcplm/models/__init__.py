"""Single-device nn.Modules (no Lightning imports).

Every model class takes its config dataclass, returns logits ``[B, L, V]`` from
``forward(input_ids, **inputs)`` and hidden states ``[B, L, d]`` from ``encode(...)``
with the same keyword inputs (``lengths``, ``cu_seqlens``, ``pid``, ``allowed``, ...).

:data:`MODELS` is the one registry of model kinds: ``model.name`` in a config, the ``name`` in a
model file's ``config.json`` (kept in :mod:`lcplm.registry`, so configs validate without this
package). A registered class carries its own facts, which other layers read
through :func:`model_class` instead of keeping tables of their own:

- ``config_class``: its config dataclass (whose ``name`` default is the registry key);
- ``block_classes``: its residual block classes, the units of FSDP sharding and of activation
  checkpointing (``lcplm.train.strategies``);
- ``fsdp_param_dtype``: the dtype FSDP2 all-gathers its parameters in under bf16 mixed
  precision (``None``: keep fp32);
- ``keyword_inputs``: the keyword inputs ``forward``/``encode`` accept besides ``input_ids``.

``lcplm params`` (:mod:`lcplm.cli.params`) prints :func:`parameter_line` for an experiment's model.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from lcplm.errors import UserError
from lcplm.registry import MODELS


def model_class(name: str) -> type:
    """The model class registered as ``name`` (its module is imported on first use)."""
    if name not in MODELS:
        raise UserError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    module, _, cls = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_model(cfg: Any):
    """The model named by ``cfg.name``, built from its config dataclass."""
    return model_class(cfg.name)(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding / LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_line(model: nn.Module, cfg: Any) -> str:
    """One line naming the model kind and its parameter count, e.g. ``model esm2: 89,320 parameters``."""
    return f"model {cfg.name}: {count_parameters(model):,} parameters"
