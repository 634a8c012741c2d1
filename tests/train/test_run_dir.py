"""The run directory: one writer at a time, kills during the first checkpoint, resume semantics
(what may change, the learning rate after a NaN stop, the history in config.yaml), checkpoint
pile-up, the validation due at a SIGTERM step, a full disk, runs without validation data."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported at collection: its log handler must bind the real stderr, not a test's capture)
import pytest
import torch
import yaml

from lcplm.__main__ import main as cli
from lcplm.tasks.optim import warmup_cosine

from train_helpers import REPO, run_worker, write_experiment


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _records(prefix: Path) -> dict[int, dict]:
    path = Path(f"{prefix}.rank0.jsonl")
    return {rec["step"]: rec for rec in map(json.loads, path.read_text().splitlines())}


def _ckpt_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _history(run: Path) -> list[dict]:
    return yaml.safe_load((run / "config.yaml").read_text())["history"]


# -- the lock ------------------------------------------------------------------------------

def _run_lock(directory: Path):
    from lcplm.train.run_dir import RunLock

    return RunLock(directory)


_HOLD_LOCK = """
import sys, time
from lcplm.train.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(directory: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_locked_run_directory_is_refused_naming_the_holder_and_a_killed_holder_is_cleared(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    holder = _hold_lock(run)
    try:
        _one_line_error(capsys, ["pretrain", str(exp)], f"in use by pid {holder.pid} on host {socket.gethostname()}")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # killed without releasing: its record is still in the file, the kernel dropped the lock
    assert json.loads((run / ".lock").read_text())["pid"] == holder.pid
    lock = _run_lock(run).acquire()
    assert lock.stale is not None and lock.stale["pid"] == holder.pid
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (run / ".lock").read_text() == ""  # released: the file stays, empty
    _run_lock(run).acquire().release()


def test_without_flock_an_exclusive_file_locks_and_a_dead_local_holder_is_stale(tmp_path: Path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    first = _run_lock(tmp_path).acquire()
    with pytest.raises(Exception, match=f"in use by pid {os.getpid()} .*no file locks: if that process is gone, delete"):
        _run_lock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / ".lock.held").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock.held").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "x"}))
    again = _run_lock(tmp_path).acquire()
    assert again.stale["pid"] == int(dead.stdout)
    again.release()


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_two_runs_started_together_on_one_directory_one_trains_the_other_is_refused(tmp_path: Path):
    exp = write_experiment(tmp_path)
    cmd = [sys.executable, "-m", "lcplm", "pretrain", str(exp), "trainer.max_steps=40", "run.save_every_n_steps=20"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], [o[1][-2000:] for o in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    err = outs[loser][1].strip().splitlines()
    assert f"in use by pid {procs[winner].pid}" in err[-1] and "Traceback" not in outs[loser][1], err
    run = tmp_path / "runs" / "run"
    # everything in the directory is the winner's: one segment, its pid, its results
    hist = _history(run)
    assert len(hist) == 1 and hist[0]["pid"] == procs[winner].pid and hist[0]["status"] == "finished"
    assert json.loads((run / "results.json").read_text())["global_step"] == 40


# -- a kill during the first checkpoint write --------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_kill_while_writing_the_first_checkpoint_file_leaves_a_directory_a_fresh_run_accepts(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    r = run_worker([str(exp), "--fault", "kill-in-save", "--at", "1"])
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".tmp")] == []
    _one_line_error(capsys, ["pretrain", str(exp), "--resume"], "no checkpoint in", "start the run without --resume")
    r = run_worker([str(exp)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["global_step"] == 6
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the killed writer's temporary file is gone


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_kill_between_the_first_step_file_and_last_ckpt_resumes_from_the_step_file(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    r = run_worker([str(exp), "--fault", "kill-in-save", "--at", "2"])  # step0000003.ckpt done, last.ckpt half
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert [p.name for p in (run / "checkpoints").glob("*.ckpt")] == ["step0000003.ckpt"]
    _one_line_error(capsys, ["pretrain", str(exp)], "already has checkpoints", "--resume")
    r = run_worker([str(exp), "--record", str(tmp_path / "resumed"), "run.resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(_records(tmp_path / "resumed")) == [4, 5, 6]
    assert _history(run)[-1]["resumed_from"].endswith("step0000003.ckpt")


# -- resume semantics ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_nan_stop_then_the_advised_lower_learning_rate_takes_effect_on_resume(tmp_path: Path):
    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    r = run_worker([str(exp), "--fault", "nan", "--at", "4"])
    assert r.returncode != 0 and "training loss is nan at global step 4" in r.stderr
    advised = re.search(r"--resume optim\.lr=([0-9.e+-]+)\)", r.stderr)
    assert advised, r.stderr[-2000:]
    new_lr = float(advised.group(1))
    old_lr = yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"]
    assert new_lr < old_lr
    r = run_worker([str(exp), "--record", str(tmp_path / "resumed"), "run.resume=true", f"optim.lr={new_lr}"])
    assert r.returncode == 0, r.stderr[-3000:]
    recs = _records(tmp_path / "resumed")
    assert sorted(recs) == [4, 5, 6] and all(torch.isfinite(torch.tensor(v["loss"])) for v in recs.values())
    for step, rec in recs.items():
        # the rate of optimizer step s is lr * multiplier(s - 1): warm-up 2, cosine over 6 steps to 0.1
        assert rec["lr"] == pytest.approx(new_lr * warmup_cosine(step - 1, 2, 6, 0.1), rel=1e-9), (step, rec)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == new_lr
    first, second = saved["history"]
    assert first["start_step"] == 0 and first["end_step"] == 4 and first["status"].startswith("failed: FloatingPointError")
    assert second["start_step"] == 3 and second["resumed_from"].endswith("last.ckpt")
    assert second["changed"] == {"optim.lr": {"from": old_lr, "to": new_lr}} and second["status"] == "finished"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-step run (one checkpoint) to resume from, in its own folder."""
    tmp = tmp_path_factory.mktemp("finished")
    exp = write_experiment(tmp)
    text = exp.read_text().replace("max_steps: 6", "max_steps: 3")
    exp.write_text(text)
    from lcplm.config import PretrainConfig, load_config
    from lcplm.train.run import train

    train(load_config(exp, [], PretrainConfig))
    return tmp


def _copy_run(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(experiment, run dir) of a private copy of the finished run."""
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    exp = tmp_path / "exp.yaml"
    exp.write_text((finished / "exp.yaml").read_text().replace(str(finished / "runs"), str(tmp_path / "runs")))
    return exp, tmp_path / "runs" / "run"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.d_model=48", "cannot change model.d_model 64 -> 48"),
        ("data.max_tokens=1024", "cannot change data.max_tokens 512 -> 1024"),
        ("run.seed=1", "cannot change run.seed 0 -> 1"),
    ],
)
def test_resume_refuses_changed_model_data_or_seed_in_one_line(finished_run: Path, tmp_path: Path, capsys, override, fragment):
    exp, run = _copy_run(finished_run, tmp_path)
    before = (run / "config.yaml").read_text()
    _one_line_error(capsys, ["pretrain", str(exp), "--resume", override], fragment)
    assert (run / "config.yaml").read_text() == before


def test_resume_with_new_limits_and_workers_runs_and_records_the_changes(finished_run: Path, tmp_path: Path, capsys):
    exp, run = _copy_run(finished_run, tmp_path)
    assert cli(["pretrain", str(exp), "--resume", "trainer.max_steps=5", "data.num_workers=1", "optim.grad_clip=0.5"]) == 0
    assert json.loads((run / "results.json").read_text())["global_step"] == 5
    hist = _history(run)
    assert [h["start_step"] for h in hist] == [0, 3] and [h["end_step"] for h in hist] == [3, 5]
    assert hist[1]["changed"] == {
        "trainer.max_steps": {"from": 3, "to": 5},
        "data.num_workers": {"from": 0, "to": 1},
        "optim.grad_clip": {"from": 1.0, "to": 0.5},
        "run.out_dir": {"from": str(finished_run / "runs"), "to": str(tmp_path / "runs")},  # the copy moved it
    }
    from lcplm.config import PretrainConfig, load_config

    again = load_config(run / "config.yaml", [], PretrainConfig)  # history is not a setting
    assert again.trainer.max_steps == 5


# -- every bad checkpoint is one line -------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def _bad_checkpoint(kind: str, good: Path, dest: Path) -> None:
    real = torch.load(good, weights_only=True)
    if kind == "empty":
        dest.write_bytes(b"")
    elif kind == "truncated":
        dest.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        dest.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "text":
        dest.write_text("model: not a checkpoint\n")
    elif kind == "malicious":
        torch.save({"state_dict": {}, "payload": _RunsCode()}, dest)
    elif kind == "list":
        torch.save([1, 2, 3], dest)
    elif kind == "no_state_dict":
        torch.save({"epoch": 0, "global_step": 3}, dest)
    elif kind == "weights_only":
        torch.save({"state_dict": real["state_dict"]}, dest)
    elif kind == "other_model":
        real["hyper_parameters"]["config"]["model"] = {"name": "sparse_transformer"}
        real["state_dict"] = {"model.embed.weight": torch.zeros(40, 8)}
        torch.save(real, dest)
    elif kind == "wrong_shapes":
        del real["hyper_parameters"]
        real["state_dict"] = {k: torch.zeros(3) for k in real["state_dict"]}
        torch.save(real, dest)
    elif kind == "folder":
        dest.mkdir()
    else:
        raise AssertionError(kind)


BAD = {
    "empty": "empty file (0 bytes)",
    "truncated": "cannot read checkpoint",
    "random": "cannot read checkpoint",
    "text": "cannot read checkpoint",
    "malicious": "refused: it holds Python objects",
    "list": "not an lcplm/Lightning checkpoint (a list)",
    "no_state_dict": "not an lcplm/Lightning checkpoint (a dict without 'state_dict')",
    "weights_only": "weights without training state",
    "other_model": "is a sparse_transformer model",
    "wrong_shapes": "weights do not fit this model",
    "folder": "a folder, not a checkpoint file",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_resume_from_a_bad_last_ckpt_is_one_line_naming_it(finished_run: Path, tmp_path: Path, capsys, kind: str, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp, run = _copy_run(finished_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    good = tmp_path / "good.ckpt"
    last.rename(good)
    _bad_checkpoint(kind, good, last)
    _one_line_error(capsys, ["pretrain", str(exp), "--resume"], str(last), BAD[kind])
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "malicious", "other_model", "wrong_shapes", "folder"])
def test_init_from_and_model_loading_of_a_bad_checkpoint_are_one_line(finished_run: Path, tmp_path: Path, capsys, kind: str):
    from lcplm.errors import UserError
    from lcplm.train.checkpoint import load_model

    bad = tmp_path / "bad.ckpt"
    _bad_checkpoint(kind, finished_run / "runs" / "run" / "checkpoints" / "last.ckpt", bad)
    # a folder is a model directory to init_from (lcplm.models.io): it must hold config.json
    expected = {"other_model": "weights do not fit this model", "folder": "no config.json"}.get(kind, BAD[kind])
    exp = finished_run / "exp.yaml"
    _one_line_error(capsys, ["pretrain", str(exp), f"run.out_dir={tmp_path / 'runs'}", f"run.init_from={bad}"], str(bad), expected)
    with pytest.raises(UserError) as e:
        load_model(bad)
    assert len(str(e.value).splitlines()) == 1 and str(bad) in str(e.value)


# -- checkpoints do not pile up; a SIGTERM does not skip a due validation -------------------------


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_restarts_keep_one_step_checkpoint(tmp_path: Path):
    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    # killed while writing last.ckpt at step 6: step0000006.ckpt is complete, last.ckpt is step 3's
    r = run_worker([str(exp), "--fault", "kill-in-save", "--at", "5"])
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    r = run_worker([str(exp), "run.resume=true"])  # redoes steps 4-6 and saves step 6 again
    assert r.returncode == 0, r.stderr[-3000:]
    assert _ckpt_names(run) == ["best.ckpt", "last.ckpt", "step0000006.ckpt"]
    # a resume with another checkpoint interval (Lightning forgets its earlier files then)
    r = run_worker([str(exp), "run.resume=true", "trainer.max_steps=8", "run.save_every_n_steps=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _ckpt_names(run) == ["best.ckpt", "last.ckpt", "step0000008.ckpt"]


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
def test_sigterm_at_a_validation_step_validates_saves_and_resume_matches_an_uninterrupted_run(tmp_path: Path):
    from train_helpers import write_fasta

    write_fasta(tmp_path / "train.fasta", n=240)  # a long epoch: step 3 is mid-epoch
    exp = write_experiment(tmp_path)
    r = run_worker([str(exp), "--record", str(tmp_path / "full"), "run.name=full"])
    assert r.returncode == 0, r.stderr[-3000:]
    full = _records(tmp_path / "full")
    # SIGTERM while step 3 runs; step 3 is due a validation (val_check_interval 3)
    r = run_worker([str(exp), "--record", str(tmp_path / "a"), "--fault", "sigterm-in-step", "--at", "3"])
    assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
    ckdir = tmp_path / "runs" / "run" / "checkpoints"
    assert torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"] == 3
    assert torch.load(ckdir / "best.ckpt", weights_only=True)["global_step"] == 3  # the validation ran
    r = run_worker([str(exp), "--record", str(tmp_path / "b"), "run.resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = _records(tmp_path / "b")
    assert sorted(resumed) == [4, 5, 6]
    for step, rec in resumed.items():
        assert rec["loss"] == full[step]["loss"], (step, rec, full[step])
    res = [json.loads((tmp_path / "runs" / n / "results.json").read_text())["val_loss"] for n in ("full", "run")]
    assert res[0] == res[1]


# -- a full disk, no validation data --------------------------------------------------------------


def test_disk_full_inside_a_checkpoint_callback_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys, monkeypatch
):
    from lcplm import files

    exp = write_experiment(tmp_path)
    run = tmp_path / "runs" / "run"
    real_open = open
    checkpoint_writes = [0]

    class _Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def filling_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if ".ckpt." in str(path) and "w" in mode:
            checkpoint_writes[0] += 1
            if checkpoint_writes[0] >= 4:  # step 3's step file, last.ckpt and best.ckpt fit; then the disk is full
                return _Full(f)
        return f

    monkeypatch.setattr(files, "open", filling_open, raising=False)
    err = _one_line_error(capsys, ["pretrain", str(exp)], "no space left on the device writing", "step0000006.ckpt",
                          "needs about", "MiB free there")
    assert str(run / "checkpoints") in err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert _history(run)[-1]["status"].startswith("failed: UserError: no space left")


def test_no_validation_data_trains_and_reports_validation_as_absent(tmp_path: Path, capsys):
    exp = write_experiment(tmp_path)
    capsys.readouterr()
    assert cli(["pretrain", str(exp), "data.val_fraction=0", "trainer.max_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "without validation data" in out
    res = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())
    assert res["global_step"] == 4 and res["val_loss"] is None and res["val_mask_token_loss"] is None
    assert "unigram_loss" not in res


def test_a_genome_set_without_a_held_out_genome_trains_without_validation(tmp_path: Path, capsys):
    pytest.importorskip("pyrodigal_gv")
    capsys.readouterr()
    rc = cli([
        "pretrain", str(REPO / "experiments" / "genome" / "tiny_single_protein.yaml"),
        "data.genbank=[]", "data.fasta=[package:pyrodigal_gv/tests/phage_Agate.faa]", "data.val_genomes=[]",
        "data.val_fraction=0.2", "data.max_tokens=512", "model.num_layers=1", "model.hidden=32", "model.heads=2",
        "model.ffn=64", "trainer.max_steps=2", "trainer.max_time_minutes=null", "trainer.num_threads=1",
        "trainer.progress_bar=false", f"run.out_dir={tmp_path}",
    ])
    assert rc == 0
    res = json.loads((tmp_path / "genome_tiny_single_protein" / "results.json").read_text())
    assert res["global_step"] == 2 and res["val_loss"] is None


def test_validation_and_checkpoint_intervals_count_optimizer_steps_under_accumulation(tmp_path: Path):
    from lightning.pytorch.callbacks import Callback

    from lcplm.config import PretrainConfig, load_config
    from lcplm.train.run import train

    class ValidationSteps(Callback):
        def __init__(self):
            self.steps: list[int] = []

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.steps.append(trainer.global_step)

    seen = ValidationSteps()
    exp = write_experiment(tmp_path)  # val_check_interval 3, save_every_n_steps 3, max_steps 6
    train(load_config(exp, ["trainer.accumulate_grad_batches=2"], PretrainConfig), extra_callbacks=[seen])
    assert seen.steps[:2] == [3, 6]  # (then the final validation of the finished run)
    assert _ckpt_names(tmp_path / "runs" / "run") == ["best.ckpt", "last.ckpt", "step0000006.ckpt"]
