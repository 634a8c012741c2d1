"""Write a model file as a model directory: :func:`export` (the command is ``lcplm export SRC OUT_DIR
[key=value ...] [--format lcplm|lcplm-released|hf-esm]``, :mod:`lcplm.cli.export`).

SRC is anything :func:`lcplm.models.io.from_pretrained` reads: a run's checkpoint
(``runs/NAME/checkpoints/last.ckpt``), an lcplm model directory, LC-PLM's released directory, or
a Hugging Face ESM-2 directory. ``key=value`` arguments set model config values that do not
change the weights (``scan_backend=reference``, ``attention_backend=dense``, ...). Formats:

- ``lcplm`` (default): config.json + model.safetensors + the pure-PyTorch modeling code, for
  ``lcplm.models.io.from_pretrained`` and for ``transformers.AutoModelForMaskedLM.from_pretrained(
  OUT_DIR, trust_remote_code=True)`` (``--no-modeling``: weights and config only);
- ``lcplm-released``: BiMamba-S in LC-PLM's released layout (``LcPlmForMaskedLM``; see
  ``lcplm convert to-lcplm`` for its layout options);
- ``hf-esm``: ``esm2`` and the genome transformer as transformers' own ``EsmForMaskedLM``
  (no remote code; with ESM-2's tokenizer files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lcplm.errors import UserError
from lcplm.models import io

FORMATS = ("lcplm", "lcplm-released", "hf-esm")


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
