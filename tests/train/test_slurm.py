"""SLURM: resource configs, generated array scripts, and a real 2-point sweep on a local Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lcplm.cli import sweep as sweep_cli
from lcplm.errors import UserError
from lcplm.train import slurm
from lcplm.train.slurm import SlurmConfig, check_resources, load_slurm_config, render_array_script

from train_helpers import REPO, write_experiment


def test_resource_schema_is_strict(tmp_path: Path):
    p = tmp_path / "r.yaml"
    p.write_text("# r\ngpus: 8\n")
    with pytest.raises(UserError, match="gpus"):
        load_slurm_config(p)
    p.write_text("# r\nnodes: 0\n")
    with pytest.raises(UserError, match="nodes must be >= 1"):
        load_slurm_config(p)
    p.write_text("# r\nextra_sbatch: [exclusive]\n")
    with pytest.raises(UserError, match="starting with '-'"):
        load_slurm_config(p)


def test_array_script_has_resources_and_no_hyperparameters(tmp_path: Path):
    cfg = SlurmConfig(partition="gpu", time_minutes=90, nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=6,
                      mem_gb=200, max_parallel=3, signal_before_end_s=240, extra_sbatch=["--exclusive"],
                      setup=["module load cuda"], python="/opt/py/bin/python")
    text = render_array_script(cfg, tmp_path / "sw", "lcplm-x", [0, 1, 2, 3])
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    for opt in ["--array=0-3%3", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=6",
                "--mem=200G", "--time=90", "--partition=gpu", "--signal=USR1@240", "--requeue", "--exclusive",
                "--open-mode=append", f"--output={(tmp_path / 'sw').resolve()}/slurm/%A_%a.out"]:
        assert f"#SBATCH {opt}" in sbatch, opt
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body[0] == "set -eo pipefail" and body[1] == "module load cuda"
    assert body[-1] == (f"srun --kill-on-bad-exit=1 /opt/py/bin/python -m lcplm sweep --run-point "
                        f"{(tmp_path / 'sw').resolve()} \"$SLURM_ARRAY_TASK_ID\"")
    assert "lr" not in text and "optim" not in text and "max_steps" not in text
    # a resubmission lists only the unfinished points
    assert "#SBATCH --array=1,3" in render_array_script(SlurmConfig(), tmp_path, "j", [1, 3])


def test_resources_must_match_the_trainer_devices():
    trainer = SimpleNamespace(num_nodes=1, devices=8)
    check_resources(SlurmConfig(nodes=1, tasks_per_node=8, gpus_per_node=8), trainer, "x")
    with pytest.raises(UserError, match="one task per device"):
        check_resources(SlurmConfig(nodes=1, tasks_per_node=1, gpus_per_node=8), trainer, "x")
    with pytest.raises(UserError, match="gpus_per_node=4 must equal tasks_per_node=8"):
        check_resources(SlurmConfig(nodes=1, tasks_per_node=8, gpus_per_node=4), trainer, "x")


def test_requeue_targets_the_array_task(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert slurm.current_job_id() is None
    assert "not a SLURM job" in slurm.requeue_current_job()
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert slurm.current_job_id() == "17"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm.current_job_id() == "12_3"


def test_preemption_handlers_only_flag_and_sigusr1_never_kills_after_training(tmp_path: Path):
    import signal

    old = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        cb = slurm.PreemptionCallback(tmp_path / "last.ckpt")
        cb.setup(None, None, "fit")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert cb.received == signal.SIGUSR1  # flagged; the save happens at the step's end
        cb.teardown(None, None, "fit")
        # the default action (terminate) is not put back for SIGUSR1; SIGTERM gets its old handler
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) == old[signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGUSR1)  # would end this process with SIG_DFL
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_slurm_dry_run_checks_resources_against_every_point(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    res = tmp_path / "res.yaml"
    res.write_text("# r\ntasks_per_node: 2\n")
    sw = tmp_path / "sw.yaml"
    sw.write_text(f"# s\nexperiment: {exp}\nname: s\nout_dir: {tmp_path / 'sweeps'}\nlauncher: slurm\nslurm: {res}\n"
                  "points: [{run.seed: 0}, {run.seed: 1}]\n")
    with pytest.raises(UserError, match="one task per device"):
        sweep_cli.main([str(sw), "--dry-run"])
    res.write_text("# r\ntasks_per_node: 1\n")
    assert sweep_cli.main([str(sw), "--dry-run"]) == 0
    assert "#SBATCH --array=0-1" in capsys.readouterr().out
    assert not (tmp_path / "sweeps").exists()


def _slurm_or_skip() -> None:
    why = slurm.slurm_available()
    if why is not None:
        pytest.skip(f"no Slurm here: {why} (.ci/start-slurm starts one)")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_two_point_sweep_on_real_slurm(tmp_path: Path):
    _slurm_or_skip()
    exp = write_experiment(tmp_path)
    name = f"sl{os.getpid()}"
    sw = tmp_path / "sw.yaml"
    sw.write_text(
        f"# s\nexperiment: {exp}\nname: {name}\nout_dir: {tmp_path / 'sweeps'}\nlauncher: slurm\n"
        f"slurm: {REPO / 'experiments' / 'slurm' / 'cpu_local.yaml'}\n"
        "points: [{optim.lr: 0.002}, {optim.lr: 0.004}]\noverrides: {trainer.max_steps: 3}\n"
    )
    try:
        r = subprocess.run([sys.executable, "-m", "lcplm", "sweep", str(sw), "--wait"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name", f"lcplm-{name}"], check=False)
        raise
    d = tmp_path / "sweeps" / name
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((d / "slurm").glob("*.out")))
    assert r.returncode == 0, r.stdout + r.stderr + logs
    rows = json.loads((d / "summary.json").read_text())
    assert [row["state"] for row in rows] == ["done", "done"], rows
    for row in rows:
        status = json.loads((d / "status" / f"{row['point']}.json").read_text())
        assert status["slurm_job"]  # ran inside a SLURM job
        res = json.loads((d / row["point"] / "results.json").read_text())
        assert res["global_step"] == 3 and res["val_loss"] > 0
        assert (d / row["point"] / "config.yaml").is_file()
    assert len(list((d / "slurm").glob("*.out"))) == 2
    assert "| done |" in r.stdout


def _squeue_state(job: str) -> str | None:
    """The job's state, "" once it has left the queue, None when squeue itself failed (a busy
    controller under load): callers keep polling rather than take a failure for "finished"."""
    r = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return r.stdout.strip()


def _point_state(status_file: Path) -> str:
    try:
        return json.loads(status_file.read_text())["state"]
    except (OSError, ValueError, KeyError):
        return ""


def _poll(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_sigusr1_saves_requeues_and_resumes_on_real_slurm(tmp_path: Path):
    _slurm_or_skip()
    from train_helpers import write_fasta

    write_fasta(tmp_path / "train.fasta", n=240)
    exp = write_experiment(tmp_path)
    name = f"rq{os.getpid()}"
    sw = tmp_path / "sw.yaml"
    sw.write_text(
        f"# s\nexperiment: {exp}\nname: {name}\nout_dir: {tmp_path / 'sweeps'}\nlauncher: slurm\n"
        f"slurm: {REPO / 'experiments' / 'slurm' / 'cpu_local.yaml'}\n"
        "points: [{optim.lr: 0.002}]\noverrides: {trainer.max_steps: 200, trainer.val_check_interval: 100}\n"
    )
    r = subprocess.run([sys.executable, "-m", "lcplm", "sweep", str(sw)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = r.stdout.split("submitted SLURM array job ")[1].split(";")[0].strip()
    d = tmp_path / "sweeps" / name
    run = d / "000-lr0.002"
    try:
        _poll(lambda: (run / "checkpoints" / "last.ckpt").is_file(), 120, "the first checkpoint")
        # what `#SBATCH --signal=USR1@N` does before the time limit
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        _poll(lambda: _squeue_state(job) == "PENDING", 60, "the job to be requeued")
        # SLURM holds a requeued job for ~2 minutes; release it now. Not within the second of the
        # requeue: slurmd revoked the old launch credential at that second, and a launch stamped
        # with the same second is refused ("Job credential revoked": the job then fails outright).
        time.sleep(2.0)
        subprocess.run(["scontrol", "update", f"JobId={job}_0", "StartTime=now"], check=True)
        # finished = the point's own status is terminal; a job that has left the queue for 15 s
        # without that is over too (the assertion below then shows its log)
        status_file = d / "status" / "000-lr0.002.json"
        deadline, gone_since = time.monotonic() + 240, None
        while time.monotonic() < deadline and _point_state(status_file) not in ("done", "failed"):
            if _squeue_state(job) == "":
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 15:
                    break
            else:
                gone_since = None
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job], check=False)
    log = "\n".join(p.read_text() for p in (d / "slurm").glob("*.out"))
    status = json.loads((d / "status" / "000-lr0.002.json").read_text())
    assert status["state"] == "done" and status["slurm_restarts"] == 1, (status, log[-3000:])
    assert f"requeued SLURM job {job}_0" in log and "Restored all states from the checkpoint" in log
    assert json.loads((run / "results.json").read_text())["global_step"] == 200
