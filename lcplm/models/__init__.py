"""Single-device nn.Modules (no Lightning imports).

Every model class takes its config dataclass, returns logits ``[B, L, V]`` from
``forward(input_ids, **inputs)`` and hidden states ``[B, L, d]`` from ``encode(...)``
with the same keyword inputs (``lengths``, ``cu_seqlens``, ``pid``, ``allowed``, ...).

``lcplm params EXPERIMENT.yaml [key=value ...]`` prints the parameter count of an experiment's
model (what ``lcplm pretrain`` prints when it builds one), to size equal-parameter pairs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from torch import nn

MODELS: dict[str, str] = {
    "bimamba": "lcplm.models.bimamba:BiMambaLM",
    "sparse_transformer": "lcplm.models.sparse_transformer:SparseGenomeLM",
    "esm2": "lcplm.models.esm2:ESM2LM",
}


def build_model(cfg: Any):
    """The model named by ``cfg.name``, built from its config dataclass."""
    module, _, cls = MODELS[cfg.name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding / LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


def parameter_line(model: nn.Module, cfg: Any) -> str:
    """One line naming the model kind and its parameter count, e.g. ``model esm2: 89,320 parameters``."""
    return f"model {cfg.name}: {count_parameters(model):,} parameters"


def main(argv: list[str]) -> int:
    """``lcplm params``: build an experiment's model (on CPU, random weights) and print its count."""
    from lcplm.config import PretrainConfig, load_config, split_file_and_overrides

    p = argparse.ArgumentParser(
        prog="lcplm params",
        description="Print the parameter count of an experiment's model (to size equal-parameter comparisons).",
    )
    p.add_argument("args", nargs="+", metavar="EXPERIMENT.yaml [key=value ...]")
    ns = p.parse_args(argv)
    experiment, overrides = split_file_and_overrides(ns.args)
    cfg = load_config(experiment, overrides, schema=PretrainConfig)
    print(parameter_line(build_model(cfg.model), cfg.model))
    return 0
