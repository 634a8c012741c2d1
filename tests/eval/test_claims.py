"""The claims framework: shipped claim files, the verdict rule and tests on planted effects, and the
runner's resume and report with fast fake arms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lcplm.__main__ import main as cli
from lcplm.config import PretrainConfig, load_config, to_dict
from lcplm.errors import UserError
from lcplm.eval.claims import runner, verdicts
from lcplm.files import atomic_write_text, atomic_write_with
from lcplm.models import build_model

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------- the shipped claims


@pytest.fixture(scope="module")
def cpu_plan():
    return runner.plan("cpu")


def test_shipped_claims_plan_for_every_tier(cpu_plan):
    assert set(cpu_plan.claims) >= {"scaling", "length_extrapolation", "shared_projections", "downstream"}
    for tier in ("gpu", "smoke"):
        p = runner.plan(tier)
        assert set(p.claims) == set(cpu_plan.claims)
    smoke = runner.plan("smoke")
    assert all(cfg.trainer.max_steps <= 10 for a in smoke.arms.values() for _, cfg in a.planned)


def test_cpu_tier_is_designed_as_the_issue_asks(cpu_plan):
    runs = [(a, s, cfg) for a in cpu_plan.arms.values() for p, cfg in a.planned for s in [p.overrides["run.seed"]]]
    # one token budget for every run, never cut by wall-clock time
    assert {(cfg.trainer.max_steps, cfg.data.max_tokens, cfg.trainer.max_time_minutes) for _, _, cfg in runs} == {(1000, 4096, None)}
    assert {cfg.data.path for _, _, cfg in runs} == {"swissprot:train"} and {cfg.data.max_length for _, _, cfg in runs} == {256}
    # scaling: >= 4 sizes per family, matched sizes within 15% of each other's parameters
    sc = cpu_plan.claims["scaling"]
    params = {a: sum(t.numel() for t in build_model(cpu_plan.arms[a].planned[0][1].model).parameters()) for a in sc.arms}
    by_size: dict[int, dict[str, int]] = {}
    for a, ca in sc.arms.items():
        by_size.setdefault(ca.size, {})[ca.group] = params[a]
    assert len(by_size) >= 4 and all(set(v) == {"bimamba", "esm2"} for v in by_size.values())
    assert all(abs(v["bimamba"] - v["esm2"]) / v["bimamba"] < 0.15 for v in by_size.values())
    assert {cpu_plan.arms[a].planned[0][1].model.name for a in sc.arms} == {"bimamba", "esm2"}
    # shared vs unshared: >= 3 seeds, equal parameters within 10%, the unshared model really unshared
    sp = cpu_plan.claims["shared_projections"]
    assert all(len(ca.seeds) >= 3 for ca in sp.arms.values())
    models = {ca.group: cpu_plan.arms[a].planned[0][1].model for a, ca in sp.arms.items()}
    assert models["shared"].share_projections and not models["unshared"].share_projections
    n = {g: sum(t.numel() for t in build_model(m).parameters()) for g, m in models.items()}
    assert abs(n["shared"] - n["unshared"]) / n["shared"] < 0.1
    # length extrapolation: evaluation bins reach 8x the training length; long = 4-8x
    le = cpu_plan.claims["length_extrapolation"]
    assert max(le.tier.lm_eval.bins) >= 8 * 256 and le.claim.test.long_multiples == [4.0, 8.0]


def test_cpu_tier_estimate_fits_90_minutes(cpu_plan):
    est = runner.estimate_seconds(cpu_plan)
    assert est is not None and est["total"] <= 90 * 60
    # shared runs are counted once: the runs of all claims together are fewer than their sum
    alone = sum(runner.estimate_seconds(cpu_plan, [n])["train"] for n in cpu_plan.claims)
    assert est["train"] < alone


def test_unknown_claim_is_one_line(capsys):
    assert cli(["reproduce", "no_such_claim", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown claim 'no_such_claim'; the claims are: " in err[0] and "scaling" in err[0]


# --------------------------------------------------------------------------- verdict rule


def test_decide_reproduces_only_when_every_test_rejects_in_the_claimed_direction():
    assert verdicts.decide([0.01, 0.02], [0.99, 0.98], 0.05)[0] == verdicts.REPRODUCED
    assert verdicts.decide([0.01, 0.2], [0.99, 0.8], 0.05)[0] == verdicts.NOT_REPRODUCED
    assert verdicts.decide([0.9, 0.2], [0.01, 0.8], 0.05)[0] == verdicts.CONTRADICTED
    assert verdicts.decide([0.05], [0.95], 0.05)[0] == verdicts.NOT_REPRODUCED  # p must be below alpha
    assert verdicts.decide([], [], 0.05)[0] == verdicts.NOT_TESTED


def _lm(ids, lengths, nll, n, digest="m0", training_length=256, bins=(128, 256, 512, 1024, 2048)):
    return {"settings": {"bins": list(bins)}, "sequences": {"ids": list(ids), "token_lengths": list(lengths)},
            "models": [{"mask_digest": digest, "training_length": training_length,
                        "per_sequence": {"mask_nll": [float(x) for x in nll], "mask_n": [int(x) for x in n]}}]}


def _synthetic_runs(rng, effect, groups=("t", "c"), sizes=(0, 1, 2), seeds=(0,), n_seq=150, long_growth=(0.0, 0.0)):
    """Runs whose per-token loss is base - effect for the treatment; long sequences add growth."""
    lengths = np.concatenate([rng.integers(20, 257, n_seq), rng.integers(1025, 2049, n_seq // 2)])
    ids = [f"s{i}" for i in range(len(lengths))]
    n = np.maximum(1, (lengths * 0.12).astype(int))
    base = rng.normal(2.6, 0.2, len(lengths))
    runs = []
    for k in sizes:
        for gi, g in enumerate(groups):
            for s in seeds:
                per_tok = base - 0.05 * k + (0 if gi else -effect) + rng.normal(0, 0.02, len(lengths))
                per_tok = per_tok + np.where(lengths > 1024, long_growth[gi], 0.0)
                nll = per_tok * n
                runs.append(verdicts.RunData(f"{g}{k}", g, s, k, f"{g}{k}-s{s}", n_parameters=int(3e4 * 2**k), global_step=10,
                                             max_steps=10, lm=_lm(ids, lengths, nll, n)))
    return runs


@pytest.mark.parametrize("effect, expected", [(0.1, verdicts.REPRODUCED), (0.0, verdicts.NOT_REPRODUCED),
                                              (-0.1, verdicts.CONTRADICTED)])
def test_matched_sizes_finds_a_planted_effect(effect, expected):
    runs = _synthetic_runs(np.random.default_rng(0), effect)
    o = verdicts.matched_sizes(runs, "t", "c", (1, 256), 0.05, 500)
    assert o.verdict == expected, o.reason
    assert len(o.numbers["sizes"]) == 3 and set(o.numbers["points"]) == {"t", "c"}
    if effect:
        assert all(np.sign(r["difference"]["estimate"]) == -np.sign(effect) for r in o.numbers["sizes"])
    assert set(o.numbers["fits"]) >= {"t", "c"}


def test_length_extrapolation_finds_the_model_that_degrades_less():
    rng = np.random.default_rng(1)
    good = _synthetic_runs(rng, 0.0, sizes=(0,), long_growth=(0.05, 0.4))
    o = verdicts.length_extrapolation(good, "t", "c", (1, 256), (1025, 2048), 0.05, 500)
    assert o.verdict == verdicts.REPRODUCED and o.numbers["difference_in_differences"]["estimate"] < -0.2
    same = _synthetic_runs(rng, 0.3, sizes=(0,), long_growth=(0.2, 0.2))  # better everywhere, not at extrapolating
    assert verdicts.length_extrapolation(same, "t", "c", (1, 256), (1025, 2048), 0.05, 500).verdict == verdicts.NOT_REPRODUCED
    # long sequences within the training length say nothing about extrapolation
    o = verdicts.length_extrapolation(good, "t", "c", (1, 256), (200, 256), 0.05, 100)
    assert o.verdict == verdicts.NOT_TESTED and "not longer than a training length" in o.reason


def test_paired_seeds_t_test():
    rng = np.random.default_rng(2)
    runs = _synthetic_runs(rng, 0.05, sizes=(0,), seeds=(0, 1, 2))
    o = verdicts.paired_seeds(runs, "t", "c", (1, 256), 0.05, 200)
    assert o.verdict == verdicts.REPRODUCED and o.numbers["t_test"]["df"] == 2
    one = _synthetic_runs(rng, 0.05, sizes=(0,), seeds=(0,))
    assert verdicts.paired_seeds(one, "t", "c", (1, 256), 0.05, 200).verdict == verdicts.NOT_TESTED


def test_downstream_sign_test():
    runs = [verdicts.RunData(f"{g}", g, s, None, f"{g}-s{s}", global_step=5, max_steps=5) for g in ("t", "c") for s in (0, 1, 2)]
    metrics = [{"task": f"task{i}", "split": "test", "head": "linear", "metric": "auroc"} for i in range(3)]
    rows = [{"model": f"{g}-s{s}", "task": m["task"], "split": "test", "head": "linear", "metric": "auroc", "seed": ds,
             "value": (0.8 if g == "t" else 0.7) + 0.01 * ds} for g in ("t", "c") for s in (0, 1, 2) for m in metrics for ds in (0, 1)]
    o = verdicts.downstream_sign(runs, rows, "t", "c", metrics, 0.05)
    assert o.verdict == verdicts.REPRODUCED and o.numbers["n_positive"] == o.numbers["n"] == 9
    assert o.p_claimed[0] == pytest.approx(2.0**-9)
    assert verdicts.downstream_sign(runs, None, "t", "c", metrics, 0.05).verdict == verdicts.NOT_TESTED
    absent = verdicts.downstream_sign(runs, rows, "t", "c", [{"task": "x", "split": "y", "head": "z", "metric": "w"}], 0.05)
    assert absent.verdict == verdicts.NOT_TESTED and "none of the metrics" in absent.reason


def test_missing_or_broken_inputs_are_never_reproduced():
    rng = np.random.default_rng(3)
    runs = _synthetic_runs(rng, 0.2)
    runs[0].lm = None
    assert verdicts.matched_sizes(runs, "t", "c", (1, 256), 0.05, 200).verdict == verdicts.NOT_TESTED
    runs = _synthetic_runs(rng, 0.2)
    runs[1].global_step = 5  # stopped before its budget
    o = verdicts.matched_sizes(runs, "t", "c", (1, 256), 0.05, 200)
    assert o.verdict == verdicts.NOT_TESTED and "token budget" in o.reason
    runs = _synthetic_runs(rng, 0.2)
    runs[2].lm["models"][0]["mask_digest"] = "other"
    assert verdicts.matched_sizes(runs, "t", "c", (1, 256), 0.05, 200).verdict == verdicts.NOT_TESTED


def test_reproduced_always_carries_p_values_below_alpha():
    rng = np.random.default_rng(4)
    for trial in range(12):
        effect = float(rng.normal(0.0, 0.03))
        for o in (verdicts.matched_sizes(_synthetic_runs(rng, effect), "t", "c", (1, 256), 0.05, 200),
                  verdicts.paired_seeds(_synthetic_runs(rng, effect, sizes=(0,), seeds=(0, 1, 2)), "t", "c", (1, 256), 0.05, 200)):
            if o.verdict == verdicts.REPRODUCED:
                assert o.p_claimed and all(p < 0.05 for p in o.p_claimed)
            if o.verdict == verdicts.CONTRADICTED:
                assert any(p < 0.05 for p in o.p_opposite)


# ------------------------------------------------------------------ runner with fake arms

AA = "ACDEFGHIKLMNPQRSTVWY"


def _fasta(path: Path, lengths, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">p{i}\n{''.join(rng.choice(list(AA), n))}\n" for i, n in enumerate(lengths)))
    return path


@pytest.fixture
def fake_claims(tmp_path):
    """A claims folder with one paired_seeds claim over two tiny arms, and its data."""
    d = tmp_path / "claims"
    (d / "tiers").mkdir(parents=True)
    (d / "pretrain").mkdir()
    train = _fasta(tmp_path / "train.fasta", [40] * 30)
    held = _fasta(tmp_path / "held.fasta", [10, 20, 30, 50, 60, 100, 120, 200, 250], seed=1)
    (d / "pretrain" / "exp.yaml").write_text(f"""# tiny arm
include: [{REPO / 'experiments' / 'model' / 'tiny.yaml'}]
model: {{d_model: 16, n_layer: 1, d_state: 4}}
data: {{name: fasta, path: {train}, max_length: 64, max_tokens: 256, val_fraction: 0.2, cache_dir: {tmp_path / 'cache'}}}
trainer: {{max_steps: 3, progress_bar: false}}
""")
    (d / "pair.yaml").write_text(f"""# fake claim
name: pair
paper: test
statement: shared beats unshared
hypothesis: lower loss
test: {{kind: paired_seeds, treatment: a, control: b, alpha: 0.05, bootstrap: 200}}
tiers:
  cpu:
    budget: three steps
    step_seconds: 0.1
    arms:
      - {{name: arm_a, group: a, experiment: pretrain/exp.yaml, overrides: {{}}, seeds: [0, 1], relative_step_cost: 1.0}}
      - {{name: arm_b, group: b, experiment: pretrain/exp.yaml, overrides: {{model.d_model: 8}}, seeds: [0, 1], relative_step_cost: 0.5}}
    lm_eval: {{fasta: {held}, bins: [64, 128, 256], per_bin: null, bootstrap: 200, device: cpu}}
""")
    (d / "tiers" / "smoke.yaml").write_text("# smoke\nbase_tier: cpu\narm_overrides: {trainer.max_steps: 2}\n")
    return d


class FakeTraining:
    """Writes what a finished run leaves (checkpoint, results.json, status) without training."""

    def __init__(self, die_after: int | None = None):
        self.trained: list[str] = []
        self.die_after = die_after

    def __call__(self, arm, points, dry_run=False):
        for p in points:
            if self.die_after is not None and len(self.trained) >= self.die_after:
                raise KeyboardInterrupt
            cfg = load_config(arm.sweep_dir / p.config, schema=PretrainConfig)
            torch.manual_seed(cfg.run.seed)
            model = build_model(cfg.model)
            run = Path(p.run_dir)
            state = {f"model.{k}": v for k, v in model.state_dict().items()}
            atomic_write_with(run / "checkpoints" / "last.ckpt",
                              lambda f: torch.save({"state_dict": state, "hyper_parameters": {"config": to_dict(cfg)}}, f))
            atomic_write_text(run / "results.json", json.dumps({"global_step": cfg.trainer.max_steps, "train_time_s": 0.1,
                                                                "n_parameters": sum(t.numel() for t in model.parameters())}))
            atomic_write_text(arm.sweep_dir / "status" / f"{p.name}.json", json.dumps({"state": "done"}))
            self.trained.append(f"{arm.name}/{p.name}")
        return 0


def test_runner_trains_evaluates_reports_and_resumes(tmp_path, fake_claims, monkeypatch):
    out = tmp_path / "out"
    fake = FakeTraining()
    monkeypatch.setattr(runner, "launch_points", fake)
    kw = dict(out=str(out), claims_dir=fake_claims, smoke_file=fake_claims / "tiers" / "smoke.yaml", log=lambda s: None)
    outcomes = runner.reproduce("cpu", **kw)
    assert sorted(fake.trained) == ["arm_a/000-seed0", "arm_a/001-seed1", "arm_b/000-seed0", "arm_b/001-seed1"]
    assert outcomes["pair"].verdict in verdicts.VERDICTS and outcomes["pair"].verdict != verdicts.NOT_TESTED
    evals = sorted((out / "evals" / "lm").rglob("*.json"))
    assert len(evals) == 4 and len({json.loads(e.read_text())["data"]["mask_digest"] for e in evals}) == 1
    report = (out / "REPORT.md").read_text()
    assert "| [pair](#pair) | shared beats unshared |" in report and f"**{outcomes['pair'].verdict}**" in report
    assert "paired t-test" in report and (out / "figures" / "pair.png").stat().st_size > 1000
    saved = json.loads((out / "claims" / "pair.json").read_text())
    assert saved["verdict"] == outcomes["pair"].verdict and len(saved["numbers"]["per_seed"]) == 2
    # a second invocation trains and evaluates nothing again
    stamps = {e: e.stat().st_mtime_ns for e in evals}
    fake.trained.clear()
    again = runner.reproduce("cpu", **kw)
    assert fake.trained == [] and {e: e.stat().st_mtime_ns for e in evals} == stamps
    assert again["pair"].as_dict() == outcomes["pair"].as_dict()


def test_an_interrupted_reproduce_continues_with_the_missing_runs(tmp_path, fake_claims, monkeypatch):
    out = tmp_path / "out"
    kw = dict(out=str(out), claims_dir=fake_claims, smoke_file=fake_claims / "tiers" / "smoke.yaml", log=lambda s: None)
    dying = FakeTraining(die_after=1)
    monkeypatch.setattr(runner, "launch_points", dying)
    with pytest.raises(KeyboardInterrupt):
        runner.reproduce("cpu", **kw)
    assert dying.trained == ["arm_a/000-seed0"]
    # the report of what exists says the claim is not tested yet
    monkeypatch.setattr(runner, "launch_points", FakeTraining())
    partial = runner.reproduce("cpu", report_only=True, **kw)
    assert partial["pair"].verdict == verdicts.NOT_TESTED and "runs not finished" in partial["pair"].reason
    rest = FakeTraining()
    monkeypatch.setattr(runner, "launch_points", rest)
    done = runner.reproduce("cpu", **kw)
    assert sorted(rest.trained) == ["arm_a/001-seed1", "arm_b/000-seed0", "arm_b/001-seed1"]
    assert done["pair"].verdict != verdicts.NOT_TESTED


def test_smoke_tier_shrinks_the_cpu_tier(tmp_path, fake_claims):
    p = runner.plan("smoke", out=str(tmp_path / "o"), claims_dir=fake_claims, smoke_file=fake_claims / "tiers" / "smoke.yaml")
    assert {cfg.trainer.max_steps for a in p.arms.values() for _, cfg in a.planned} == {2}
    assert p.arms["arm_a"].seeds == [0]  # max_seeds defaults to 1


def test_conflicting_arm_declarations_are_one_line(tmp_path, fake_claims):
    text = (fake_claims / "pair.yaml").read_text().replace("name: pair", "name: pair2")
    (fake_claims / "pair2.yaml").write_text(text.replace("overrides: {model.d_model: 8}", "overrides: {model.d_model: 12}"))
    with pytest.raises(UserError, match="arm 'arm_b' is declared differently in .*pair2?.yaml and .*pair2?.yaml"):
        runner.plan("cpu", claims_dir=fake_claims, out=str(tmp_path / "o"))


@pytest.mark.parametrize("edit, message", [
    (("name: pair", "name: other"), "must equal the file name"),
    (("kind: paired_seeds", "kind: vibes"), "test.kind must be one of"),
    (("treatment: a", "treatment: z"), "no arm in group 'z'"),
    (("alpha: 0.05", "alpha: 0.7"), "test.alpha must be in"),
])
def test_bad_claim_files_are_one_line(tmp_path, fake_claims, edit, message):
    f = fake_claims / "pair.yaml"
    f.write_text(f.read_text().replace(*edit))
    with pytest.raises(UserError, match=message) as e:
        runner.plan("cpu", claims_dir=fake_claims, out=str(tmp_path / "o"))
    assert "\n" not in str(e.value)
