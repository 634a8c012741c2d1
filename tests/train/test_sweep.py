"""``lcplm sweep``: grid/list expansion, validation before launch, local launcher, summary table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lcplm.cli import sweep as sweep_cli
from lcplm.errors import UserError
from lcplm.train import sweep
from lcplm.train.sweep import SweepConfig, expand, format_override, format_table, load_sweep, summarize

from train_helpers import REPO, write_experiment


def _sweep_file(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text("# test sweep\n" + body)
    return p


def test_grid_times_points_in_order():
    cfg = SweepConfig(experiment="x", name="s", grid={"optim.lr": [1, 2], "run.seed": [0, 1, 2]},
                      points=[{"trainer.max_steps": 5}, {"trainer.max_steps": 7}])
    pts = expand(cfg)
    assert len(pts) == 2 * 2 * 3
    assert pts[0] == {"trainer.max_steps": 5, "optim.lr": 1, "run.seed": 0}
    assert pts[1] == {"trainer.max_steps": 5, "optim.lr": 1, "run.seed": 1}
    assert pts[6] == {"trainer.max_steps": 7, "optim.lr": 1, "run.seed": 0}
    assert expand(SweepConfig(experiment="x", name="s")) == [{}]
    assert expand(SweepConfig(experiment="x", name="s", points=[{"a": 1}, {"a": 2}])) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"grid": {"optim.lr": []}}, "grid.optim.lr has no values"),
        ({"points": [{"a": 1}, {"a": 1}]}, "duplicate point"),
        ({"grid": {"a": [1]}, "points": [{"a": 2}]}, "in both grid and points"),
        ({"grid": {"run.name": ["x", "y"]}}, "run.name is set by the sweep"),
    ],
)
def test_bad_expansions_are_one_line_errors(kw, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.")) as e:
        expand(SweepConfig(experiment="x", name="s", **kw))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value", [0.001, 2e-3, 5, -1, True, False, None, "abc", "1e-3", "null", "a b", [1, 2], 1e300])
def test_override_strings_parse_back_to_the_same_value(value):
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([format_override("a.b", value)]))["a"]["b"]
    assert parsed == value and type(parsed) is type(value)


def test_sweep_file_schema_is_strict(tmp_path: Path):
    with pytest.raises(UserError, match="bogus"):
        load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: s\nbogus: 1\n"))
    with pytest.raises(UserError, match="launcher must be one of"):
        load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: s\nlauncher: k8s\n"))
    with pytest.raises(UserError, match="needs slurm"):
        load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: s\nlauncher: slurm\n"))
    with pytest.raises(UserError, match="name must be"):
        load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: 'a b'\n"))
    with pytest.raises(UserError, match="is swept by"):
        load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: s\ngrid: {optim.lr: [1, 2]}\n"), ["optim.lr=3"])
    cfg = load_sweep(_sweep_file(tmp_path, "experiment: e.yaml\nname: s\nslurm: r.yaml\n"))
    assert cfg.experiment == str(tmp_path / "e.yaml") and cfg.slurm == str(tmp_path / "r.yaml")


def test_shipped_sweeps_validate_every_point():
    for path in sorted((REPO / "experiments" / "sweeps").glob("*.yaml")):
        cfg = load_sweep(path)
        _, planned = sweep.plan_points(cfg, str(path))  # each point's overrides against its experiment
        assert len(planned) >= 2, path
        if cfg.launcher == "slurm":
            from lcplm.train.slurm import check_resources, load_slurm_config

            for point, pcfg in planned:
                check_resources(load_slurm_config(cfg.slurm), pcfg.trainer, f"{path} {point.name}")


def _fake_sweep_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sw"
    points = []
    for i, lr in enumerate([0.1, 0.2, 0.3]):
        run_dir = d / f"{i:03d}-lr{lr}"
        points.append({"index": i, "name": run_dir.name, "overrides": {"optim.lr": lr}, "run_dir": str(run_dir),
                       "config": f"points/{run_dir.name}.yaml"})
    (d / "status").mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"name": "sw", "experiment": "e", "points": points}))
    done = Path(points[0]["run_dir"])
    done.mkdir()
    (done / "results.json").write_text(json.dumps({"global_step": 10, "val_loss": 2.5, "val_perplexity": 12.18}))
    (d / "status" / f"{points[0]['name']}.json").write_text(json.dumps({"state": "done"}))
    (d / "status" / f"{points[1]['name']}.json").write_text(json.dumps({"state": "failed", "error": "UserError: boom"}))
    return d


def test_summary_table_reads_each_points_results(tmp_path: Path, capsys):
    d = _fake_sweep_dir(tmp_path)
    rows = summarize(d)
    assert [r["state"] for r in rows] == ["done", "failed", "pending"]
    assert rows[0]["val_loss"] == 2.5 and rows[0]["global_step"] == 10 and "val_loss" not in rows[2]
    assert rows[1]["error"] == "UserError: boom"
    table = (d / "summary.md").read_text()
    assert table.splitlines()[0].startswith("| point | optim.lr | state | global_step | val_loss")
    assert "| 000-lr0.1 | 0.1 | done | 10 | 2.5 |" in table
    assert json.loads((d / "summary.json").read_text()) == rows
    assert sweep_cli.main(["--summary", str(d)]) == 0
    assert "000-lr0.1" in capsys.readouterr().out


def test_summary_of_a_non_sweep_dir_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="not a sweep directory"):
        summarize(tmp_path)


def test_format_table_columns_in_first_seen_order():
    t = format_table([{"a": 1, "b": 0.123456}, {"a": 2, "c": "x"}])
    assert t.splitlines()[0] == "| a | b | c |" and t.splitlines()[2] == "| 1 | 0.1235 |  |"


# -- with a real experiment --------------------------------------------------------------

def test_every_point_is_validated_before_anything_runs(tmp_path: Path):
    exp = write_experiment(tmp_path)
    sw = _sweep_file(tmp_path, f"experiment: {exp}\nname: s\nout_dir: {tmp_path / 'sweeps'}\n"
                     "points: [{optim.lr: 0.001}, {optim.no_such_key: 1}]\n")
    with pytest.raises(UserError, match=r"point 1 .*no_such_key"):
        sweep_cli.main([str(sw)])
    assert not (tmp_path / "sweeps").exists()  # nothing written, nothing launched
    sw2 = _sweep_file(tmp_path, f"experiment: {exp}\nname: s\nout_dir: {tmp_path / 'sweeps'}\n"
                      "grid: {trainer.max_steps: [1, 'many']}\n", "s2.yaml")
    with pytest.raises(UserError, match=r"point 1 .*max_steps"):
        sweep_cli.main([str(sw2)])


def test_dry_run_lists_points_and_writes_nothing(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    sw = _sweep_file(tmp_path, f"experiment: {exp}\nname: s\nout_dir: {tmp_path / 'sweeps'}\n"
                     "grid: {optim.lr: [0.001, 0.002], run.seed: [0, 1]}\n")
    assert sweep_cli.main([str(sw), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 points" in out and "000-lr0.001-seed0: optim.lr=0.001 run.seed=0" in out
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_local_sweep_runs_each_point_in_its_own_run_dir_and_summarises(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    sw = _sweep_file(tmp_path, f"experiment: {exp}\nname: loc\nout_dir: {tmp_path / 'sweeps'}\n"
                     "points: [{optim.lr: 0.002}, {optim.lr: 0.004}]\noverrides: {trainer.max_steps: 3}\n")
    assert sweep_cli.main([str(sw)]) == 0
    d = tmp_path / "sweeps" / "loc"
    rows = json.loads((d / "summary.json").read_text())
    assert [r["state"] for r in rows] == ["done", "done"]
    assert all(r["global_step"] == 3 for r in rows)
    for r, lr in zip(rows, [0.002, 0.004]):
        run = d / r["point"]
        saved = OmegaConf.load(run / "config.yaml")
        assert saved.optim.lr == lr and saved.trainer.max_steps == 3 and saved.run.name == r["point"]
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "results.json").is_file()
    # launching again skips finished points
    capsys.readouterr()
    assert sweep_cli.main([str(sw)]) == 0
    assert capsys.readouterr().out.count("done already") == 2
    # the same directory with other points is refused
    sw_other = _sweep_file(tmp_path, f"experiment: {exp}\nname: loc\nout_dir: {tmp_path / 'sweeps'}\n"
                           "points: [{optim.lr: 0.1}]\n", "other.yaml")
    with pytest.raises(UserError, match="different sweep"):
        sweep_cli.main([str(sw_other)])
