"""``lcplm params EXPERIMENT [key=value ...]``: the parameter count of an experiment's model (what
``lcplm pretrain`` prints when it builds one), to size equal-parameter pairs. The model is built on
CPU with random weights; EXPERIMENT may name a shipped one (``tiny_esm2``)."""

from __future__ import annotations

import argparse

from lcplm.config import PretrainConfig, find_experiment, load_config, split_file_and_overrides
from lcplm.errors import UserError
from lcplm.models import build_model, parameter_line


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm params",
        description="Print the parameter count of an experiment's model (to size equal-parameter comparisons).",
    )
    p.add_argument("args", nargs="+", metavar="EXPERIMENT.yaml [key=value ...]")
    ns = p.parse_args(argv)
    experiment, overrides = split_file_and_overrides(ns.args)
    if experiment is None:
        raise UserError("give an experiment file: lcplm params EXPERIMENT.yaml [key=value ...]")
    cfg = load_config(find_experiment(experiment, "pretrain"), overrides, schema=PretrainConfig)
    print(parameter_line(build_model(cfg.model), cfg.model))
    return 0
