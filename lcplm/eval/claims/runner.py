"""``lcplm reproduce``: plan, train, evaluate and test the claims of one tier; write the report.

Layout of ``<out>`` (``runs/claims`` for the cpu tier, ``runs/claims_gpu``, ``runs/claims_smoke``)::

    arms/<arm>/            one sweep per arm (lcplm.train.sweep): sweep.json, points/, status/, logs/,
                           <index>-seed<k>/ the run directory of each seed (results.json, checkpoints/)
    evals/lm/<arm>/<point>-<settings>.json      eval-lm of one run (cached)
    evals/downstream/<claim>/                   eval-downstream of a claim's runs (results.json, inputs.json)
    claims/<claim>.json    the test's numbers, p-values and verdict
    figures/<claim>.png
    REPORT.md

Resuming is the default: a run whose status is done and whose results.json exists is not trained
again (an interrupted one resumes from its last.ckpt); an evaluation whose file matches the run's
checkpoint and the settings is not repeated; tests and the report are always rebuilt from the files.
Every claim of the tier appears in the report: those whose runs are missing say "not tested".
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lcplm.errors import UserError
from lcplm.eval.claims import spec, verdicts
from lcplm.files import atomic_write_text
from lcplm.train import sweep

DEFAULT_OUT = {"cpu": "runs/claims", "gpu": "runs/claims_gpu", "smoke": "runs/claims_smoke"}


@dataclass
class ArmPlan:
    """One model to train: what it is (experiment + overrides) and every seed any claim asks for."""

    name: str
    experiment: str  # absolute path
    overrides: dict[str, Any]  # tier + arm (+ smoke) overrides, in that order of precedence
    seeds: list[int]  # union over the tier's claims
    relative_step_cost: Optional[float]
    files: list[str]  # claim files that declare it
    launcher: str
    slurm: Optional[str]
    sweep_cfg: Optional[sweep.SweepConfig] = None
    sweep_dir: Optional[Path] = None
    planned: list = field(default_factory=list)  # [(Point, PretrainConfig)]

    def point(self, seed: int):
        for p, cfg in self.planned:
            if p.overrides.get("run.seed") == seed:
                return p, cfg
        raise KeyError(seed)


@dataclass
class ClaimArm:
    """An arm as one claim uses it: its seeds, and its side (group) and size index in the test."""

    seeds: list[int]
    group: str
    size: Optional[int]


@dataclass
class ClaimPlan:
    claim: spec.ClaimConfig
    tier: spec.TierConfig
    arms: dict[str, ClaimArm]


@dataclass
class Plan:
    tier: str
    out: Path
    claims: dict[str, ClaimPlan]  # every claim with this tier (the report shows them all)
    selected: list[str]  # the claims to run now
    arms: dict[str, ArmPlan]


# ------------------------------------------------------------------------------- planning


def _resolve(base: str, rel: Optional[str]) -> Optional[str]:
    return None if not rel else str((Path(base).parent / rel).resolve())


def _apply_smoke(tier: spec.TierConfig, smoke: spec.SmokeConfig) -> spec.TierConfig:
    t = copy.deepcopy(tier)
    for a in t.arms:
        a.seeds = sorted(a.seeds)[: smoke.max_seeds]
    t.lm_eval = dataclasses.replace(t.lm_eval, **smoke.lm_eval)
    if t.downstream.enabled and smoke.downstream_config:
        t.downstream.config = smoke.downstream_config
        t.downstream.overrides = list(smoke.downstream_overrides)
    return t


def plan(tier: str, names: Optional[list[str]] = None, out: Optional[str] = None,
         claims_dir: Path = spec.CLAIMS_DIR, smoke_file: Path = spec.SMOKE_FILE) -> Plan:
    """Validate every claim file and every run's config of the tier; nothing runs yet."""
    if tier not in spec.TIERS:
        raise UserError(f"--tier must be one of {list(spec.TIERS)}, got {tier!r}")
    all_claims = spec.load_claims(None, claims_dir)
    spec.load_claims(names, claims_dir)  # an unknown name is one line before anything else
    smoke = spec.load_smoke(smoke_file) if tier == "smoke" else None
    base_tier = smoke.base_tier if smoke else tier
    out_dir = Path(out or DEFAULT_OUT[tier]).resolve()
    claims: dict[str, ClaimPlan] = {}
    arms: dict[str, ArmPlan] = {}
    for c in all_claims:
        if base_tier not in c.tiers:
            if names and c.name in names:
                raise UserError(f"{c.path}: claim {c.name!r} has no {base_tier} tier")
            continue
        tc = c.tiers[base_tier]
        if smoke:
            tc = _apply_smoke(tc, smoke)
        needs: dict[str, ClaimArm] = {}
        for a in tc.arms:
            overrides = {**tc.overrides, **a.overrides, **(smoke.arm_overrides if smoke else {})}
            experiment = _resolve(c.path, a.experiment)
            key = (experiment, json.dumps(overrides, sort_keys=True, default=str), tc.launcher, _resolve(c.path, tc.slurm))
            seen = arms.get(a.name)
            if seen is None:
                arms[a.name] = ArmPlan(a.name, experiment, overrides, sorted(a.seeds), a.relative_step_cost,
                                       [c.path], tc.launcher, _resolve(c.path, tc.slurm))
            else:
                if (seen.experiment, json.dumps(seen.overrides, sort_keys=True, default=str), seen.launcher, seen.slurm) != key:
                    raise UserError(f"arm {a.name!r} is declared differently in {seen.files[0]} and {c.path} "
                                    f"(experiment, overrides and launcher must agree; or give it another name)")
                seen.seeds = sorted(set(seen.seeds) | set(a.seeds))
                seen.files.append(c.path)
            needs[a.name] = ClaimArm(sorted(a.seeds), a.group, a.size)
        claims[c.name] = ClaimPlan(c, tc, needs)
    selected = list(names) if names else list(claims)
    for arm in arms.values():
        arm.sweep_cfg = sweep.SweepConfig(
            experiment=arm.experiment, name=arm.name, out_dir=str(out_dir / "arms"), grid={},
            points=[{"run.seed": s} for s in arm.seeds], overrides=arm.overrides, launcher=arm.launcher, slurm=arm.slurm,
        )
        arm.sweep_dir, arm.planned = sweep.plan_points(arm.sweep_cfg, f"arm {arm.name} ({', '.join(Path(f).name for f in arm.files)})")
    return Plan(tier, out_dir, claims, selected, arms)


def estimate_seconds(p: Plan, names: Optional[list[str]] = None) -> Optional[dict[str, float]]:
    """Estimated seconds of the runs the named claims need (shared runs once) plus their
    evaluations, from the tiers' ``step_seconds`` x each arm's ``relative_step_cost`` x steps;
    None when the tier states no step time."""
    names = names or p.selected
    runs: set[tuple[str, int]] = set()
    out = {"train": 0.0, "overhead": 0.0, "eval_lm": 0.0, "downstream": 0.0}
    for n in names:
        cp = p.claims[n]
        if cp.tier.step_seconds is None:
            return None
        for arm_name, ca in cp.arms.items():
            arm = p.arms[arm_name]
            for s in ca.seeds:
                if (arm_name, s) in runs:
                    continue
                runs.add((arm_name, s))
                _, cfg = arm.point(s)
                out["train"] += cp.tier.step_seconds * (arm.relative_step_cost or 1.0) * cfg.trainer.max_steps
                out["overhead"] += cp.tier.overhead_seconds_per_run
                out["eval_lm"] += cp.tier.eval_seconds_per_run if cp.tier.lm_eval.enabled else 0.0
        out["downstream"] += cp.tier.downstream_seconds if cp.tier.downstream.enabled else 0.0
    out["total"] = sum(out.values())
    return out


def check_data(p: Plan) -> None:
    """Every FASTA the selected claims train and evaluate on exists (one line naming what is missing)."""
    from lcplm.data.cache import resolve_named_fasta

    seen = set()
    for n in p.selected:
        cp = p.claims[n]
        paths = [cp.tier.lm_eval.fasta] if cp.tier.lm_eval.enabled else []
        for arm_name in cp.arms:
            for _, cfg in p.arms[arm_name].planned:
                if getattr(cfg.data, "name", None) == "fasta":
                    paths += cfg.data.paths()
        for path in paths:
            if path in seen:
                continue
            seen.add(path)
            if not resolve_named_fasta(path).exists():
                raise UserError(f"{path}: FASTA not found (claim {n})")


# -------------------------------------------------------------------------------- training


def queued_job(arm: ArmPlan) -> Optional[str]:
    """The SLURM array job this arm last submitted, while ``squeue`` still lists it."""
    sub = _read_json(arm.sweep_dir / "submitted.json")
    if not sub:
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-j", str(sub["job"]), "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(sub["job"]) if r.returncode == 0 and r.stdout.strip() else None


def launch_points(arm: ArmPlan, points: list, dry_run: bool = False) -> int:
    """Train ``points`` of an arm (finished ones are skipped); returns the number that failed.
    Local: one after another, here. SLURM: one array job, not waited for (run ``lcplm reproduce``
    again when it has ended; an arm whose job is still queued is not submitted twice).
    The seam tests replace with fast fake training."""
    if arm.launcher == "slurm":
        planned = [(p, cfg) for p, cfg in arm.planned if p in points]
        job = sweep.launch_slurm(arm.sweep_cfg, arm.sweep_dir, planned, wait=False, dry_run=dry_run)
        if job is not None:
            atomic_write_text(arm.sweep_dir / "submitted.json", json.dumps({"job": job, "points": [p.name for p in points]}) + "\n")
        return 0
    return sweep.launch_local(arm.sweep_dir, points)


def train(p: Plan, log: Callable[[str], None], dry_run: bool = False) -> dict[str, int]:
    """Train every run the selected claims need; returns failures per arm."""
    need: dict[str, set[int]] = {}
    for n in p.selected:
        for arm_name, ca in p.claims[n].arms.items():
            need.setdefault(arm_name, set()).update(ca.seeds)
    failures = {}
    for arm_name, seeds in need.items():
        arm = p.arms[arm_name]
        if not dry_run:
            sweep.write_sweep_dir(arm.sweep_dir, arm.sweep_cfg, arm.planned)
        points = [pt for pt, _ in arm.planned if pt.overrides["run.seed"] in seeds]
        todo = [pt for pt in points if not sweep.point_done(arm.sweep_dir, pt)]
        if not todo:
            log(f"arm {arm_name}: {len(points)} run(s) done already")
            continue
        job = queued_job(arm) if arm.launcher == "slurm" and not dry_run else None
        if job:
            log(f"arm {arm_name}: SLURM job {job} is still queued or running; rerun `lcplm reproduce` when it has ended")
            continue
        log(f"arm {arm_name}: training {len(todo)} of {len(points)} run(s) ({arm.launcher})")
        failed = launch_points(arm, todo, dry_run)
        if arm.launcher == "slurm" and not dry_run:
            log(f"arm {arm_name}: submitted; rerun `lcplm reproduce --tier {p.tier}` (on a GPU node) to evaluate when it has ended")
        if failed:
            failures[arm_name] = failed
            log(f"arm {arm_name}: {failed} run(s) FAILED (logs in {arm.sweep_dir / 'logs'})")
    return failures


# ------------------------------------------------------------------------------ evaluation


def _key(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _stamp(path: Path) -> Optional[dict]:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_label(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def _checkpoint(point) -> Path:
    return Path(point.run_dir) / "checkpoints" / "last.ckpt"


def lm_eval_path(p: Plan, arm: ArmPlan, point, settings: spec.LMEvalConfig) -> Path:
    return p.out / "evals" / "lm" / arm.name / f"{point.name}-{_key(dataclasses.asdict(settings))}.json"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached_lm(p: Plan, arm: ArmPlan, point, settings: spec.LMEvalConfig) -> Optional[dict]:
    """The cached eval-lm result of a run, if it was computed for its current checkpoint and these settings."""
    data = _read_json(lm_eval_path(p, arm, point, settings))
    if data is None or data.get("checkpoint_stamp") != _stamp(_checkpoint(point)):
        return None
    return data


def evaluate_lm(p: Plan, log: Callable[[str], None]) -> None:
    from lcplm.eval import lm

    for n in p.selected:
        cp = p.claims[n]
        s = cp.tier.lm_eval
        if not s.enabled:
            continue
        for arm_name, ca in cp.arms.items():
            arm = p.arms[arm_name]
            for seed in ca.seeds:
                point, _ = arm.point(seed)
                if not sweep.point_done(arm.sweep_dir, point) or cached_lm(p, arm, point, s) is not None:
                    continue
                label = run_label(arm_name, seed)
                result = lm.evaluate([f"{label}={_checkpoint(point)}"], s.fasta, s.bins, s.per_bin, s.seed, s.mask_prob,
                                     s.max_tokens, s.bootstrap, s.device, log=lambda line: log(f"  {line}"))
                result["checkpoint_stamp"] = _stamp(_checkpoint(point))
                atomic_write_text(lm_eval_path(p, arm, point, s), json.dumps(result) + "\n")


def downstream_dir(p: Plan, name: str) -> Path:
    return p.out / "evals" / "downstream" / name


def _downstream_inputs(p: Plan, cp: ClaimPlan) -> tuple[Any, dict] | tuple[None, None]:
    """The downstream config of a claim with its runs as checkpoints, and what identifies the result;
    (None, None) while a run is unfinished."""
    from lcplm.config import load_config
    from lcplm.eval.downstream import DownstreamConfig

    d = cp.tier.downstream
    checkpoints, stamps = [], {}
    for arm_name, ca in cp.arms.items():
        arm = p.arms[arm_name]
        for seed in ca.seeds:
            point, _ = arm.point(seed)
            if not sweep.point_done(arm.sweep_dir, point):
                return None, None
            label = run_label(arm_name, seed)
            checkpoints.append(f"{label}={_checkpoint(point)}")
            stamps[label] = _stamp(_checkpoint(point))
    cfg = load_config(_resolve(cp.claim.path, d.config) if not Path(d.config).is_absolute() else d.config,
                      list(d.overrides), schema=DownstreamConfig)
    cfg.checkpoints = checkpoints
    cfg.name = cp.claim.name
    cfg.out_dir = str(p.out / "evals" / "downstream")
    return cfg, {"config": dataclasses.asdict(cfg), "checkpoints": stamps}


def cached_downstream(p: Plan, cp: ClaimPlan) -> Optional[list[dict]]:
    cfg, inputs = _downstream_inputs(p, cp)
    if cfg is None:
        return None
    d = downstream_dir(p, cp.claim.name)
    if _read_json(d / "inputs.json") != json.loads(json.dumps(inputs, default=str)):
        return None
    res = _read_json(d / "results.json")
    return None if res is None else res["rows"]


def evaluate_downstream(p: Plan, log: Callable[[str], None]) -> None:
    from lcplm.eval.downstream import evaluate

    for n in p.selected:
        cp = p.claims[n]
        if not cp.tier.downstream.enabled or cached_downstream(p, cp) is not None:
            continue
        cfg, inputs = _downstream_inputs(p, cp)
        if cfg is None:
            log(f"claim {n}: eval-downstream waits for unfinished runs")
            continue
        log(f"claim {n}: eval-downstream of {len(cfg.checkpoints)} checkpoints")
        evaluate(cfg, log=lambda line: log(f"  {line}"))
        atomic_write_text(downstream_dir(p, n) / "inputs.json", json.dumps(inputs, default=str) + "\n")


# ---------------------------------------------------------------------------------- tests


def run_data(p: Plan, cp: ClaimPlan) -> list[verdicts.RunData]:
    out = []
    for arm_name, ca in cp.arms.items():
        arm = p.arms[arm_name]
        for seed in ca.seeds:
            point, cfg = arm.point(seed)
            if not sweep.point_done(arm.sweep_dir, point):
                continue
            res = _read_json(Path(point.run_dir) / "results.json") or {}
            lm = cached_lm(p, arm, point, cp.tier.lm_eval) if cp.tier.lm_eval.enabled else None
            out.append(verdicts.RunData(arm_name, ca.group, seed, ca.size, run_label(arm_name, seed),
                                        res.get("n_parameters"), res.get("global_step"), cfg.trainer.max_steps,
                                        res.get("train_time_s"), lm))
    return out


def missing_runs(p: Plan, cp: ClaimPlan) -> list[str]:
    out = []
    for arm_name, ca in cp.arms.items():
        arm = p.arms[arm_name]
        out += [run_label(arm_name, s) for s in ca.seeds if not sweep.point_done(arm.sweep_dir, arm.point(s)[0])]
    return out


def test_claims(p: Plan) -> dict[str, verdicts.Outcome]:
    outcomes = {}
    for name, cp in p.claims.items():
        missing = missing_runs(p, cp)
        if missing:
            o = verdicts.not_tested(f"runs not finished: {', '.join(missing)}", alpha=cp.claim.test.alpha)
        else:
            rows = cached_downstream(p, cp) if cp.tier.downstream.enabled else None
            o = verdicts.evaluate_claim(cp.claim.test.kind, run_data(p, cp), cp.claim.test, rows)
        outcomes[name] = o
        atomic_write_text(p.out / "claims" / f"{name}.json",
                          json.dumps({"claim": name, "tier": p.tier, **o.as_dict()}, indent=1, default=str) + "\n")
    return outcomes


# -------------------------------------------------------------------------------- the command


def git_revision() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=spec.REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=spec.REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + ("+dirty" if dirty else "") if r.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def reproduce(tier: str = "cpu", names: Optional[list[str]] = None, out: Optional[str] = None, dry_run: bool = False,
              report_only: bool = False, claims_dir: Path = spec.CLAIMS_DIR, smoke_file: Path = spec.SMOKE_FILE,
              log: Callable[[str], None] = print) -> dict[str, verdicts.Outcome]:
    """Plan, train, evaluate, test and report (see the module docstring)."""
    from lcplm.eval.claims import report

    t0 = time.time()
    p = plan(tier, names, out, claims_dir, smoke_file)
    est = estimate_seconds(p) if tier != "smoke" else None  # the tiers' estimates are for their own step counts
    n_runs = len({(a, s) for n in p.selected for a, ca in p.claims[n].arms.items() for s in ca.seeds})
    log(f"tier {tier}: claims {', '.join(p.selected)}; {n_runs} runs of {len(p.arms)} arms planned -> {p.out}"
        + (f"; estimated {est['total'] / 60:.0f} min (training {est['train'] / 60:.0f})" if est else ""))
    if dry_run:
        for arm in p.arms.values():
            _, cfg = arm.planned[0]
            log(f"  {arm.name}: seeds {arm.seeds}, {cfg.trainer.max_steps} steps x {getattr(cfg.data, 'max_tokens', '?')} tokens "
                f"({Path(arm.experiment).name}{', ' + str(arm.relative_step_cost) + 'x tiny step' if arm.relative_step_cost else ''})")
        if any(a.launcher == "slurm" for a in p.arms.values()):
            train(p, log, dry_run=True)
        return {}
    if not report_only:
        check_data(p)
        train(p, log)
        evaluate_lm(p, log)
        evaluate_downstream(p, log)
    outcomes = test_claims(p)
    path = report.write_report(p, outcomes, {"tier": tier, "git": git_revision(), "seconds": round(time.time() - t0, 1),
                                             "estimate": est})
    for name, o in outcomes.items():
        log(f"{name}: {o.verdict} ({o.reason})")
    log(f"report: {path}")
    return outcomes
