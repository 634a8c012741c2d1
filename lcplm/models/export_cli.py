"""``lcplm export SRC OUT_DIR [key=value ...] [--format lcplm|lcplm-released|hf-esm]``.

SRC is anything :func:`lcplm.models.io.from_pretrained` reads: a run's checkpoint
(``runs/NAME/checkpoints/last.ckpt``), an lcplm model directory, LC-PLM's released directory, or
a Hugging Face ESM-2 directory. ``key=value`` arguments set model config values that do not
change the weights (``scan_backend=reference``, ``attention_backend=dense``, ...). Formats:

- ``lcplm`` (default): config.json + model.safetensors + the pure-PyTorch modeling code, for
  ``lcplm.models.io.from_pretrained`` and for ``transformers.AutoModelForMaskedLM.from_pretrained(
  OUT_DIR, trust_remote_code=True)`` (``--no-modeling``: weights and config only);
- ``lcplm-released``: BiMamba-S in LC-PLM's released layout (``LcPlmForMaskedLM``; see
  ``lcplm convert ours-to-lcplm`` for its layout options);
- ``hf-esm``: ``esm2`` and the genome transformer as transformers' own ``EsmForMaskedLM``
  (no remote code; with ESM-2's tokenizer files).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lcplm.errors import UserError
from lcplm.models import io

FORMATS = ("lcplm", "lcplm-released", "hf-esm")


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> {key: YAML-typed value} (one level: model config fields)."""
    from omegaconf import OmegaConf

    from lcplm.config import parse_overrides

    settings = OmegaConf.to_container(parse_overrides(pairs)) if pairs else {}
    nested = [k for k, v in settings.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"{nested[0]}.*: give model settings as key=value (e.g. scan_backend=reference)")
    return settings


def describe(model) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{model.cfg.name} model, {n / 1e6:.2f}M parameters"


def export(src: str | Path, out: str | Path, fmt: str = "lcplm", modeling: bool = True, **settings: Any) -> Path:
    """Read ``src``, write ``out`` in format ``fmt``; returns ``out``."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    model = io.from_pretrained(src, **settings)
    if fmt == "lcplm":
        return io.save_pretrained(model, out, modeling=modeling)
    if fmt == "lcplm-released":
        from lcplm.models import convert
        from lcplm.models.bimamba import BiMambaLM

        if not isinstance(model, BiMambaLM):
            raise UserError(f"{src}: a {model.cfg.name!r} model; only 'bimamba' (BiMamba-S) has LC-PLM's released layout")
        return convert.save_lcplm(model, out)
    from lcplm.models import convert_esm

    return convert_esm.save_hf_directory(model, out)


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
