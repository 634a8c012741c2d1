"""Model files: the one place that writes and reads models, for every model kind.

A **model directory** (Hugging Face layout) is what :func:`save_pretrained` writes::

    config.json         {"model_type": "lcplm", "lcplm_config": {"name": KIND, ...the config
                         dataclass's fields}, "architectures", "auto_map", "vocab_size",
                         "tie_word_embeddings", "torch_dtype", "lcplm_format": 1}
    model.safetensors   the state dict, tied weights stored once (above ``max_shard_bytes``:
                         model-0000i-of-0000n.safetensors and model.safetensors.index.json)
    configuration_lcplm.py, modeling_lcplm.py, reference_lcplm.py
                        pure-PyTorch modeling code (``lcplm/models/hf/``), so that
                        ``transformers.AutoModelForMaskedLM.from_pretrained(DIR,
                        trust_remote_code=True)`` loads it without lcplm, offline

:func:`from_pretrained` builds a model (any registered kind, looked up by the config's ``name``
in :data:`lcplm.models.MODELS`) from:

- a model directory (or its weights file);
- a Lightning checkpoint of an lcplm run (``*.ckpt``: weights under ``state_dict`` with the
  ``model.`` prefix, the experiment config under ``hyper_parameters.config``), always read with
  ``weights_only=True``;
- LC-PLM's released directory (``model_type: lc_plm``; :mod:`lcplm.models.convert`);
- a Hugging Face ESM-2 directory (``model_type: esm``; :mod:`lcplm.models.convert_esm`).

Lightning checkpoints are for resuming training; conversions and exports write model
directories, and everything that needs a model (``run.init_from``, ``lcplm embed``, the
evaluations) reads any of the above. :func:`write_model_directory` is the one writer of model
directories (ours, LC-PLM's layout, Hugging Face ESM-2's); :func:`read_hf_directory` the one
reader (single file, sharded index, or ``pytorch_model.bin``). Every file goes through
:mod:`lcplm.files`; config.json is written last, so a directory with a config.json is complete.
Bad input (missing file, wrong kind, truncated or foreign weights) is one :class:`UserError` line.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from lcplm.errors import UserError
from lcplm.files import atomic_write_bytes, atomic_write_text, atomic_write_with
from lcplm.models import model_class

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
MODEL_TYPE = "lcplm"
FORMAT_VERSION = 1
DEFAULT_MAX_SHARD_BYTES = 2 << 30  # a shard is serialised in memory before its atomic write

MODELING_DIR = Path(__file__).resolve().with_name("hf")
MODELING_FILES = ("configuration_lcplm.py", "modeling_lcplm.py", "reference_lcplm.py")
NATIVE_AUTO_MAP = {
    "AutoConfig": "configuration_lcplm.LcplmConfig",
    "AutoModel": "modeling_lcplm.LcplmModel",
    "AutoModelForMaskedLM": "modeling_lcplm.LcplmForMaskedLM",
}

# config.json model_type of foreign directories -> "module:function(config, state, where, **overrides)
# -> (our config dataclass, our state dict)"
FOREIGN_FORMATS: dict[str, str] = {
    "lc_plm": "lcplm.models.convert:from_lcplm",
    "esm": "lcplm.models.convert_esm:from_esm",
}

# keys that stored model configs may still carry but no model reads any more -> where they went
RETIRED_MODEL_KEYS = {"activation_checkpointing": "trainer.activation_checkpointing"}


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception from a reader we do not control."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


# ----------------------------------------------------------------------------- reading files


def _torch_load(path: Path, what: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; any failure is one UserError line."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a {what} (a write that never finished?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:  # a pickle that would import and run code
            raise UserError(
                f"{path}: refused: it holds Python objects beyond tensors and plain values ({found.group(1)}), "
                "which could run code when loaded (lcplm loads files with weights_only=True only)"
            ) from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise UserError(f"{path}: cannot read {what} (not a torch file: {detail[:200]})") from None
    except Exception as e:  # truncated zip archive, foreign file
        raise UserError(f"{path}: cannot read {what} ({error_line(e)})") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, mmap: bool = False) -> dict:
    """A Lightning checkpoint as a dict (``weights_only=True``); one UserError line when the file
    is missing, a folder, empty, truncated, not a torch file, or holds more than tensors and plain
    types. ``mmap``: map tensors from the file instead of reading them (cheap checks of large files)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    ckpt = _torch_load(path, "checkpoint", map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        what = "a dict without 'state_dict'" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise UserError(f"{path}: not an lcplm/Lightning checkpoint ({what})")
    return ckpt


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({error_line(e)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def read_weights(path: Path) -> dict[str, Tensor]:
    """One ``.safetensors`` file or a ``pytorch_model.bin`` (``weights_only=True``) as a state dict."""
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix != ".safetensors":
        state = _torch_load(path, "weights file")
    else:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # truncated, empty or foreign file
            raise UserError(f"{path}: cannot read weights ({error_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise UserError(f"{path}: expected a flat state dict of tensors")
    return state


def read_hf_directory(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """``(config.json as a dict, state dict)`` of a Hugging Face model directory (or of the
    directory of a weights file): ``model.safetensors``, a sharded ``model.safetensors.index.json``,
    or ``pytorch_model.bin``, in that order of preference."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found")
    directory = path if path.is_dir() else path.parent
    cfg_file = directory / CONFIG_FILE
    if not cfg_file.is_file():
        raise UserError(f"{directory}: no {CONFIG_FILE} (expected a model directory)")
    config = read_json(cfg_file)
    if path.is_file() and path.name != INDEX_FILE:
        return config, read_weights(path)
    if (directory / WEIGHTS_FILE).is_file() and path.name != INDEX_FILE:
        return config, read_weights(directory / WEIGHTS_FILE)
    index_file = directory / INDEX_FILE
    if index_file.is_file():
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index_file}: no 'weight_map' of weight names to shard files")
        shards = sorted(set(weight_map.values()), key=str)
        bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s]
        if bad:
            raise UserError(f"{index_file}: shard {bad[0]!r} is not a file name in the directory")
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_weights(directory / shard))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            raise UserError(f"{index_file}: weight {missing[0]!r} is not in its shard {weight_map[missing[0]]!r}")
        return config, state
    if (directory / BIN_FILE).is_file():
        return config, read_weights(directory / BIN_FILE)
    raise UserError(f"{directory}: no {WEIGHTS_FILE}, {INDEX_FILE} or {BIN_FILE}")


# ----------------------------------------------------------------------------- configs


def model_config(raw: Any, where: str, **overrides: Any) -> Any:
    """The validated config dataclass of a stored model config ``{"name": KIND, ...}``.

    The kind's dataclass comes from the model registry; unknown keys are errors, retired keys
    (:data:`RETIRED_MODEL_KEYS`) are dropped; ``overrides`` replace stored values (``name``, if
    given, must be the stored kind).
    """
    from lcplm.config import validate

    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise UserError(f"{where}: no model config with a 'name' (the model kind)")
    kind = raw["name"]
    if overrides.get("name", kind) != kind:
        raise UserError(f"{where}: holds a {kind!r} model, not {overrides['name']!r}")
    try:
        cls = model_class(kind).config_class
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"{where}: {unknown[0]!r} is not a setting of {kind!r} models ({', '.join(sorted(fields))})")
    merged = {k: v for k, v in raw.items() if k not in RETIRED_MODEL_KEYS}
    merged.update(overrides)
    return validate(cls, merged, where=where)


def config_dict(cfg: Any) -> dict:
    """A model config dataclass as the plain dict stored in config.json and checkpoints."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# ----------------------------------------------------------------------------- weights


def tied_parameters(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for parameters that are the same tensor as an earlier one (tied weights)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def load_state(model: nn.Module, state: Mapping[str, Tensor], where: str) -> nn.Module:
    """Load ``state`` into ``model`` strictly (tied weights may be stored once); one UserError
    line naming the first missing, unexpected or mis-shaped weight."""
    state = dict(state)
    for alias, name in tied_parameters(model).items():
        if alias not in state and name in state:
            state[alias] = state[name]
        elif name not in state and alias in state:
            state[name] = state[alias]
        elif alias in state and name in state and not torch.equal(state[alias], state[name]):
            raise UserError(f"{where}: {alias!r} differs from {name!r}, but this model ties them")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise UserError(f"{where}: weights do not fit this model ({type(model).__name__}): " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def unique_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with tied aliases left out (each tensor once), detached."""
    aliases = tied_parameters(model)
    return {k: v.detach() for k, v in model.state_dict().items() if k not in aliases}


# ----------------------------------------------------------------------------- writing


def _safetensors_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    from safetensors.torch import save

    # own contiguous CPU copies: safetensors refuses views that share storage
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, metadata={"format": "pt"})


def write_model_directory(
    directory: str | Path,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    *,
    files: Optional[Mapping[str, str]] = None,
    weights: str = "safetensors",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write ``config.json``, the weights and ``files`` (name -> text) into ``directory``.

    ``weights``: ``safetensors`` (sharded with an index above ``max_shard_bytes``) or ``bin``
    (``pytorch_model.bin``). Weight and modeling files of an earlier model in the directory are
    removed; config.json is removed first and written last. Returns the directory.
    """
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    files = dict(files or {})
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    written: set[str] = set(files)
    if weights == "bin":
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        atomic_write_with(directory / BIN_FILE, lambda f: torch.save(tensors, f))
        written.add(BIN_FILE)
    else:
        shards: list[list[str]] = [[]]
        size = 0
        for key, value in state.items():
            nbytes = value.numel() * value.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(key)
            size += nbytes
        if len(shards) == 1:
            atomic_write_bytes(directory / WEIGHTS_FILE, _safetensors_bytes(state))
            written.add(WEIGHTS_FILE)
        else:
            weight_map = {}
            for i, keys in enumerate(shards):
                name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                atomic_write_bytes(directory / name, _safetensors_bytes({k: state[k] for k in keys}))
                weight_map.update({k: name for k in keys})
                written.add(name)
            total = sum(v.numel() * v.element_size() for v in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")
            written.add(INDEX_FILE)
    for name, text in files.items():
        atomic_write_text(directory / name, text)
    for old in directory.iterdir():
        known = old.name in (WEIGHTS_FILE, INDEX_FILE, BIN_FILE, *MODELING_FILES) or SHARD_PATTERN.fullmatch(old.name)
        if known and old.name not in written:
            old.unlink()
    atomic_write_text(directory / CONFIG_FILE, json.dumps(dict(config), indent=2) + "\n")
    return directory


def modeling_files() -> dict[str, str]:
    """The shipped Hugging Face modeling code, file name -> text."""
    return {name: (MODELING_DIR / name).read_text() for name in MODELING_FILES}


def reference_covers(model: nn.Module) -> Optional[str]:
    """None when the shipped reference network of ``model``'s kind has exactly its weights
    (names and shapes); otherwise why not."""
    from lcplm.models.hf import reference_lcplm

    kind = model.cfg.name
    if kind not in reference_lcplm.NETWORKS:
        return f"the shipped modeling code has no network for {kind!r} models"
    with torch.device("meta"):
        ref = reference_lcplm.build_network(config_dict(model.cfg))
    theirs = {k: tuple(v.shape) for k, v in unique_state(ref).items()}
    ours = {k: tuple(v.shape) for k, v in unique_state(model).items()}
    if theirs != ours:
        diff = sorted(set(theirs.items()) ^ set(ours.items()))
        return f"the shipped modeling code does not match this {kind!r} model (first difference: {diff[0][0]})"
    return None


def save_pretrained(
    model: nn.Module, directory: str | Path, *, modeling: bool = True, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> Path:
    """Write ``model`` (any registered kind) as a model directory; returns the directory.

    ``modeling``: ship the Hugging Face modeling files and point ``auto_map`` at them; a model
    the shipped code does not cover is a UserError (pass ``modeling=False`` to write weights and
    config only, for lcplm alone).
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg) or not isinstance(model, model_class(cfg.name)):
        raise TypeError(f"{type(model).__name__} is not a registered lcplm model with its config as .cfg")
    state = unique_state(model)
    floating = [v.dtype for v in state.values() if v.is_floating_point()]
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "architectures": ["LcplmForMaskedLM"],
        "lcplm_format": FORMAT_VERSION,
        "lcplm_config": config_dict(cfg),
        "tie_word_embeddings": bool(tied_parameters(model)),
        "torch_dtype": str(floating[0] if floating else torch.float32).removeprefix("torch."),
    }
    if hasattr(cfg, "vocab_size"):
        config["vocab_size"] = cfg.vocab_size
    files = {}
    if modeling:
        why = reference_covers(model)
        if why is not None:
            raise UserError(f"cannot export with Hugging Face modeling code: {why}; export without it (--no-modeling)")
        files = modeling_files()
        config["auto_map"] = dict(NATIVE_AUTO_MAP)
    return write_model_directory(directory, config, state, files=files, max_shard_bytes=max_shard_bytes)


# ----------------------------------------------------------------------------- loading


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _is_directory_path(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".safetensors" or path.name in (INDEX_FILE, BIN_FILE)


def read_pretrained(path: str | Path, **overrides: Any) -> tuple[Any, dict[str, Tensor]]:
    """``(model config dataclass, state dict)`` of any model file :func:`from_pretrained` reads,
    without building the model. ``overrides`` replace config values (foreign formats may use
    ``name`` to pick the kind they convert to)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found (give a run's .ckpt or a model directory)")
    if _is_directory_path(path):
        config, state = read_hf_directory(path)
        where = str(path if path.is_dir() else path.parent)
        model_type = config.get("model_type")
        if model_type is None and "d_model" in config and "ssm_cfg" in config:
            model_type = "lc_plm"  # LC-PLM's config.json as released by early versions
        if model_type == MODEL_TYPE:
            if state and all(k.startswith("net.") for k in state):  # saved by transformers' save_pretrained
                state = {k[len("net."):]: v for k, v in state.items()}
            return model_config(config.get("lcplm_config"), f"{where}/{CONFIG_FILE}", **overrides), state
        if model_type in FOREIGN_FORMATS:
            return _import(FOREIGN_FORMATS[model_type])(config, state, where, **overrides)
        raise UserError(
            f"{where}/{CONFIG_FILE}: model_type {model_type!r} is not a format lcplm reads "
            f"({', '.join([MODEL_TYPE, *FOREIGN_FORMATS])})"
        )
    ckpt = read_checkpoint(path)
    stored = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(stored, Mapping) or "model" not in stored:
        raise UserError(f"{path}: checkpoint has no lcplm experiment config (hyper_parameters.config.model)")
    cfg = model_config(stored["model"], f"{path} (stored model config)", **overrides)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise UserError(f"{path}: no model weights in the checkpoint (no 'model.*' keys in state_dict)")
    return cfg, state


def from_pretrained(path: str | Path, *, device: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """The model stored at ``path`` (a model directory, a run's ``.ckpt``, LC-PLM's or ESM-2's
    Hugging Face directory), on ``device``, in eval mode; its config is ``model.cfg``.

    ``overrides`` replace config values that do not change the weights (``scan_backend``,
    ``attention_backend``, ...); a value that does makes the weights not fit (one line).
    """
    cfg, state = read_pretrained(path, **overrides)
    model = model_class(cfg.name)(cfg)
    load_state(model, state, str(path))
    return model.to(device).eval()


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the weights stored at ``path`` (anything :func:`from_pretrained` reads) into
    ``model``, whose architecture comes from elsewhere (``run.init_from``); strict."""
    p = Path(path)
    if p.is_file() and not _is_directory_path(p):
        # a run's checkpoint: only its weights matter here (the architecture is the experiment's)
        ckpt = read_checkpoint(p)
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        return load_state(model, state, str(p))
    _, state = read_pretrained(p, name=model.cfg.name)
    return load_state(model, state, str(p))
