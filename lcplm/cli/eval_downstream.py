"""``lcplm eval-downstream [CONFIG] [key=value ...]`` (``make eval-downstream``): :func:`lcplm.eval.downstream.evaluate`.

CONFIG is a downstream YAML or the name of a shipped one (default ``downstream/default``,
:func:`lcplm.config.find_experiment`); overrides use the config's dotted keys (``seeds=[0]``,
``embed.max_length=512``, ``checkpoints=[a=runs/a/checkpoints/last.ckpt]``). Prints one line per
task skipped for missing data, progress per model and task, and the results table (also written
to ``<out_dir>/<name>/results.{md,json,png}``).
"""

from __future__ import annotations

import argparse
import sys

from lcplm.config import find_experiment, load_config
from lcplm.eval.downstream import DownstreamConfig, evaluate

DEFAULT_CONFIG = "downstream/default.yaml"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm eval-downstream",
        description="Evaluate checkpoints and baselines on remote homology, function and PPI link prediction.",
    )
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"downstream YAML (default {DEFAULT_CONFIG})")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0] embed.max_length=512")
    ns = p.parse_args(argv)
    config, overrides = ns.config, list(ns.overrides)
    if "=" in config:  # only overrides were given: keep the default file
        config, overrides = DEFAULT_CONFIG, [config, *overrides]
    cfg = load_config(find_experiment(config, "downstream"), overrides, schema=DownstreamConfig)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = evaluate(cfg, log)
    print(result["table"])
    for line in result["skipped"]:
        print(f"(skipped {line})")
    paths = result["paths"]
    print(f"\nwrote {paths['json']}, {paths['md']}, {paths['png']} in {result['seconds']:.0f} s "
          f"({result['cpu_seconds']:.0f} s of CPU time)")
    return 0
