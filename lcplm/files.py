"""The one atomic-write helper: every file lcplm writes for a user goes through here.

A write goes to a uniquely named temporary file in the target's folder (``.<name>.<pid>.<random>.tmp``,
so two processes never share one), is flushed and fsynced, then ``os.replace``d over the target,
and the folder is fsynced. A reader therefore sees the old file or the new one, never a mix,
whatever kills the writer; a failed write removes its temporary file and leaves the target as it
was, and the next write of a target removes the temporary files of killed writers. A full disk becomes a :class:`~lcplm.errors.UserError` naming the path and the space needed (the old file stays).

Bottom layer: imports only the standard library and :mod:`lcplm.errors`, so data, models, tasks,
train and eval may all use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from lcplm.errors import UserError


def temp_path(path: str | os.PathLike) -> Path:
    """A temporary name beside ``path``, unique to this process and call."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _writer_pid(tmp: Path, target_name: str) -> int | None:
    """The pid in a temporary name ``.<target_name>.<pid>.<hex>.tmp`` (None if it is not one)."""
    parts = tmp.name[len(target_name) + 2 : -len(".tmp")].split(".")
    return int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that were killed (their pid is gone)."""
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f".{p.name}.*.tmp"):
        pid = _writer_pid(tmp, p.name)
        if pid is not None and not _pid_alive(pid):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def remove_stale_temps_in(folder: str | os.PathLike) -> list[Path]:
    """:func:`remove_stale_temps` for every target in ``folder`` (e.g. checkpoints whose names
    are not known in advance, after a killed run)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        # ".<target>.<pid>.<hex>.tmp": the target is everything before the last three dots
        target = tmp.name[1:].rsplit(".", 3)[0]
        if target:
            removed += remove_stale_temps(tmp.with_name(target))
    return removed


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(path: Path, written: int, expected_bytes: int | None) -> UserError:
    """One line: the path, the space it needs (the expected size, else more than what was
    written before the disk filled up) and the space free there."""
    mib = 2**20
    if expected_bytes and expected_bytes > written:
        need = f"needs about {expected_bytes / mib:.1f} MiB"
    else:
        need = f"needs more than the {written / mib:.1f} MiB written"
    try:
        st = os.statvfs(path.parent)
        need += f", {st.f_bavail * st.f_frsize / mib:.1f} MiB free there"
    except OSError:
        pass
    return UserError(f"no space left on the device writing {path} ({need}); the previous file, if any, is intact")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", expected_bytes: int | None = None) -> Iterator[BinaryIO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` appears complete or not at all.

    ``mode``: ``wb``, ``w``, or ``w+b`` for writers that read back what they wrote (HDF5).
    ``expected_bytes``: the size about to be written, if known; a full disk reports it as the
    space needed."""
    if mode not in ("wb", "w", "w+b"):
        raise ValueError(f"atomic_open writes only ('wb', 'w' or 'w+b'), got mode {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path(target)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        try:
            written = tmp.stat().st_size
        except OSError:
            written = 0
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise _disk_full(target, written, expected_bytes) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(
    path: str | os.PathLike, writer: Callable[[BinaryIO], None], expected_bytes: int | None = None
) -> None:
    """Call ``writer(f)`` on an open binary file that is installed at ``path`` atomically
    (``torch.save(obj, f)``, ``safetensors`` bytes, an npy array ...)."""
    with atomic_open(path, "wb", expected_bytes) as f:
        writer(f)
