"""Single-device nn.Modules (no Lightning imports).

Every model class takes its config dataclass, returns logits ``[B, L, V]`` from
``forward(input_ids, **inputs)`` and hidden states ``[B, L, d]`` from ``encode(...)``
with the same keyword inputs (``lengths``, ``cu_seqlens``, ``pid``, ``allowed``, ...).

:data:`MODELS` is the one registry of model kinds: ``model.name`` in a config, the ``name`` in a
model file's ``config.json``. A registered class carries its own facts, which other layers read
through :func:`model_class` instead of keeping tables of their own:

- ``config_class``: its config dataclass (whose ``name`` default is the registry key);
- ``block_classes``: its residual block classes, the units of FSDP sharding and of activation
  checkpointing (``lcplm.train.strategies``);
- ``fsdp_param_dtype``: the dtype FSDP2 all-gathers its parameters in under bf16 mixed
  precision (``None``: keep fp32);
- ``keyword_inputs``: the keyword inputs ``forward``/``encode`` accept besides ``input_ids``.
"""

from __future__ import annotations

import importlib
from typing import Any

from lcplm.errors import UserError

MODELS: dict[str, str] = {
    "bimamba": "lcplm.models.bimamba:BiMambaLM",
    "sparse_transformer": "lcplm.models.sparse_transformer:SparseGenomeLM",
}


def model_class(name: str) -> type:
    """The model class registered as ``name`` (its module is imported on first use)."""
    if name not in MODELS:
        raise UserError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    module, _, cls = MODELS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_model(cfg: Any):
    """The model named by ``cfg.name``, built from its config dataclass."""
    return model_class(cfg.name)(cfg)
