"""LC-PLM's released BiMamba-S (Hugging Face layout) <-> :class:`~lcplm.models.bimamba.BiMambaLM`.

The released model (``LcPlmForMaskedLM``, amazon-science/LC-PLM) is a directory with
``config.json`` (``d_model``, ``n_layer``, ``ssm_cfg``, ``vocab_size`` 128,
``bidirectional_weight_tie``, ...) and ``model.safetensors`` (or ``pytorch_model.bin``, or a
sharded ``model.safetensors.index.json``). Its weights, with P = ``bimamba.backbone.``
(``backbone.`` and no prefix are also read)::

    P embedding.weight                                  (V, d)      -> backbone.embedding.weight
    P layers.{i}.norm.weight                            (d,)        -> backbone.layers.{i}.norm.weight
    P layers.{i}.mixer.mamba_fwd.in_proj.weight         (2E, d)     -> backbone.layers.{i}.mixer.in_proj.weight
    P layers.{i}.mixer.mamba_fwd.out_proj.weight        (d, E)      -> backbone.layers.{i}.mixer.out_proj.weight
    P layers.{i}.mixer.mamba_{fwd,rev}.{conv1d.weight, conv1d.bias, x_proj.weight,
                                       dt_proj.weight, dt_proj.bias, A_log, D}
                                                                    -> backbone.layers.{i}.mixer.{fwd,rev}.*
    P norm_f.weight                                     (d,)        -> backbone.norm_f.weight
    lm_head.weight                                      (V, d)      -> lm_head.weight

``mamba_rev``'s in/out projections are the same tensors as ``mamba_fwd``'s (weight tying);
a file may store them under either name or both (then they must be equal). LC-PLM adds an
``out_proj`` bias once per direction, so a bias (``bias: true``) is stored doubled here.

Vocabulary: both use ESM-2's ids 0..32; LC-PLM pads its table to 128 rows, ours to 40
(ids 33..37 are lcplm's graph/genome tokens). Importing keeps rows 0..39: rows 33..39 are
LC-PLM's never-trained padding rows, i.e. our extra tokens start from LC-PLM's
initialisation. Exporting writes our 40 rows and zero rows up to 128. So ours -> LC-PLM ->
ours is exact, and LC-PLM -> ours -> LC-PLM is exact except rows 40..127 (unused) become 0.

LC-PLM has shared projections only: a model with ``share_projections: false`` is refused both
ways with one line (``bidirectional_weight_tie: false`` configs are refused on import too).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.files import atomic_write_with
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

LCPLM_VOCAB = 128
LCPLM_PREFIX = "bimamba.backbone."
_PREFIXES = ("bimamba.backbone.", "backbone.", "")
_DIRECTION_KEYS = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")
# ssm_cfg keys of mamba-ssm's Mamba that change no weight or forward computation we model
_SSM_IGNORED = {"dt_init", "use_fast_path", "layer_idx"}
_SSM_KEYS = {
    "d_state": "d_state",
    "d_conv": "d_conv",
    "expand": "expand",
    "dt_rank": "dt_rank",
    "dt_min": "dt_min",
    "dt_max": "dt_max",
    "dt_init_floor": "dt_init_floor",
    "dt_scale": "dt_scale",
    "conv_bias": "conv_bias",
    "bias": "bias",
}


# ----------------------------------------------------------------------------- reading


def read_lcplm(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """``(config.json as a dict, state dict)`` of an LC-PLM directory (or its weights file)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    directory = path if path.is_dir() else path.parent
    cfg_file = directory / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{directory}: no config.json (expected an LC-PLM Hugging Face model directory)")
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{cfg_file}: expected a JSON object")
    if path.is_file():
        weights = [path]
    elif (directory / "model.safetensors").is_file():
        weights = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index_file = directory / "model.safetensors.index.json"
        try:
            shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index_file}: not a safetensors index ({type(e).__name__})") from None
        weights = [directory / s for s in shards]
    elif (directory / "pytorch_model.bin").is_file():
        weights = [directory / "pytorch_model.bin"]
    else:
        raise UserError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    state: dict[str, Tensor] = {}
    for w in weights:
        state.update(_read_weights(w))
    return config, state


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as e:  # truncated or foreign file
        raise UserError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a flat state dict of tensors")
    return state


# ----------------------------------------------------------------------------- configs


def config_from_lcplm(c: Mapping[str, Any], where: str = "config.json", **overrides: Any) -> BiMambaConfig:
    """Our :class:`BiMambaConfig` from LC-PLM's config; refuses what BiMamba-S cannot express."""

    def need(key: str, ok: bool, expect: str) -> None:
        if not ok:
            raise UserError(f"{where}: {key}={c.get(key)!r} is not supported (expected {expect})")

    for key in ("d_model", "n_layer", "vocab_size"):
        if not isinstance(c.get(key), int) or c[key] < 1:
            raise UserError(f"{where}: '{key}' must be a positive integer, got {c.get(key)!r}")
    need("d_intermediate", c.get("d_intermediate", 0) == 0, "0: no MLP blocks")
    need("bidirectional", c.get("bidirectional", True) is True, "true")
    need("bidirectional_strategy", c.get("bidirectional_strategy", "add") in ("add", None), "'add'")
    need("bidirectional_weight_tie", c.get("bidirectional_weight_tie", True) is True, "true: shared projections")
    need("rms_norm", c.get("rms_norm", True) is True, "true")
    need("attn_layer_idx", not c.get("attn_layer_idx"), "no attention layers")
    ssm = dict(c.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer != "Mamba1":
        raise UserError(f"{where}: ssm_cfg.layer={layer!r} is not supported (BiMamba-S here is Mamba-1)")
    kw: dict[str, Any] = {}
    for key, value in ssm.items():
        if key in _SSM_IGNORED:
            continue
        if key not in _SSM_KEYS:
            raise UserError(f"{where}: ssm_cfg.{key} is not supported by lcplm's BiMamba-S")
        kw[_SSM_KEYS[key]] = 0 if (key == "dt_rank" and value == "auto") else value
    tie = bool(c.get("tie_embeddings", c.get("tie_word_embeddings", False)))
    cfg = BiMambaConfig(
        d_model=c["d_model"],
        n_layer=c["n_layer"],
        norm_eps=float(c.get("norm_epsilon", 1e-5)),
        residual_in_fp32=bool(c.get("residual_in_fp32", True)),
        tie_embeddings=tie,
        **kw,
    )
    return dataclasses.replace(cfg, **overrides)


def lcplm_vocab_rows(c: Mapping[str, Any]) -> int:
    """Rows of LC-PLM's embedding: vocab_size rounded up to pad_vocab_size_multiple."""
    mult = int(c.get("pad_vocab_size_multiple", 8) or 1)
    return int(math.ceil(int(c["vocab_size"]) / mult) * mult)


def config_to_lcplm(cfg: BiMambaConfig, vocab_size: int = LCPLM_VOCAB) -> dict:
    """LC-PLM's config.json for our model (its modeling code reads these keys)."""
    return {
        "architectures": ["LcPlmForMaskedLM"],
        "auto_map": {
            "AutoConfig": "configuration_lcplm.LcPlmConfig",
            "AutoModelForMaskedLM": "modeling_lcplm.LcPlmForMaskedLM",
        },
        "model_type": "lc_plm",
        "d_model": cfg.d_model,
        "n_layer": cfg.n_layer,
        "d_intermediate": 0,
        "vocab_size": vocab_size,
        "pad_vocab_size_multiple": vocab_size,
        "ssm_cfg": {
            "layer": "Mamba1",
            "d_state": cfg.d_state,
            "d_conv": cfg.d_conv,
            "expand": cfg.expand,
            "dt_rank": cfg.resolved_dt_rank,
            "dt_min": cfg.dt_min,
            "dt_max": cfg.dt_max,
            "dt_init_floor": cfg.dt_init_floor,
            "dt_scale": cfg.dt_scale,
            "conv_bias": cfg.conv_bias,
            "bias": cfg.bias,
        },
        "layer": "Mamba1",
        "attn_cfg": None,
        "attn_layer_idx": None,
        "norm_epsilon": cfg.norm_eps,
        "rms_norm": True,
        "residual_in_fp32": cfg.residual_in_fp32,
        "fused_add_norm": True,
        "initializer_cfg": None,
        "bidirectional": True,
        "bidirectional_strategy": "add",
        "bidirectional_weight_tie": True,
        "tie_embeddings": cfg.tie_embeddings,
        # transformers ties the LM head to the embedding unless told not to
        "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": -100,
        "torch_dtype": "float32",
    }


# ----------------------------------------------------------------------------- weights


def _require_shared(cfg: BiMambaConfig) -> None:
    if not cfg.share_projections:
        raise UserError(
            "model.share_projections is false: LC-PLM's format has shared in/out projections only "
            "(bidirectional_weight_tie), so an unshared BiMamba does not convert to or from it"
        )


def _resize_rows(t: Tensor, rows: int) -> Tensor:
    """First ``rows`` rows of t, zero rows appended if t has fewer."""
    out = t.new_zeros((rows,) + tuple(t.shape[1:]))
    n = min(rows, t.shape[0])
    out[:n] = t[:n]
    return out


def _detect_prefix(state: Mapping[str, Tensor], where: str) -> str:
    for p in _PREFIXES:
        if p + "embedding.weight" in state and p + "norm_f.weight" in state:
            return p
    sample = ", ".join(sorted(state)[:3])
    raise UserError(
        f"{where}: not an LC-PLM BiMamba state dict (no 'bimamba.backbone.embedding.weight' "
        f"or 'backbone.embedding.weight'; first keys: {sample})"
    )


def lcplm_state_to_ours(
    state: Mapping[str, Tensor], cfg: BiMambaConfig, where: str = "state dict", sources: Optional[dict] = None
) -> dict[str, Tensor]:
    """Map an LC-PLM state dict onto :class:`BiMambaLM`'s parameter names (rows resized to
    cfg.vocab_size). ``sources``, if given, receives our key -> the LC-PLM key it came from."""
    _require_shared(cfg)
    p = _detect_prefix(state, where)
    used: set[str] = set()
    sources = {} if sources is None else sources

    def take(key: str) -> Tensor:
        if key not in state:
            raise UserError(f"{where}: missing weight {key!r}")
        used.add(key)
        return state[key]

    def tied(i: int, name: str) -> Optional[Tensor]:
        keys = [f"{p}layers.{i}.mixer.mamba_{d}.{name}" for d in ("fwd", "rev")]
        present = [k for k in keys if k in state]
        if not present:
            return None
        used.update(present)
        sources[f"backbone.layers.{i}.mixer.{name}"] = present[0]
        if len(present) == 2 and not torch.equal(state[keys[0]], state[keys[1]]):
            raise UserError(f"{where}: {keys[1]!r} differs from {keys[0]!r}: the projections are not tied")
        return state[present[0]]

    out: dict[str, Tensor] = {"backbone.embedding.weight": _resize_rows(take(p + "embedding.weight"), cfg.vocab_size)}
    sources["backbone.embedding.weight"] = p + "embedding.weight"
    for i in range(cfg.n_layer):
        o = f"backbone.layers.{i}."
        out[o + "norm.weight"] = take(f"{p}layers.{i}.norm.weight")
        sources[o + "norm.weight"] = f"{p}layers.{i}.norm.weight"
        for name in ("in_proj", "out_proj"):
            w = tied(i, f"{name}.weight")
            if w is None:
                raise UserError(f"{where}: missing weight '{p}layers.{i}.mixer.mamba_fwd.{name}.weight'")
            out[o + f"mixer.{name}.weight"] = w
            b = tied(i, f"{name}.bias")
            if cfg.bias:
                if b is None:
                    raise UserError(f"{where}: missing weight '{p}layers.{i}.mixer.mamba_fwd.{name}.bias' (config bias=true)")
                # LC-PLM adds out_proj's bias in both directions; ours adds it once
                out[o + f"mixer.{name}.bias"] = 2 * b if name == "out_proj" else b
            elif b is not None:
                raise UserError(f"{where}: unexpected weight '{p}layers.{i}.mixer.mamba_fwd.{name}.bias' (config bias=false)")
        for d, ours in (("fwd", "fwd"), ("rev", "rev")):
            for name in _DIRECTION_KEYS:
                if name == "conv1d.bias" and not cfg.conv_bias:
                    continue
                out[o + f"mixer.{ours}.{name}"] = take(f"{p}layers.{i}.mixer.mamba_{d}.{name}")
                sources[o + f"mixer.{ours}.{name}"] = f"{p}layers.{i}.mixer.mamba_{d}.{name}"
    out["backbone.norm_f.weight"] = take(p + "norm_f.weight")
    sources["backbone.norm_f.weight"] = p + "norm_f.weight"
    sources["lm_head.weight"] = "lm_head.weight"
    if "lm_head.weight" in state:
        out["lm_head.weight"] = _resize_rows(take("lm_head.weight"), cfg.vocab_size)
    elif cfg.tie_embeddings:
        out["lm_head.weight"] = out["backbone.embedding.weight"]
    else:
        raise UserError(f"{where}: missing weight 'lm_head.weight' (and the config does not tie embeddings)")
    extra = sorted(set(state) - used)
    if extra:
        raise UserError(f"{where}: {len(extra)} unexpected weight(s), e.g. {extra[0]!r} (more layers than n_layer?)")
    return out


def ours_state_to_lcplm(
    state: Mapping[str, Tensor],
    cfg: BiMambaConfig,
    vocab_size: int = LCPLM_VOCAB,
    prefix: str = LCPLM_PREFIX,
    duplicate_tied: bool = False,
) -> dict[str, Tensor]:
    """Our :class:`BiMambaLM` state dict in LC-PLM's names; tied projections are written once
    (under ``mamba_fwd``, as the released file) unless ``duplicate_tied``."""
    _require_shared(cfg)
    if vocab_size < cfg.vocab_size:
        raise UserError(f"export vocab_size {vocab_size} is smaller than the model's {cfg.vocab_size}")

    def get(key: str) -> Tensor:
        if key not in state:
            raise UserError(f"lcplm checkpoint: missing weight {key!r} (not a BiMamba-S model?)")
        return state[key].detach().clone().contiguous()

    out: dict[str, Tensor] = {prefix + "embedding.weight": _resize_rows(get("backbone.embedding.weight"), vocab_size)}
    for i in range(cfg.n_layer):
        o, t = f"backbone.layers.{i}.", f"{prefix}layers.{i}."
        out[t + "norm.weight"] = get(o + "norm.weight")
        for name in ("in_proj", "out_proj"):
            parts = ["weight"] + (["bias"] if cfg.bias else [])
            for part in parts:
                v = get(o + f"mixer.{name}.{part}")
                if name == "out_proj" and part == "bias":
                    v = v / 2
                out[t + f"mixer.mamba_fwd.{name}.{part}"] = v
                if duplicate_tied:
                    out[t + f"mixer.mamba_rev.{name}.{part}"] = v.clone()
        for d in ("fwd", "rev"):
            for name in _DIRECTION_KEYS:
                if name == "conv1d.bias" and not cfg.conv_bias:
                    continue
                out[t + f"mixer.mamba_{d}.{name}"] = get(o + f"mixer.{d}.{name}")
    out[prefix + "norm_f.weight"] = get("backbone.norm_f.weight")
    out["lm_head.weight"] = _resize_rows(get("lm_head.weight"), vocab_size)
    return out


# ----------------------------------------------------------------------------- whole models


def load_lcplm(path: str | Path, vocab_size: int = tokenizer.PADDED_VOCAB_SIZE, **overrides: Any) -> BiMambaLM:
    """A :class:`BiMambaLM` holding the weights of an LC-PLM model directory (eval mode)."""
    config, state = read_lcplm(path)
    where = str(path)
    cfg = config_from_lcplm(config, where=where, vocab_size=vocab_size, **overrides)
    rows = lcplm_vocab_rows(config)
    emb = next((state[p + "embedding.weight"] for p in _PREFIXES if p + "embedding.weight" in state), None)
    if emb is not None and tuple(emb.shape) != (rows, cfg.d_model):
        raise UserError(
            f"{where}: embedding.weight has shape {tuple(emb.shape)}, config.json implies ({rows}, {cfg.d_model})"
        )
    model = BiMambaLM(cfg)
    sources: dict[str, str] = {}
    ours = lcplm_state_to_ours(state, cfg, where=where, sources=sources)
    own = model.state_dict()
    for key, value in ours.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(
                f"{where}: weight {sources.get(key, key)!r} has shape {tuple(value.shape)}, "
                f"config.json implies {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in ours.items()})
    return model.eval()


def save_lcplm(model: BiMambaLM, out_dir: str | Path, vocab_size: int = LCPLM_VOCAB, prefix: str = LCPLM_PREFIX,
               duplicate_tied: bool = False, safetensors: bool = True) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) in LC-PLM's layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = ours_state_to_lcplm(model.state_dict(), model.cfg, vocab_size, prefix, duplicate_tied)
    (out_dir / "config.json").write_text(json.dumps(config_to_lcplm(model.cfg, vocab_size), indent=2) + "\n")
    if safetensors:
        from safetensors.torch import save_file

        target = out_dir / "model.safetensors"
        save_file(state, str(target), metadata={"format": "pt"})
    else:
        target = out_dir / "pytorch_model.bin"
        torch.save(state, target)
    return target


def save_checkpoint(model: BiMambaLM, path: str | Path) -> Path:
    """Write ``model`` as an lcplm checkpoint (what ``run.init_from`` and ``load_model`` read)."""
    from lcplm.config import PretrainConfig, to_dict

    config = to_dict(PretrainConfig(model=model.cfg))
    state = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    atomic_write_with(path, lambda f: torch.save({"state_dict": state, "hyper_parameters": {"config": config}}, f))
    return path
