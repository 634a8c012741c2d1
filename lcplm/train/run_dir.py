"""The run directory of ``lcplm pretrain``: one writer at a time, what a run resumes from, and
the record of its segments.

Layout of ``<run.out_dir>/<run.name>/``::

    .lock                    held by the process training into the directory (see RunLock)
    config.yaml              the settings of the current segment, plus ``history:`` (one entry per segment)
    checkpoints/last.ckpt    the resume point, written atomically (every run.save_every_n_steps, on
                             SIGUSR1/SIGTERM, at the end)
    checkpoints/step<N>.ckpt the newest periodic checkpoint (only one is kept)
    checkpoints/best.ckpt    the lowest validation loss so far
    tb/                      TensorBoard events
    results.json             final numbers

Rules (:func:`open_run_dir`):

- **One writer.** Global rank 0 holds an exclusive lock on ``.lock`` for the whole run; a second
  run on the directory is refused in one line naming the holder's pid and host. The lock is an
  ``flock``, which the kernel releases when its holder dies, so a killed run never leaves the
  directory locked; its pid/host record stays in the file and is reported as a cleared stale lock.
- **Fresh or resume.** A fresh run is refused when the directory holds a complete checkpoint
  (``--resume`` continues it, ``run.overwrite=true`` deletes the old run's checkpoints, events and
  results first). ``--resume`` continues from ``last.ckpt``, or, when a run was killed after
  writing its first ``step<N>.ckpt`` but before ``last.ckpt``, from the newest ``step<N>.ckpt``.
  Temporary files of killed writers never count as checkpoints (they are deleted), so a kill
  during the first checkpoint write leaves a directory that a fresh run accepts.
- **What may change on resume.** The model, the data (except ``data.num_workers`` and
  ``data.cache_dir``), the task and ``run.seed`` define what the checkpoint is: a resume with any
  of them changed is refused. Everything else (``optim.*`` such as the learning rate, ``trainer.*``
  such as ``max_steps``, the other ``run.*`` keys) takes effect in the new segment; the optimizer
  and scheduler restored from the checkpoint are retuned to the new ``optim`` values
  (:func:`lcplm.tasks.optim.apply_optim_config`).
- **History.** ``config.yaml`` holds the current segment's settings (``lcplm pretrain
  config.yaml`` reruns them) and ``history``: per segment its start step, the checkpoint it
  resumed from, the settings it changed, host, pid, times, and how it ended.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from lcplm.config import RUN_HISTORY_KEY, PretrainConfig, to_dict, to_yaml
from lcplm.errors import UserError
from lcplm.files import atomic_write_text, remove_stale_temps_in

LOCK_NAME = ".lock"
# launchers' rank variables: torchrun, srun, Lightning's DDP children, MPI
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
STEP_CHECKPOINT = re.compile(r"step(\d+)(?:-v\d+)?\.ckpt")

# Settings that define what a checkpoint is: (section, keys that MAY change; None: none may).
# Sections not listed here (optim, trainer) may change entirely.
FROZEN_ON_RESUME: dict[str, frozenset[str] | None] = {
    "model": None,
    "task": None,
    "data": frozenset({"num_workers", "cache_dir"}),
}
FROZEN_RUN_KEYS = frozenset({"seed"})
# how a segment was started, not what it trains with: never reported as a change
INVOCATION_KEYS = frozenset({"run.resume", "run.overwrite", "run.init_from"})


def launch_rank_from_env() -> int:
    """0 for the process that is (or will launch) global rank 0, else a positive number.

    Read from the launcher's environment before any Trainer exists: Lightning's DDP children
    carry ``LOCAL_RANK``/``NODE_RANK``, ``srun`` tasks ``SLURM_PROCID``, torchrun ``RANK``.
    """
    ranks = [int(v) for var in RANK_VARIABLES if (v := os.environ.get(var, "").strip()).isdigit()]
    return max(ranks, default=0)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (its pid is not recorded yet)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


class RunLock:
    """Exclusive lock on a run directory (``<dir>/.lock``).

    ``flock`` on the file; the file also records the holder (pid, host, start time, command) for
    the refusal message. A record found on acquiring was left by a holder that died (``stale``;
    the run reports it once it goes ahead). On a file system without ``flock`` (some cluster file systems) the
    lock is a file created exclusively (``.lock.held``), removed on release; a record there
    whose pid is gone on this host is stale and cleared; one from another host is reported
    with the path to delete once that process is gone.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.stale: dict[str, Any] | None = None  # the record a killed holder left behind
        self._fd: int | None = None
        self._held_file: Path | None = None

    def _record(self) -> bytes:
        rec = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "argv": sys.argv[:8]}
        return (json.dumps(rec) + "\n").encode()

    @staticmethod
    def _parse(data: bytes) -> dict[str, Any] | None:
        try:
            rec = json.loads(data.decode() or "null")
        except (ValueError, UnicodeDecodeError):
            return {"pid": "?", "host": "?", "started": "?"} if data.strip() else None
        return rec if isinstance(rec, dict) else None

    def acquire(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise UserError(
                f"run directory {self.directory} is in use by {_describe(holder)}: "
                "wait for that run to end, or choose another run.name"
            ) from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return self._acquire_exclusive_file()
            raise
        # a record left in the file means its holder died without releasing (the kernel dropped its flock)
        self.stale = self._parse(os.pread(fd, 4096, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._record(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_exclusive_file(self) -> "RunLock":
        held = self.directory / (LOCK_NAME + ".held")
        for _ in range(3):
            try:
                fd = os.open(held, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = self._parse(held.read_bytes())
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                same_host = holder is not None and holder.get("host") == socket.gethostname()
                if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                    self.stale = holder
                    held.unlink(missing_ok=True)
                    continue
                raise UserError(
                    f"run directory {self.directory} is in use by {_describe(holder)} (this file system has no "
                    f"file locks: if that process is gone, delete {held})"
                ) from None
            try:
                os.write(fd, self._record())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._held_file = held
            return self
        raise UserError(f"run directory {self.directory}: could not take its lock {held}; try again")

    def release(self) -> None:
        if self._fd is not None:
            # an empty file means "released"; the file itself stays (unlinking a locked file
            # would let two later runs lock two different files of the same name)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # drops the flock
            self._fd = None
        if self._held_file is not None:
            self._held_file.unlink(missing_ok=True)
            self._held_file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- checkpoints in the directory ------------------------------------------------------


def checkpoint_dir(out: Path) -> Path:
    return Path(out) / "checkpoints"


def complete_checkpoints(out: Path) -> list[Path]:
    """Every complete checkpoint file of the run (temporary files of writers excluded)."""
    d = checkpoint_dir(out)
    return sorted(p for p in d.glob("*.ckpt") if not p.name.startswith(".")) if d.is_dir() else []


def resume_checkpoint(out: Path) -> Path | None:
    """What ``--resume`` continues from: ``last.ckpt``, else the newest ``step<N>.ckpt``, else None."""
    last = checkpoint_dir(out) / "last.ckpt"
    if last.exists():
        return last
    steps = [(int(m.group(1)), p) for p in complete_checkpoints(out) if (m := STEP_CHECKPOINT.fullmatch(p.name))]
    return max(steps)[1] if steps else None


# -- settings that may and may not change on resume --------------------------------------


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _frozen(key: str) -> bool:
    section, _, rest = key.partition(".")
    if section == "run":
        return rest in FROZEN_RUN_KEYS
    if section not in FROZEN_ON_RESUME:
        return False
    may_change = FROZEN_ON_RESUME[section]
    return may_change is None or rest.split(".")[0] not in may_change


def resume_changes(cfg: PretrainConfig, stored: dict[str, Any] | None, ckpt_path: Path) -> dict[str, dict[str, Any]]:
    """The settings the new segment changes relative to the checkpoint's, ``{key: {from, to}}``.

    ``stored``: the experiment config kept in the checkpoint (None or empty: not known, nothing
    compared). A changed setting that defines the checkpoint (model, data, task, seed) is a
    one-line UserError. Keys present on one side only (the schema grew) are not compared.
    """
    if not stored:
        return {}
    old, new = _flatten(stored), _flatten(to_dict(cfg))
    if old.get("model.name") != new.get("model.name") or old.get("data.name") != new.get("data.name"):
        raise UserError(
            f"--resume: {ckpt_path} is a {old.get('model.name')} model trained on {old.get('data.name')} data, "
            f"this experiment is a {new.get('model.name')} model on {new.get('data.name')} data: "
            "resume with the run's own experiment, or start a new run.name"
        )
    changed = {
        k: {"from": _plain(old[k]), "to": _plain(new[k])}
        for k in new
        if k in old and k not in INVOCATION_KEYS and _plain(old[k]) != _plain(new[k])
    }
    frozen = [k for k in changed if _frozen(k)]
    if frozen:
        shown = ", ".join(f"{k} {changed[k]['from']!r} -> {changed[k]['to']!r}" for k in frozen[:3])
        more = f" and {len(frozen) - 3} more" if len(frozen) > 3 else ""
        raise UserError(
            f"--resume: cannot change {shown}{more}: the model, data, task and run.seed of a run are fixed by "
            f"its checkpoint {ckpt_path} (what may change: optim.*, trainer.*, run.*, data.num_workers); "
            "start a new run.name (run.init_from=CHECKPOINT takes its weights)"
        )
    return changed


# -- the directory as a whole ---------------------------------------------------------------


@dataclass
class RunDirectory:
    """An opened run directory (see :func:`open_run_dir`)."""

    path: Path
    resume_from: Path | None = None
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    start_step: int = 0
    is_writer: bool = True  # global rank 0: writes config.yaml, results; holds the lock
    lock: RunLock | None = None

    def set_writer(self, is_global_zero: bool) -> None:
        """Follow the Trainer's view of the ranks (differs from :func:`launch_rank_from_env`
        only under a launcher that sets none of its variables)."""
        if is_global_zero and self.lock is None:
            self.lock = RunLock(self.path).acquire()
        elif not is_global_zero and self.lock is not None:
            self.lock.release()
            self.lock = None
        self.is_writer = is_global_zero

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def read_history(self) -> list[dict[str, Any]]:
        """The ``history`` list of the directory's config.yaml ([] when absent or unreadable)."""
        try:
            doc = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return []
        hist = doc.get(RUN_HISTORY_KEY) if isinstance(doc, dict) else None
        return [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []

    def write_config(self, cfg: PretrainConfig, history: list[dict[str, Any]]) -> None:
        header = (
            "# The settings of this run's latest segment (lcplm pretrain THIS_FILE reruns them) and, under\n"
            "# 'history', every segment: its start step, the checkpoint it resumed from, what it changed, how it ended.\n"
        )
        body = to_yaml(cfg) + yaml.safe_dump({RUN_HISTORY_KEY: history}, sort_keys=False, default_flow_style=None)
        atomic_write_text(self.config_path, header + body)

    def begin_segment(self, cfg: PretrainConfig) -> None:
        """Write config.yaml with this segment appended to the history (rank 0)."""
        if not self.is_writer:
            return
        history = self.read_history() if self.resume_from is not None else []
        stale = self.lock.stale if self.lock is not None else None
        if stale:  # said only once the run goes ahead, so that a refusal stays one line
            print(
                f"lcplm: cleared the stale lock of {self.path} left by {_describe(stale)}, which ended without releasing it",
                file=sys.stderr,
                flush=True,
            )
        history.append({
            "segment": len(history) + 1,
            "start_step": self.start_step,
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "changed": self.changes,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _now(),
            **({"previous_holder_killed": {k: stale.get(k) for k in ("pid", "host", "started")}} if stale else {}),
        })
        self.write_config(cfg, history)

    def end_segment(self, cfg: PretrainConfig, end_step: int | None, status: str) -> None:
        """Record how this segment ended in config.yaml's history (rank 0; best effort when
        the failure itself was the disk)."""
        if not self.is_writer:
            return
        history = self.read_history()
        if not history:
            return
        history[-1].update({"end_step": end_step, "ended": _now(), "status": status})
        try:
            self.write_config(cfg, history)
        except (OSError, UserError):
            pass


def _clear_previous_run(out: Path) -> None:
    """run.overwrite: delete the previous run's checkpoints, events and results."""
    for p in complete_checkpoints(out):
        p.unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    for name in ("results.json",):
        (out / name).unlink(missing_ok=True)


@contextlib.contextmanager
def open_run_dir(cfg: PretrainConfig, out: Path, is_writer: bool) -> Iterator[RunDirectory]:
    """Lock (rank 0) and check the run directory; yield what the run resumes from.

    Every rank decides alike, from the files alone: under ``--resume`` the checkpoint of
    :func:`resume_checkpoint`, else none. Only the writer (global rank 0) locks, deletes
    temporary files of killed writers and, with ``run.overwrite``, the previous run's files.
    The checkpoint's compatibility (:func:`resume_changes`) is checked by the caller, which
    has the model.
    """
    out = Path(out)
    rd = RunDirectory(out, is_writer=is_writer, lock=RunLock(out).acquire() if is_writer else None)
    try:
        ckdir = checkpoint_dir(out)
        if is_writer and ckdir.is_dir():
            remove_stale_temps_in(ckdir)
        if cfg.run.resume:
            rd.resume_from = resume_checkpoint(out)
            if rd.resume_from is None:
                raise UserError(
                    f"--resume: no checkpoint in {ckdir} (the run never completed one): start the run without --resume"
                )
        elif complete_checkpoints(out):
            if not cfg.run.overwrite:
                raise UserError(
                    f"run directory {out} already has checkpoints: pass --resume to continue it, "
                    "run.name=<new name> for a new run, or run.overwrite=true to delete them and start again"
                )
            if is_writer:
                _clear_previous_run(out)
        if is_writer:
            ckdir.mkdir(parents=True, exist_ok=True)
        yield rd
    finally:
        if rd.lock is not None:
            rd.lock.release()
