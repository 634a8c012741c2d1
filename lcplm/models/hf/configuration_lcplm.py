"""Hugging Face configs of exported lcplm models (shipped in exported directories; no lcplm import).

- :class:`LcplmConfig` (``model_type: lcplm``): any lcplm model kind. ``lcplm_config`` is the
  model's config dataclass as a dict (``{"name": "bimamba" | "sparse_transformer", ...}``).
- :class:`LcPlmConfig` (``model_type: lc_plm``): BiMamba-S in LC-PLM's released layout, with
  LC-PLM's own keys (``d_model``, ``n_layer``, ``ssm_cfg``, ``vocab_size``, ...).
"""

from __future__ import annotations

from typing import Any, Optional

from transformers import PretrainedConfig


class LcplmConfig(PretrainedConfig):
    model_type = "lcplm"

    def __init__(self, lcplm_config: Optional[dict[str, Any]] = None, **kwargs: Any):
        self.lcplm_config = dict(lcplm_config or {})
        super().__init__(**kwargs)


class LcPlmConfig(PretrainedConfig):
    model_type = "lc_plm"
