"""The claim file schema (``experiments/claims/<name>.yaml``) and the smoke-tier overlay.

A claim file says what a paper claims, how we test it, and what runs the test needs per tier::

    name: scaling                       # `lcplm reproduce scaling`
    paper: "..."                        # citation and where the claim is made
    statement: "..."                    # the paper's words
    hypothesis: "..."                   # the claim as we test it (operational)
    test: {kind: matched_sizes, treatment: bimamba, control: esm2, ...}
    tiers:
      cpu: {budget: "...", step_seconds: 0.13, overrides: {...}, arms: [...], lm_eval: {...}, downstream: {...}}
      gpu: {...}

Every arm is an experiment YAML (``lcplm pretrain``'s) plus overrides, trained once per seed.
Arms are named per tier and may be shared by several claims (the same name must then mean the same
experiment and overrides in every file); their seeds are the union over the claims, so a run is
trained once whichever claims ask for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lcplm.config import experiments_dir, load_config
from lcplm.errors import UserError

TIERS = ("cpu", "gpu", "smoke")
TEST_KINDS = ("matched_sizes", "length_extrapolation", "paired_seeds", "downstream_sign")
LAUNCHERS = ("local", "slurm")
REPO = Path(__file__).resolve().parents[3]  # the source checkout (git revision in the report); not used for files
CLAIMS_DIR = experiments_dir() / "claims"  # the checkout's, or the copy a wheel ships
SMOKE_FILE = CLAIMS_DIR / "tiers" / "smoke.yaml"


@dataclass
class ArmConfig:
    """One model to train (once per seed)."""

    name: str = "???"  # unique within a tier across all claim files (runs go to <out>/arms/<name>/)
    group: str = "???"  # which side of the test it is on (test.treatment / test.control)
    experiment: str = "???"  # `lcplm pretrain` YAML, relative to the claim file
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted keys on top of the tier's overrides
    seeds: list[int] = field(default_factory=lambda: [0])  # run.seed of each run of this arm
    size: Optional[int] = None  # matched_sizes: arms of the two groups with the same size index are compared
    relative_step_cost: Optional[float] = None  # seconds per step / tier step_seconds (measured side by side)


@dataclass
class LMEvalConfig:
    """eval-lm on every run (:mod:`lcplm.eval.lm`); one cached result per run and settings."""

    enabled: bool = True
    fasta: str = "swissprot:heldout"  # FASTA or prepared name
    bins: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048])  # upper edges, tokens
    per_bin: Optional[int] = 64  # sequences per bin (by id hash); null: all
    seed: int = 0  # mask seed: every run sees the same masks
    mask_prob: float = 0.15
    max_tokens: int = 16384  # token budget per batch
    bootstrap: int = 1000  # resamples for the per-run intervals
    device: str = "auto"


@dataclass
class DownstreamEvalConfig:
    """eval-downstream on the claim's runs (one call with all of them as checkpoints)."""

    enabled: bool = False
    config: str = ""  # downstream YAML, relative to the claim file; checkpoints, name, out_dir are set by the runner
    overrides: list[str] = field(default_factory=list)  # key=value overrides of that YAML


@dataclass
class TierConfig:
    budget: str = "???"  # the budget in words: tokens per arm, the estimate and how it was made
    step_seconds: Optional[float] = None  # seconds per step of the reference model (tiny.yaml): estimates = this x relative_step_cost x steps
    overhead_seconds_per_run: float = 0.0  # process start, validation, checkpoints, baseline per run
    eval_seconds_per_run: float = 0.0  # eval-lm per run
    downstream_seconds: float = 0.0  # eval-downstream for the claim
    launcher: str = "local"  # local (one run after another, here) | slurm (a SLURM array per arm)
    slurm: Optional[str] = None  # resources YAML (experiments/slurm/), relative to the claim file
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every arm of this tier in this file
    arms: list[ArmConfig] = field(default_factory=list)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    downstream: DownstreamEvalConfig = field(default_factory=DownstreamEvalConfig)


@dataclass
class DownstreamMetric:
    task: str = "???"
    split: str = "???"
    head: str = "???"
    metric: str = "???"


@dataclass
class TestConfig:
    """The statistical test and its decision rule (:mod:`lcplm.eval.claims.verdicts`)."""

    kind: str = "???"  # matched_sizes | length_extrapolation | paired_seeds | downstream_sign
    treatment: str = "???"  # the arm group the paper says is better
    control: str = "???"  # the arm group it is compared with
    alpha: float = 0.05  # family-wise error rate of the decision
    lengths: Optional[list[int]] = None  # LM metric on sequences of [low, high] tokens; null: up to the runs' training length
    long_multiples: list[float] = field(default_factory=lambda: [4.0, 8.0])  # length_extrapolation: long = (a x, b x] the training length
    bootstrap: int = 2000  # resamples of the bootstrap tests
    downstream_metrics: list[DownstreamMetric] = field(default_factory=list)  # downstream_sign: what is compared (higher = better)


@dataclass
class ClaimConfig:
    name: str = "???"
    paper: str = "???"
    statement: str = "???"
    hypothesis: str = "???"
    test: TestConfig = field(default_factory=TestConfig)
    tiers: dict[str, TierConfig] = field(default_factory=dict)
    path: str = ""  # set by the loader: the file it came from


@dataclass
class SmokeConfig:
    """``experiments/claims/tiers/smoke.yaml``: the cpu tier, shrunk to a few steps per arm."""

    base_tier: str = "cpu"
    arm_overrides: dict[str, Any] = field(default_factory=dict)  # on top of every arm's overrides
    lm_eval: dict[str, Any] = field(default_factory=dict)  # replaces these keys of each claim's lm_eval
    downstream_config: str = ""  # downstream YAML replacing each claim's (relative to the smoke file)
    downstream_overrides: list[str] = field(default_factory=list)
    max_seeds: int = 1  # keep at most this many seeds per arm


def _check(claim: ClaimConfig, where: str) -> None:
    if not re.fullmatch(r"[a-z0-9_]+", claim.name):
        raise UserError(f"{where}: name must be lower-case letters, digits or '_', got {claim.name!r}")
    if Path(where).stem != claim.name:
        raise UserError(f"{where}: name {claim.name!r} must equal the file name")
    t = claim.test
    if t.kind not in TEST_KINDS:
        raise UserError(f"{where}: test.kind must be one of {list(TEST_KINDS)}, got {t.kind!r}")
    if not 0.0 < t.alpha < 0.5:
        raise UserError(f"{where}: test.alpha must be in (0, 0.5), got {t.alpha}")
    if t.lengths is not None and (len(t.lengths) != 2 or not 1 <= t.lengths[0] <= t.lengths[1]):
        raise UserError(f"{where}: test.lengths must be [low, high] token lengths with 1 <= low <= high (or null), got {t.lengths}")
    m = t.long_multiples
    if len(m) != 2 or not 1.0 <= m[0] < m[1]:
        raise UserError(f"{where}: test.long_multiples must be [a, b] with 1 <= a < b, got {m}")
    if t.kind == "downstream_sign" and not t.downstream_metrics:
        raise UserError(f"{where}: test.kind downstream_sign needs test.downstream_metrics")
    for tier, tc in claim.tiers.items():
        if tier not in ("cpu", "gpu"):
            raise UserError(f"{where}: tiers.{tier}: the tiers are cpu and gpu (smoke derives from cpu)")
        w = f"{where}: tiers.{tier}"
        if tc.launcher not in LAUNCHERS:
            raise UserError(f"{w}.launcher must be one of {list(LAUNCHERS)}, got {tc.launcher!r}")
        if tc.launcher == "slurm" and not tc.slurm:
            raise UserError(f"{w}: launcher slurm needs slurm: <resources YAML>")
        groups = {a.group for a in tc.arms}
        if {t.treatment, t.control} - groups:
            raise UserError(f"{w}: no arm in group {sorted({t.treatment, t.control} - groups)[0]!r} (test.treatment / test.control)")
        names = [a.name for a in tc.arms]
        if len(set(names)) != len(names):
            raise UserError(f"{w}: two arms share a name")
        for a in tc.arms:
            if not re.fullmatch(r"[A-Za-z0-9._-]+", a.name):
                raise UserError(f"{w}: arm name {a.name!r}: letters, digits, '.', '_' or '-' only")
            if not a.seeds or len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
                raise UserError(f"{w}: arm {a.name}: seeds must be distinct integers >= 0")
        if t.kind == "matched_sizes":
            for g in (t.treatment, t.control):
                sizes = [a.size for a in tc.arms if a.group == g]
                if None in sizes or len(set(sizes)) != len(sizes):
                    raise UserError(f"{w}: matched_sizes needs a distinct size index on every {g!r} arm")
        if t.kind in ("matched_sizes", "length_extrapolation", "paired_seeds") and not tc.lm_eval.enabled:
            raise UserError(f"{w}: test.kind {t.kind} needs lm_eval.enabled")
        if t.kind == "downstream_sign" and not (tc.downstream.enabled and tc.downstream.config):
            raise UserError(f"{w}: test.kind downstream_sign needs downstream.enabled and downstream.config")


def load_claim(path: str | Path) -> ClaimConfig:
    claim = load_config(path, None, schema=ClaimConfig)
    claim.path = str(Path(path).resolve())
    _check(claim, str(path))
    return claim


def claim_files(directory: Path = CLAIMS_DIR) -> dict[str, Path]:
    """name -> file of every claim (``*.yaml`` directly in the folder)."""
    return {p.stem: p for p in sorted(Path(directory).glob("*.yaml"))}


def load_claims(names: list[str] | None = None, directory: Path = CLAIMS_DIR) -> list[ClaimConfig]:
    """The named claims (all when ``names`` is empty), validated; an unknown name is one line."""
    files = claim_files(directory)
    if not files:
        raise UserError(f"{directory}: no claim files (*.yaml)")
    for n in names or []:
        if n not in files:
            raise UserError(f"unknown claim {n!r}; the claims are: {', '.join(files)}")
    return [load_claim(files[n]) for n in (names or list(files))]


def load_smoke(path: Path = SMOKE_FILE) -> SmokeConfig:
    cfg = load_config(path, None, schema=SmokeConfig)
    if cfg.downstream_config:
        cfg.downstream_config = str((Path(path).resolve().parent / cfg.downstream_config).resolve())
    return cfg
