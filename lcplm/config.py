"""Experiment configuration: YAML files validated against dataclasses.

``load_config(path, overrides, schema)`` reads a YAML file, first merging the files listed
under its ``include:`` key (paths relative to the including file, applied in order, each
one's own includes first), then the file's body, then ``key=value`` overrides from the CLI.
The result is validated against ``schema``: an unknown key or a value of the wrong type is a
:class:`~lcplm.errors.UserError` naming the key and the file.

Polymorphic sections (``model``, ``data``) carry a ``name`` that picks their dataclass from
:data:`SECTION_SCHEMAS`; the dataclass lives beside the code it configures and is imported
lazily, so this module imports no models or data code.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lcplm.errors import UserError

# section -> name -> "module:Dataclass". Each dataclass has a ``name: str`` field.
SECTION_SCHEMAS: dict[str, dict[str, str]] = {
    "model": {
        "bimamba": "lcplm.models.bimamba:BiMambaConfig",
        "sparse_transformer": "lcplm.models.sparse_transformer:SparseTransformerConfig",
        "esm2": "lcplm.models.esm2:ESM2Config",
    },
    "data": {
        "fasta": "lcplm.data.datamodules.fasta:FastaDataConfig",
        "ppi_walks": "lcplm.data.datamodules.ppi_walks:PPIWalkDataConfig",
        "genome": "lcplm.data.datamodules.genome:GenomeDataConfig",
    },
}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.1  # not applied to norms, biases or embeddings
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping


@dataclass
class TrainerConfig:
    """What Lightning's Trainer receives (strategy presets live in experiments/trainer/)."""

    max_steps: int = 1000
    max_epochs: int = -1
    max_time_minutes: Optional[float] = None  # stop (and checkpoint) after this wall time
    val_check_interval: int = 200  # optimizer steps between validations
    limit_val_batches: int = 50
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | fsdp2 (ModelParallelStrategy + fully_shard)
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accumulate_grad_batches: int = 1
    activation_checkpointing: bool = False
    log_every_n_steps: int = 10
    deterministic: bool = False
    progress_bar: bool = True
    num_threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    collective_timeout_minutes: float = 10.0  # a collective waiting longer (dead or hung rank) fails the job


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str = "default"
    seed: int = 0
    resume: bool = False  # continue from <run dir>/checkpoints/last.ckpt (same as --resume)
    overwrite: bool = False  # allow a fresh run into a run directory that already has checkpoints
    init_from: Optional[str] = None  # load model weights (not optimiser state) from a checkpoint
    save_every_n_steps: int = 200


@dataclass
class TaskConfig:
    name: str = "mlm"


@dataclass
class PretrainConfig:
    """``lcplm pretrain``: a model, a data source, an optimiser, a trainer and a run directory."""

    model: Any = field(default_factory=lambda: {"name": "bimamba"})  # dataclass picked by model.name
    data: Any = field(default_factory=lambda: {"name": "fasta"})  # dataclass picked by data.name
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _read_yaml(path: Path, stack: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in stack:
        raise UserError(f"{path}: include cycle through {' -> '.join(str(p) for p in stack)}")
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: report the first line only
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if cfg is None or isinstance(cfg, ListConfig):
        raise UserError(f"{path}: expected a mapping of keys at the top level")
    includes = cfg.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged = OmegaConf.create({})
    for inc in includes:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / str(inc), stack + (path,)))
    return OmegaConf.merge(merged, cfg)


def _validate_section(schema: type, raw: Any, where: str) -> Any:
    """Merge ``raw`` onto the dataclass defaults; return a dataclass instance."""
    try:
        base = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, raw if raw is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(e).splitlines()[0]
        raise UserError(f"{where}: {msg}" + (f" (key '{key}')" if key and key not in msg else "")) from None


def validate(schema: type, cfg: DictConfig | dict, where: str = "config") -> Any:
    """Validate a raw config against ``schema``, resolving polymorphic sections by ``name``."""
    raw = OmegaConf.to_container(OmegaConf.create(cfg), resolve=False) if not isinstance(cfg, dict) else dict(cfg)
    poly = {}
    for f in dataclasses.fields(schema):
        if f.name in SECTION_SCHEMAS and f.name in raw:
            poly[f.name] = raw.pop(f.name)
    obj = _validate_section(schema, raw, where)
    for section, sub in poly.items():
        if not isinstance(sub, dict):
            raise UserError(f"{where}: '{section}' must be a mapping, got {sub!r}")
        choices = SECTION_SCHEMAS[section]
        name = sub.get("name")
        if name not in choices:
            raise UserError(
                f"{where}: '{section}.name' must be one of {sorted(choices)}, got {name!r}"
            )
        sub_schema = _import(choices[name])
        value = _validate_section(sub_schema, sub, f"{where}: {section}")
        setattr(obj, section, value)
    # sections that were not given at all still get their dataclass defaults
    for section in SECTION_SCHEMAS:
        if hasattr(obj, section) and isinstance(getattr(obj, section), dict):
            sub = getattr(obj, section)
            name = sub.get("name")
            if name in SECTION_SCHEMAS[section]:
                setattr(obj, section, _validate_section(_import(SECTION_SCHEMAS[section][name]), sub, where))
    return obj


def parse_overrides(overrides: list[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise UserError(f"override {o!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise UserError(f"bad override: {str(e).splitlines()[0]}") from None


def split_file_and_overrides(args: list[str], what: str = "EXPERIMENT.yaml") -> tuple[str | None, list[str]]:
    """``[FILE] key=value ...`` as CLIs take them: the file (None when absent) and the overrides.
    Anything else (a second file, a file after an override) is a one-line UserError."""
    path, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif path is None and not overrides:
            path = a
        else:
            raise UserError(f"unexpected argument {a!r}: give one {what} then key=value overrides")
    return path, overrides


def load_config(path: str | Path | None, overrides: list[str] | None = None, schema: type = PretrainConfig) -> Any:
    """Read ``path`` (with includes), apply ``overrides`` and validate against ``schema``."""
    cfg = _read_yaml(Path(path)) if path is not None else OmegaConf.create({})
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, parse_overrides(overrides))
        except (OmegaConfBaseException, TypeError) as e:  # TypeError: e.g. list.0.key=v, a dict onto a list
            raise UserError(f"{path}: cannot apply overrides {' '.join(overrides)}: {str(e).splitlines()[0]}") from None
    where = str(path) if path is not None else "config"
    return validate(schema, cfg, where)


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what a run directory stores as config.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
