"""Experiment configuration: YAML files validated against dataclasses.

``load_config(path, overrides, schema)`` reads a YAML file, first merging the files listed
under its ``include:`` key (paths relative to the including file, applied in order, each
one's own includes first), then the file's body, then ``key=value`` overrides from the CLI.
The result is validated against ``schema``: an unknown key, a value of the wrong type, a number
outside its range, a non-finite number (NaN, inf) anywhere, or a word outside its choices is a
:class:`~lcplm.errors.UserError` naming the key and the file. Ranges and choices are checked in
each dataclass's ``__post_init__`` (:func:`check_ranges`), so a config built in code is checked too.

Polymorphic sections (``model``, ``data``) carry a ``name`` that picks their dataclass from
:data:`SECTION_SCHEMAS`; the dataclass lives beside the code it configures and is imported
lazily. Names and classes come from :mod:`lcplm.registry` (a model's config dataclass is its
class's ``config_class``). This module is in the bottom layer with :mod:`lcplm.errors`,
:mod:`lcplm.files` and :mod:`lcplm.registry`: every layer imports it, and it imports no other
lcplm module (``tests/test_layers.py``).

:func:`find_experiment` is how a command finds the file a user names: the path as given, else
the same file among the experiments shipped with lcplm (:func:`experiments_dir`: the source
checkout's ``experiments/``, or the copy a wheel carries as ``lcplm/_experiments``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lcplm.errors import UserError
from lcplm.registry import DATA_SOURCES, MODELS, TASKS

# section -> name -> "module:Attribute[.attribute]". Each dataclass has a ``name: str`` field.
SECTION_SCHEMAS: dict[str, dict[str, str]] = {
    "model": {name: f"{target}.config_class" for name, target in MODELS.items()},
    "data": dict(DATA_SOURCES),
}


# what a run directory's config.yaml holds besides the config: its segments (lcplm.train.run_dir)
RUN_HISTORY_KEY = "history"

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "fsdp", "fsdp2")
PRECISIONS = ("auto", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


def check_ranges(section: str, checks: list[tuple[str, bool, str]], obj: Any) -> None:
    """Raise a one-line UserError for the first ``(key, ok, wanted)`` that is not ok."""
    for key, ok, want in checks:
        if not ok:
            raise UserError(f"{section}.{key} must be {want}, got {getattr(obj, key)!r}")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _import(target: str) -> Any:
    module, _, attrs = target.partition(":")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


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

    def __post_init__(self) -> None:
        check_ranges("optim", [
            ("lr", _finite(self.lr) and self.lr > 0, "a finite number > 0"),
            ("weight_decay", _finite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            ("betas", len(self.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("eps", _finite(self.eps) and self.eps > 0, "a finite number > 0"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", _finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("grad_clip", _finite(self.grad_clip) and self.grad_clip >= 0, "a finite number >= 0 (0: no clipping)"),
        ], self)


@dataclass
class TrainerConfig:
    """What Lightning's Trainer receives (strategy presets live in experiments/trainer/)."""

    max_steps: int = 1000  # optimizer steps; -1: no limit (max_epochs, max_time_minutes or a signal ends the run)
    max_epochs: int = -1  # -1: no limit
    max_time_minutes: Optional[float] = None  # stop (and checkpoint) after this wall time
    val_check_interval: int = 200  # optimizer steps between validations
    limit_val_batches: int = 50  # batches per validation; 0 disables validation
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | fsdp2 (ModelParallelStrategy + fully_shard)
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    accumulate_grad_batches: int = 1
    activation_checkpointing: bool = False  # recompute each residual block in backward (the one switch for it)
    log_every_n_steps: int = 10
    deterministic: bool = False
    progress_bar: bool = True
    num_threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    collective_timeout_minutes: float = 10.0  # a collective waiting longer (dead or hung rank) fails the job

    def __post_init__(self) -> None:
        check_ranges("trainer", [
            ("max_steps", self.max_steps == -1 or self.max_steps >= 1, ">= 1, or -1 for no limit"),
            ("max_epochs", self.max_epochs == -1 or self.max_epochs >= 1, ">= 1, or -1 for no limit"),
            ("max_time_minutes", self.max_time_minutes is None
             or (_finite(self.max_time_minutes) and self.max_time_minutes > 0), "a finite number > 0, or null"),
            ("val_check_interval", self.val_check_interval >= 1, ">= 1 (optimizer steps)"),
            ("limit_val_batches", self.limit_val_batches >= 0, ">= 0 (0: no validation)"),
            ("accelerator", self.accelerator in ACCELERATORS, f"one of {list(ACCELERATORS)}"),
            ("devices", self.devices >= 1, ">= 1"),
            ("num_nodes", self.num_nodes >= 1, ">= 1"),
            ("strategy", self.strategy in STRATEGIES, f"one of {list(STRATEGIES)}"),
            ("precision", self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
            ("accumulate_grad_batches", self.accumulate_grad_batches >= 1, ">= 1"),
            ("log_every_n_steps", self.log_every_n_steps >= 1, ">= 1"),
            ("num_threads", self.num_threads >= 0, ">= 0 (0: torch's default)"),
            ("collective_timeout_minutes", _finite(self.collective_timeout_minutes)
             and self.collective_timeout_minutes > 0, "a finite number > 0"),
        ], self)


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: str = "default"
    seed: int = 0
    resume: bool = False  # continue from <run dir>/checkpoints/last.ckpt (same as --resume)
    overwrite: bool = False  # allow a fresh run into a run directory that already has checkpoints
    init_from: Optional[str] = None  # load model weights (not optimiser state) from any model file (lcplm.models.io)
    save_every_n_steps: int = 200  # optimizer steps between periodic checkpoints (last.ckpt and step<N>.ckpt)

    def __post_init__(self) -> None:
        check_ranges("run", [
            ("out_dir", bool(self.out_dir), "a folder"),
            ("name", bool(self.name) and self.name not in (".", "..") and "/" not in self.name, "a name without '/'"),
            ("seed", self.seed >= 0, ">= 0"),
            ("init_from", self.init_from is None or bool(self.init_from), "a checkpoint path, or null"),
            ("save_every_n_steps", self.save_every_n_steps >= 1, ">= 1"),
        ], self)


@dataclass
class TaskConfig:
    name: str = "mlm"  # the LightningModule that trains the model (lcplm.registry.TASKS)

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise UserError(f"task.name must be one of {sorted(TASKS)}, got {self.name!r}")


@dataclass
class PretrainConfig:
    """``lcplm pretrain``: a model, a data source, an optimiser, a trainer and a run directory."""

    model: Any = field(default_factory=lambda: {"name": "bimamba"})  # dataclass picked by model.name
    data: Any = field(default_factory=lambda: {"name": "fasta"})  # dataclass picked by data.name
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)


def experiments_dir() -> Path:
    """The shipped ``experiments/`` folder: the copy packaged in an installed wheel
    (``lcplm/_experiments``, see pyproject.toml), else the source checkout's, beside the package."""
    package = Path(__file__).resolve().parent
    packaged = package / "_experiments"
    return packaged if packaged.is_dir() else package.parent / "experiments"


def find_experiment(path: str | Path, folder: str | None = None) -> Path:
    """The config file a user names on the command line.

    The path as given when that file exists (relative to the current directory). Otherwise the
    same file among the shipped experiments (:func:`experiments_dir`), so these work from any
    directory, also after a wheel install: ``experiments/pretrain/tiny.yaml``,
    ``pretrain/tiny.yaml``, ``pretrain/tiny`` and, with ``folder="pretrain"``, ``tiny``. Not
    found anywhere: a one-line UserError naming both places.
    """
    given = Path(path).expanduser()
    if given.is_file():
        return given
    root = experiments_dir()
    parts = given.parts[1:] if given.parts[:1] == ("experiments",) else given.parts
    if not given.is_absolute() and parts:
        for rel in [Path(*parts)] + ([Path(folder, *parts)] if folder and len(parts) == 1 else []):
            for candidate in (root / rel, root / rel.with_name(rel.name + ".yaml")):
                if candidate.is_file():
                    return candidate
        raise UserError(f"{path}: config file not found (here, nor among the shipped experiments in {root})")
    raise UserError(f"{path}: config file not found")


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
    if not isinstance(includes, (list, ListConfig)) or not all(isinstance(i, str) and i for i in includes):
        raise UserError(f"{path}: 'include' must be a file path or a list of file paths, got {includes!r}")
    merged = OmegaConf.create({})
    for inc in includes:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / str(inc), stack + (path,)))
    return OmegaConf.merge(merged, cfg)


def _validate_section(schema: type, raw: Any, where: str, file: str) -> Any:
    """Merge ``raw`` onto the dataclass defaults; return a dataclass instance (its
    ``__post_init__`` checks ranges; ``file`` prefixes those messages)."""
    try:
        base = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, raw if raw is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: {msg}" + (f" (key '{key}')" if key and key not in msg else "")) from None
    except UserError as e:
        raise UserError(f"{file}: {e}") from None


def _check_finite(obj: Any, key: str, file: str) -> None:
    """No NaN or inf in any number of any section (a NaN passes every range comparison as False,
    an inf is never a sensible setting)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise UserError(f"{file}: {key} must be a finite number, got {obj}")
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _check_finite(getattr(obj, f.name), f"{key}.{f.name}" if key else f.name, file)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{key}.{i}", file)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_finite(v, f"{key}.{k}", file)


def validate(schema: type, cfg: DictConfig | dict, where: str = "config") -> Any:
    """Validate a raw config against ``schema``, resolving polymorphic sections by ``name``."""
    if isinstance(cfg, dict):
        raw = dict(cfg)
    else:
        raw = OmegaConf.to_container(OmegaConf.create(cfg), resolve=False) if isinstance(cfg, DictConfig) else cfg
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of config sections, got {type(raw).__name__}")
    poly = {}
    for f in dataclasses.fields(schema):
        if f.name in SECTION_SCHEMAS and f.name in raw:
            poly[f.name] = raw.pop(f.name)
    obj = _validate_section(schema, raw, where, where)
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
        value = _validate_section(sub_schema, sub, f"{where}: {section}", where)
        setattr(obj, section, value)
    # sections that were not given at all still get their dataclass defaults
    for section in SECTION_SCHEMAS:
        if hasattr(obj, section) and isinstance(getattr(obj, section), dict):
            sub = getattr(obj, section)
            name = sub.get("name")
            if name in SECTION_SCHEMAS[section]:
                setattr(obj, section, _validate_section(_import(SECTION_SCHEMAS[section][name]), sub, where, where))
    _check_finite(obj, "", where)
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
    if schema is PretrainConfig:
        cfg.pop(RUN_HISTORY_KEY, None)  # a run directory's record of its segments, not a setting
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
