"""Single-device nn.Modules (no Lightning imports).

Every model class takes its config dataclass, returns logits ``[B, L, V]`` from
``forward(input_ids, **inputs)`` and hidden states ``[B, L, d]`` from ``encode(...)``
with the same keyword inputs (``lengths``, ``cu_seqlens``, ``pid``, ``allowed``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

MODELS: dict[str, str] = {
    "bimamba": "lcplm.models.bimamba:BiMambaLM",
    "sparse_transformer": "lcplm.models.sparse_transformer:SparseGenomeLM",
}


def build_model(cfg: Any):
    """The model named by ``cfg.name``, built from its config dataclass."""
    module, _, cls = MODELS[cfg.name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)
