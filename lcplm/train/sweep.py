"""Sweeps: expand a grid (or list) of overrides into runs; launch them; summarise (the command is
``lcplm sweep``, :mod:`lcplm.cli.sweep`).

A sweep file (``experiments/sweeps/*.yaml``, schema :class:`SweepConfig`) names an experiment
and the overrides to vary. Points are the cartesian product of ``grid`` values, times each
entry of ``points`` (either may be absent). Every point's config is validated against the
experiment before anything is launched. The sweep directory ``<out_dir>/<name>/`` holds:

  sweep.json            the points: index, name, overrides, run directory
  points/<point>.yaml   each point's resolved config (what its run trains)
  <point>/              each point's run directory (config.yaml, checkpoints/, tb/, results.json)
  status/<point>.json   state of each point: running | done | failed | preempted
  summary.md, .json     the table across points (``lcplm sweep --summary DIR`` rewrites it)
  array.sbatch          the generated SLURM array script (launcher=slurm)

Launching again continues the sweep: finished points are skipped and interrupted ones resume
from their ``last.ckpt``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lcplm.errors import UserError
from lcplm.files import atomic_write_text

LAUNCHERS = ("local", "slurm")
RESERVED_KEYS = ("run.out_dir", "run.name", "run.resume", "run.overwrite")


@dataclass
class SweepConfig:
    """A sweep file: the experiment, what varies, where runs go, how they are launched."""

    experiment: str = "???"  # experiment YAML, relative to the sweep file
    name: str = "???"  # sweep name: runs go to <out_dir>/<name>/<point>/
    out_dir: str = "runs/sweeps"  # relative to the working directory
    grid: dict[str, list[Any]] = field(default_factory=dict)  # key -> values; all combinations
    points: list[dict[str, Any]] = field(default_factory=list)  # explicit override sets (x grid)
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every point
    launcher: str = "local"  # local (sequential, here) | slurm (one array task per point)
    slurm: Optional[str] = None  # resources YAML (experiments/slurm/), relative to the sweep file


@dataclass
class Point:
    index: int
    name: str
    overrides: dict[str, Any]  # the values this point varies
    run_dir: str
    config: str  # points/<name>.yaml inside the sweep directory


def format_override(key: str, value: Any) -> str:
    """``key=value`` that OmegaConf's dotlist parses back to exactly ``value``."""
    if isinstance(value, str):
        return f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
    return f"{key}={json.dumps(value)}"


def _slug(overrides: dict[str, Any]) -> str:
    parts = []
    for k, v in overrides.items():
        leaf = k.rsplit(".", 1)[-1]
        parts.append(f"{leaf}{v}")
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))[:80]


def expand(cfg: SweepConfig, where: str = "sweep") -> list[dict[str, Any]]:
    """The override dict of each point: ``points`` entries x ``grid`` product, in order."""
    for key, values in cfg.grid.items():
        if not values:
            raise UserError(f"{where}: grid.{key} has no values")
    listed = cfg.points or [{}]
    keys = list(cfg.grid)
    combos = list(itertools.product(*(cfg.grid[k] for k in keys))) if keys else [()]
    out = []
    for entry in listed:
        for combo in combos:
            point = dict(entry)
            for k, v in zip(keys, combo):
                if k in point:
                    raise UserError(f"{where}: key {k!r} is in both grid and points")
                point[k] = v
            out.append(point)
    for point in out:
        for k in point:
            if k in RESERVED_KEYS:
                raise UserError(f"{where}: {k} is set by the sweep for each point; it cannot be swept")
    seen = set()
    for point in out:
        key = json.dumps(point, sort_keys=True)
        if key in seen:
            raise UserError(f"{where}: duplicate point {point}")
        seen.add(key)
    return out


def load_sweep(path: str | Path, cli_overrides: list[str] | None = None) -> SweepConfig:
    from lcplm.config import load_config

    cfg = load_config(path, None, schema=SweepConfig)
    if cfg.launcher not in LAUNCHERS:
        raise UserError(f"{path}: launcher must be one of {list(LAUNCHERS)}, got {cfg.launcher!r}")
    if cfg.launcher == "slurm" and not cfg.slurm:
        raise UserError(f"{path}: launcher=slurm needs slurm: <resources YAML> (see experiments/slurm/)")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", cfg.name):
        raise UserError(f"{path}: name must be letters, digits, '.', '_' or '-', got {cfg.name!r}")
    base = Path(path).resolve().parent
    cfg.experiment = str((base / cfg.experiment).resolve())
    if cfg.slurm:
        cfg.slurm = str((base / cfg.slurm).resolve())
    for o in cli_overrides or []:
        key, sep, _ = o.partition("=")
        if not sep or not key:
            raise UserError(f"override {o!r} is not of the form key=value")
        if key in cfg.grid or any(key in p for p in cfg.points):
            raise UserError(f"override {key} is swept by {path}; it cannot be overridden for all points")
        if key in RESERVED_KEYS:
            raise UserError(f"override {key} is set by the sweep for each point")
    return cfg


def plan_points(cfg: SweepConfig, where: str, cli_overrides: list[str] | None = None) -> tuple[Path, list[tuple[Point, Any]]]:
    """Validate every point's config (nothing launched yet); returns the sweep dir and points."""
    from lcplm.config import PretrainConfig, load_config

    sweep_dir = Path(cfg.out_dir) / cfg.name
    shared = [format_override(k, v) for k, v in cfg.overrides.items()] + list(cli_overrides or [])
    planned: list[tuple[Point, Any]] = []
    names: set[str] = set()
    for i, ov in enumerate(expand(cfg, where)):
        name = f"{i:03d}" + (f"-{_slug(ov)}" if ov else "")
        while name in names:  # slugs are truncated; keep names unique
            name += "_"
        names.add(name)
        run = [format_override("run.out_dir", str(sweep_dir)), format_override("run.name", name)]
        overrides = shared + [format_override(k, v) for k, v in ov.items()] + run
        try:
            pcfg = load_config(cfg.experiment, overrides, schema=PretrainConfig)
        except UserError as e:
            raise UserError(f"{where}: point {i} {ov}: {e}") from None
        planned.append((Point(i, name, ov, str(sweep_dir / name), f"points/{name}.yaml"), pcfg))
    return sweep_dir, planned


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_sweep_dir(sweep_dir: Path, cfg: SweepConfig, planned: list[tuple[Point, Any]]) -> list[Point]:
    """Write sweep.json and each point's resolved config; refuse to mix two different sweeps."""
    from lcplm.config import to_yaml

    manifest = {
        "name": cfg.name,
        "experiment": cfg.experiment,
        "points": [p.__dict__ for p, _ in planned],
    }
    mpath = sweep_dir / "sweep.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        if [(p["name"], p["overrides"]) for p in old.get("points", [])] != [(p.name, p.overrides) for p, _ in planned]:
            raise UserError(
                f"{sweep_dir} holds a different sweep (other points); give this sweep another name "
                "or remove that directory"
            )
    for p, pcfg in planned:
        path = sweep_dir / p.config
        text = to_yaml(pcfg)
        if path.is_file() and path.read_text() != text and (Path(p.run_dir) / "checkpoints").is_dir():
            raise UserError(f"{path}: point {p.name} already ran with another config; use another sweep name")
        _write(path, text)
    _write(mpath, json.dumps(manifest, indent=2) + "\n")
    return [p for p, _ in planned]


def read_points(sweep_dir: Path) -> list[Point]:
    mpath = Path(sweep_dir) / "sweep.json"
    if not mpath.is_file():
        raise UserError(f"{sweep_dir}: not a sweep directory (no sweep.json)")
    try:
        return [Point(**p) for p in json.loads(mpath.read_text())["points"]]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{mpath}: malformed sweep manifest ({e})") from None


# -- one point --------------------------------------------------------------------------

def _rank_from_env() -> int:
    return max(int(os.environ.get("LOCAL_RANK", "0") or 0), int(os.environ.get("SLURM_PROCID", "0") or 0),
               int(os.environ.get("NODE_RANK", "0") or 0))


def _status_path(sweep_dir: Path, point: Point) -> Path:
    return Path(sweep_dir) / "status" / f"{point.name}.json"


def _set_status(sweep_dir: Path, point: Point, state: str, **extra: Any) -> None:
    if _rank_from_env() != 0:
        return
    rec = {"state": state, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        rec["slurm_job"] = job
        rec["slurm_restarts"] = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    _write(_status_path(sweep_dir, point), json.dumps(rec) + "\n")


def run_point(sweep_dir: str | Path, index: int) -> int:
    """Train point ``index`` of the sweep (resuming from its last.ckpt if it has one)."""
    from lcplm.config import PretrainConfig, load_config
    from lcplm.train.run import train
    from lcplm.train.run_dir import resume_checkpoint

    sweep_dir = Path(sweep_dir)
    points = read_points(sweep_dir)
    if not 0 <= index < len(points):
        raise UserError(f"{sweep_dir}: no point {index} (the sweep has {len(points)})")
    point = points[index]
    run_dir = Path(point.run_dir)
    if (run_dir / "results.json").is_file() and _state(sweep_dir, point) == "done":
        print(f"point {point.name}: already done ({run_dir / 'results.json'})")
        return 0
    cfg = load_config(sweep_dir / point.config, schema=PretrainConfig)
    cfg.run.resume = resume_checkpoint(run_dir) is not None
    cfg.run.overwrite = not cfg.run.resume  # a point that never saved a checkpoint starts again
    _set_status(sweep_dir, point, "running", resumed=cfg.run.resume)
    try:
        results = train(cfg)
    except SystemExit as e:
        _set_status(sweep_dir, point, "preempted", exit_code=e.code)
        raise
    except BaseException as e:
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        _set_status(sweep_dir, point, "failed", error=f"{type(e).__name__}: {msg}")
        if isinstance(e, FloatingPointError):  # the NaN/inf guard: a one-line user-facing error
            raise UserError(msg) from None
        raise
    val_loss = results.get("val_loss")
    ok = val_loss is None or math.isfinite(val_loss)  # None: the point has no validation data
    _set_status(sweep_dir, point, "done" if ok else "failed", **({} if ok else {"error": "val_loss is not finite"}))
    return 0 if ok else 1


def _state(sweep_dir: Path, point: Point) -> str:
    p = _status_path(sweep_dir, point)
    if not p.is_file():
        return "pending"
    try:
        return json.loads(p.read_text()).get("state", "unknown")
    except ValueError:
        return "unknown"


def point_done(sweep_dir: str | Path, point: Point) -> bool:
    """The point finished: its status says done and its results.json exists (what relaunches skip)."""
    return _state(Path(sweep_dir), point) == "done" and (Path(point.run_dir) / "results.json").is_file()


# -- summary ----------------------------------------------------------------------------

SUMMARY_COLUMNS = ("global_step", "val_loss", "val_perplexity", "val_masked_acc", "unigram_loss", "train_time_s")


def summarize(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per point (its overrides, state and results.json numbers); writes summary.md/.json."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for p in read_points(sweep_dir):
        row: dict[str, Any] = {"point": p.name, **{k: v for k, v in p.overrides.items()}, "state": _state(sweep_dir, p)}
        res_path = Path(p.run_dir) / "results.json"
        if res_path.is_file():
            try:
                res = json.loads(res_path.read_text())
            except ValueError:
                res = {}
            for c in SUMMARY_COLUMNS:
                if c in res:
                    row[c] = res[c]
        if row["state"] == "failed":
            try:
                row["error"] = json.loads(_status_path(sweep_dir, p).read_text()).get("error", "")
            except (OSError, ValueError):
                pass
        rows.append(row)
    _write(sweep_dir / "summary.json", json.dumps(rows, indent=2) + "\n")
    _write(sweep_dir / "summary.md", format_table(rows) + "\n")
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return "" if v is None else str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table; columns in first-seen order across rows."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


# -- launchers --------------------------------------------------------------------------

def launch_local(sweep_dir: Path, points: list[Point]) -> int:
    """Run the points one after another, each in its own process (DDP relaunches need that)."""
    failed = 0
    for p in points:
        if _state(sweep_dir, p) == "done" and (Path(p.run_dir) / "results.json").is_file():
            print(f"[{p.index + 1}/{len(points)}] {p.name}: done already")
            continue
        log = sweep_dir / "logs" / f"{p.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{p.index + 1}/{len(points)}] {p.name}: running (log {log})", flush=True)
        with open(log, "a") as f:
            r = subprocess.run(
                [sys.executable, "-m", "lcplm", "sweep", "--run-point", str(sweep_dir), str(p.index)],
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        if r.returncode != 0:
            failed += 1
            print(f"[{p.index + 1}/{len(points)}] {p.name}: FAILED (exit {r.returncode}; see {log})", flush=True)
    return failed


def launch_slurm(cfg: SweepConfig, sweep_dir: Path, planned: list[tuple[Point, Any]], wait: bool, dry_run: bool) -> str | None:
    from lcplm.train.slurm import check_resources, load_slurm_config, render_array_script, submit

    slurm = load_slurm_config(cfg.slurm)
    for p, pcfg in planned:
        check_resources(slurm, pcfg.trainer, f"{cfg.slurm} vs point {p.name}")
    todo = [p.index for p, _ in planned if not (_state(sweep_dir, p) == "done" and (Path(p.run_dir) / "results.json").is_file())]
    if not todo:
        return None
    script = render_array_script(slurm, sweep_dir, f"lcplm-{cfg.name}", todo)
    if dry_run:
        print(script)
        return None
    path = sweep_dir / "array.sbatch"
    _write(path, script)
    (sweep_dir / "slurm").mkdir(exist_ok=True)
    return submit(path, wait=wait)
