"""``lcplm export SRC OUT_DIR [key=value ...] [--format lcplm|lcplm-released|hf-esm] [--no-modeling]``:
:func:`lcplm.models.export.export` (the formats are described there)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lcplm.config import parse_overrides
from lcplm.errors import UserError
from lcplm.models.export import FORMATS, export


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> {key: YAML-typed value} (one level: model config fields)."""
    settings = OmegaConf.to_container(parse_overrides(pairs)) if pairs else {}
    nested = [k for k, v in settings.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{nested[0]}.*: give model settings as key=value (e.g. scan_backend=reference)")
    return settings


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm export",
        description="Write a model file (checkpoint, model directory, LC-PLM or ESM-2 release) as a model directory.",
    )
    p.add_argument("src", help="a run checkpoint (.ckpt), an lcplm model directory, or LC-PLM's / ESM-2's HF directory")
    p.add_argument("out", help="output directory (created; its config.json is written last)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="model settings that do not change weights")
    p.add_argument("--format", default="lcplm", choices=FORMATS, help="directory layout (default %(default)s)")
    p.add_argument("--no-modeling", action="store_true",
                   help="lcplm format: leave out the transformers modeling code and auto_map")
    ns = p.parse_intermixed_args(argv)
    model_dir = export(ns.src, ns.out, ns.format, modeling=not ns.no_modeling, **parse_settings(ns.settings))
    files = ", ".join(sorted(f.name for f in Path(model_dir).iterdir() if not f.name.startswith(".")))
    print(f"wrote {model_dir} ({ns.format}): {files}")
    return 0
