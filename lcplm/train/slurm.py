"""SLURM: resource configs, generated ``sbatch`` array scripts, and preemption handling.

Resources live in ``experiments/slurm/*.yaml`` (:class:`SlurmConfig`); hyperparameters never
appear in a generated script: each array task runs ``lcplm sweep --run-point SWEEP_DIR
$SLURM_ARRAY_TASK_ID``, which reads that point's resolved config from the sweep directory.
Multi-node runs start one task per device through ``srun``; Lightning's SLURM environment
reads ranks and the master address from SLURM's variables.

Preemption (:class:`PreemptionCallback`): ``#SBATCH --signal=USR1@N`` delivers SIGUSR1 to
every rank N seconds before the time limit; SIGTERM arrives on preemption or cancellation.
At the end of the current optimizer step all ranks agree that a signal arrived; when that
step is due a validation, the validation runs first (``trainer.limit_val_batches`` bounds its
time: keep it well inside the grace period, or ``signal_before_end_s``); then all ranks save
``last.ckpt`` (atomically), rank 0 requeues the job (SIGUSR1 only: a SIGTERM may be a
``scancel``, and a preempting SLURM requeues by itself when configured to), and the process
exits with status 128 + signal. The requeued job resumes from ``last.ckpt`` without repeating
that validation.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lcplm.errors import UserError


@dataclass
class SlurmConfig:
    """Resources of one run (one array task); validated from ``experiments/slurm/*.yaml``."""

    partition: Optional[str] = None  # --partition; None: the cluster's default partition
    account: Optional[str] = None  # --account
    qos: Optional[str] = None  # --qos
    time_minutes: int = 60  # --time: wall-clock limit of one array task
    nodes: int = 1  # --nodes: must equal trainer.num_nodes
    tasks_per_node: int = 1  # --ntasks-per-node: one process per device, must equal trainer.devices
    gpus_per_node: int = 0  # --gpus-per-node; 0 for CPU runs
    cpus_per_task: int = 1  # --cpus-per-task: data loading workers + intra-op threads
    mem_gb: Optional[int] = None  # --mem per node in GB; None: the partition's default
    max_parallel: int = 0  # array throttle (--array=...%N); 0: no limit
    signal_before_end_s: int = 300  # SIGUSR1 this long before the time limit: save last.ckpt, requeue
    requeue: bool = True  # allow the job to be requeued (after SIGUSR1, or by a preempting SLURM)
    constraint: Optional[str] = None  # --constraint, e.g. a GPU type
    extra_sbatch: list[str] = field(default_factory=list)  # further sbatch options, verbatim ("--exclusive")
    setup: list[str] = field(default_factory=list)  # shell lines before srun: environment only (module load, venv)
    python: Optional[str] = None  # interpreter on the compute nodes; None: the one running `lcplm sweep`


def load_slurm_config(path: str | Path) -> SlurmConfig:
    from lcplm.config import load_config

    cfg = load_config(path, schema=SlurmConfig)
    for key in ("time_minutes", "nodes", "tasks_per_node", "cpus_per_task"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{path}: {key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.gpus_per_node < 0 or cfg.max_parallel < 0 or cfg.signal_before_end_s < 0:
        raise UserError(f"{path}: gpus_per_node, max_parallel and signal_before_end_s must be >= 0")
    for opt in cfg.extra_sbatch:
        if not opt.startswith("-"):
            raise UserError(f"{path}: extra_sbatch entries are sbatch options starting with '-', got {opt!r}")
    return cfg


def check_resources(slurm: SlurmConfig, trainer_cfg: Any, where: str) -> None:
    """One SLURM task per device: ``nodes``/``tasks_per_node`` must match the trainer section."""
    if slurm.nodes != trainer_cfg.num_nodes or slurm.tasks_per_node != trainer_cfg.devices:
        raise UserError(
            f"{where}: slurm nodes={slurm.nodes}, tasks_per_node={slurm.tasks_per_node} but trainer "
            f"num_nodes={trainer_cfg.num_nodes}, devices={trainer_cfg.devices} (one task per device)"
        )
    if slurm.gpus_per_node and slurm.gpus_per_node != slurm.tasks_per_node:
        raise UserError(f"{where}: gpus_per_node={slurm.gpus_per_node} must equal tasks_per_node={slurm.tasks_per_node}")


def _array_spec(indices: list[int], max_parallel: int) -> str:
    spec = ",".join(str(i) for i in indices)
    if len(indices) > 1 and indices == list(range(indices[0], indices[-1] + 1)):
        spec = f"{indices[0]}-{indices[-1]}"
    return spec + (f"%{max_parallel}" if max_parallel > 0 else "")


def render_array_script(
    slurm: SlurmConfig, sweep_dir: Path, job_name: str, indices: list[int], workdir: Path | None = None
) -> str:
    """The ``sbatch`` script for the array tasks ``indices`` of the sweep in ``sweep_dir``."""
    sweep_dir = Path(sweep_dir).resolve()
    workdir = (workdir or Path.cwd()).resolve()
    python = slurm.python or sys.executable
    opts = [
        f"--job-name={job_name}",
        f"--array={_array_spec(indices, slurm.max_parallel)}",
        f"--nodes={slurm.nodes}",
        f"--ntasks-per-node={slurm.tasks_per_node}",
        f"--cpus-per-task={slurm.cpus_per_task}",
        f"--time={slurm.time_minutes}",
        f"--output={sweep_dir}/slurm/%A_%a.out",
        "--open-mode=append",  # a requeued task appends to the same log
        f"--chdir={workdir}",
        "--requeue" if slurm.requeue else "--no-requeue",
    ]
    if slurm.signal_before_end_s > 0:
        # no "B:" prefix: the signal goes to every task of the srun step, i.e. every rank
        opts.append(f"--signal=USR1@{slurm.signal_before_end_s}")
    if slurm.gpus_per_node:
        opts.append(f"--gpus-per-node={slurm.gpus_per_node}")
    if slurm.mem_gb:
        opts.append(f"--mem={slurm.mem_gb}G")
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key):
            opts.append(f"--{key}={getattr(slurm, key)}")
    opts += list(slurm.extra_sbatch)
    lines = ["#!/bin/bash", f"# generated by `lcplm sweep`: resources only; each point's config is in {sweep_dir}/points/"]
    lines += [f"#SBATCH {o}" for o in opts]
    lines += ["set -eo pipefail", *slurm.setup]
    cmd = [python, "-m", "lcplm", "sweep", "--run-point", str(sweep_dir)]
    # --kill-on-bad-exit: one rank failing ends the step instead of leaving the others waiting
    lines.append("srun --kill-on-bad-exit=1 " + " ".join(shlex.quote(c) for c in cmd) + ' "$SLURM_ARRAY_TASK_ID"')
    return "\n".join(lines) + "\n"


def slurm_available() -> str | None:
    """None when ``sbatch`` can reach a controller, else why not (one line)."""
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "sinfo not found (SLURM client tools are not installed)"
    except subprocess.TimeoutExpired:
        return "sinfo timed out (no SLURM controller answering)"
    if r.returncode != 0:
        return f"sinfo failed: {(r.stderr or r.stdout).strip().splitlines()[0] if (r.stderr or r.stdout).strip() else r.returncode}"
    if not re.search(r"^(idle|mixed|allocated|completing)", r.stdout, re.M):
        return f"no usable SLURM node (states: {' '.join(sorted(set(r.stdout.split()))) or 'none'})"
    return None


def submit(script_path: Path, wait: bool = False) -> str:
    """``sbatch`` the script; returns the job id. ``wait``: block until every task has ended."""
    cmd = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + [str(script_path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("sbatch not found: SLURM is not installed here (use launcher=local)") from None
    job_id = r.stdout.strip().split(";")[0].splitlines()[0] if r.stdout.strip() else ""
    if not job_id:
        err = (r.stderr or "").strip().splitlines()
        raise UserError(f"sbatch {script_path} failed: {err[-1] if err else f'exit status {r.returncode}'}")
    return job_id


def current_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for array tasks."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_current_job() -> str:
    """Requeue this SLURM job (its running instance is then ended by SLURM); returns a message."""
    job = current_job_id()
    if job is None:
        return "not a SLURM job: not requeued (resume with --resume)"
    r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if r.returncode != 0:
        return f"scontrol requeue {job} failed: {(r.stderr or r.stdout).strip()}"
    return f"requeued SLURM job {job}"


class PreemptionCallback(Checkpoint):
    """SIGUSR1 / SIGTERM -> save ``last.ckpt`` at the end of the step -> requeue -> exit.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs its hooks after the
    ``ModelCheckpoint`` s' (it moves checkpoint callbacks to the end, in order): a step's periodic
    checkpoint and a validation's best checkpoint are written before the exit.

    Signal handlers only set a flag (saving inside a handler could interrupt a collective);
    at the end of each optimizer step the ranks combine their flags (one tiny all-reduce, only
    when world size > 1), so all of them save together. If a validation is due at that step,
    the save waits for its end (``on_validation_end``), so the signal never skips it; should it
    not come, the save happens at the end of the next step at the latest. A SIGTERM that
    Lightning turns into its own exit at the next step (it broadcasts rank 0's flag) is saved
    from ``on_exception``.
    """

    def __init__(self, last_ckpt: str | Path, requeue_on: tuple[int, ...] = (signal.SIGUSR1,)) -> None:
        self.last_ckpt = Path(last_ckpt)
        self.requeue_on = requeue_on
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._saved = False
        self._pending: int = 0  # a signal whose save waits for this step's validation

    # -- signals ------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self.received, self._saved, self._pending = None, False, 0
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning installs its own SIGTERM handler after ``setup``; it would end the run at
        # the next step boundary, or abort a validation after one batch, without our save.
        # SIGTERM is this callback's alone during training (the all-reduce at each step end
        # tells every rank); Lightning restores its saved handlers at teardown, then we ours.
        if threading.current_thread() is threading.main_thread() and self._previous:
            signal.signal(signal.SIGTERM, self._handler)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for sig, handler in self._previous.items():
            # SIGUSR1's default action ends the process: one arriving after training (final
            # validation, results) must not kill a run whose last.ckpt is already complete
            if handler is not None and not (sig == signal.SIGUSR1 and handler == signal.SIG_DFL):
                signal.signal(sig, handler)
        self._previous = {}

    # -- save, requeue, exit --------------------------------------------------------------
    def _save_and_exit(self, trainer: Any, signum: int) -> None:
        trainer.save_checkpoint(str(self.last_ckpt), weights_only=False)  # full state: resumable
        self._saved = True
        msg = ""
        if trainer.is_global_zero:
            msg = requeue_current_job() if signum in self.requeue_on else "not requeued (SIGTERM)"
            print(
                f"lcplm: received {signal.Signals(signum).name}: saved {self.last_ckpt} at step "
                f"{trainer.global_step}; {msg}",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + int(signum))

    @staticmethod
    def _ends_optimizer_step(trainer: Any) -> bool:
        """Whether the micro-batch that just ended completed an optimizer step (same on all ranks)."""
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return progress.current.ready % trainer.accumulate_grad_batches == 0 or bool(progress.is_last_batch)

    @staticmethod
    def _validation_due(trainer: Any) -> bool:
        """Whether Lightning validates right after this batch (lcplm passes an int
        ``val_check_interval`` and ``check_val_every_n_epoch=None``: every ``val_check_batch`` batches)."""
        every = trainer.val_check_batch
        if not trainer.enable_validation or not isinstance(every, int) or every < 1:
            return False
        return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._pending:  # the validation it waited for did not come: save now
            self._save_and_exit(trainer, self._pending)
        if not self._ends_optimizer_step(trainer):
            return
        signum = int(self.received or 0)
        if trainer.world_size > 1:
            # all ranks learn the same signal (0: none), whichever ranks it reached
            t = torch.tensor([signum], device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(t, reduce_op="max").item())
        if signum and self._validation_due(trainer):
            self._pending = signum
        elif signum:
            self._save_and_exit(trainer, signum)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._pending and not trainer.sanity_checking:
            self._save_and_exit(trainer, self._pending)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._pending:
            self._save_and_exit(trainer, self._pending)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and not self._saved:
            trainer.save_checkpoint(str(self.last_ckpt), weights_only=False)  # full state: resumable
            self._saved = True
            if trainer.is_global_zero:
                print(
                    f"lcplm: received SIGTERM: saved {self.last_ckpt} at step {trainer.global_step}; not requeued",
                    file=sys.stderr,
                    flush=True,
                )
            # Lightning re-raises this exception (a SystemExit without a status): exit 143 as
            # from the batch-end path, not 0, so a killed run never looks like a finished one
            exception.code = 128 + int(signal.SIGTERM)
