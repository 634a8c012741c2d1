"""``lcplm sweep SWEEP [key=value ...] [--launcher local|slurm] [--dry-run] [--wait]`` and
``lcplm sweep --summary SWEEP_DIR``: run a sweep of :mod:`lcplm.train.sweep` (its directory layout is
described there). SWEEP is a YAML file or the name of a shipped one (``tiny_lr`` =
``experiments/sweeps/tiny_lr.yaml``). ``--run-point SWEEP_DIR INDEX`` (hidden) trains one point:
what a local launch and each SLURM array task run.
"""

from __future__ import annotations

import argparse

from lcplm.config import find_experiment, split_file_and_overrides
from lcplm.errors import UserError
from lcplm.train.sweep import (
    LAUNCHERS,
    format_override,
    format_table,
    launch_local,
    launch_slurm,
    load_sweep,
    plan_points,
    run_point,
    summarize,
    write_sweep_dir,
)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm sweep",
        description="Expand a sweep file into runs and launch them (locally, one after another, or as a "
        "SLURM array); or print a sweep's summary table.",
    )
    p.add_argument("args", nargs="*", metavar="SWEEP.yaml [key=value ...]", help="overrides apply to every point")
    p.add_argument("--launcher", choices=LAUNCHERS, help="override the sweep file's launcher")
    p.add_argument("--dry-run", action="store_true", help="validate and list the points (and the sbatch script); launch nothing")
    p.add_argument("--wait", action="store_true", help="launcher=slurm: wait for every array task, then print the summary")
    p.add_argument("--summary", metavar="SWEEP_DIR", help="print (and rewrite) the summary table of a sweep directory")
    p.add_argument("--run-point", nargs=2, metavar=("SWEEP_DIR", "INDEX"), help=argparse.SUPPRESS)
    ns = p.parse_args(argv)

    if ns.run_point:
        try:
            index = int(ns.run_point[1])
        except ValueError:
            raise UserError(f"--run-point: INDEX must be an integer, got {ns.run_point[1]!r}") from None
        return run_point(ns.run_point[0], index)
    if ns.summary:
        print(format_table(summarize(ns.summary)))
        return 0
    path, overrides = split_file_and_overrides(ns.args, "SWEEP.yaml")
    if path is None:
        raise UserError("give a sweep file: lcplm sweep experiments/sweeps/<name>.yaml [key=value ...]")
    path = str(find_experiment(path, "sweeps"))
    cfg = load_sweep(path, overrides)
    if ns.launcher:
        cfg.launcher = ns.launcher
        if cfg.launcher == "slurm" and not cfg.slurm:
            raise UserError(f"{path}: --launcher slurm needs slurm: <resources YAML> in the sweep file")
    sweep_dir, planned = plan_points(cfg, path, overrides)
    print(f"sweep {cfg.name}: {len(planned)} points -> {sweep_dir}/")
    for pt, _ in planned:
        print(f"  {pt.name}: {' '.join(format_override(k, v) for k, v in pt.overrides.items()) or '(experiment as is)'}")
    if ns.dry_run:
        if cfg.launcher == "slurm":
            launch_slurm(cfg, sweep_dir, planned, wait=False, dry_run=True)
        return 0
    points = write_sweep_dir(sweep_dir, cfg, planned)
    if cfg.launcher == "local":
        failed = launch_local(sweep_dir, points)
        print(format_table(summarize(sweep_dir)))
        return 1 if failed else 0
    job = launch_slurm(cfg, sweep_dir, planned, wait=ns.wait, dry_run=False)
    if job is None:
        print("every point is done already")
    elif not ns.wait:
        print(f"submitted SLURM array job {job}; table: lcplm sweep --summary {sweep_dir}")
        return 0
    rows = summarize(sweep_dir)
    print(format_table(rows))
    return 0 if all(r["state"] == "done" for r in rows) else 1
