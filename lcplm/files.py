"""The one atomic-write helper: every file lcplm writes for a user goes through here.

A write goes to a uniquely named temporary file in the target's folder (``.<name>.<pid>.<random>.tmp``,
so two processes never share one), is flushed and fsynced, then ``os.replace``d over the target,
and the folder is fsynced. A reader therefore sees the old file or the new one, never a mix,
whatever kills the writer; a failed write removes its temporary file and leaves the target as it
was, and the next write of a target removes the temporary files of killed writers. A full disk becomes a :class:`~lcplm.errors.UserError` naming the path (the old file stays).

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


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that were killed (their pid is gone)."""
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f".{p.name}.*.tmp"):
        parts = tmp.name[len(p.name) + 2 : -len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
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


def _disk_full(path: Path, e: OSError) -> UserError:
    try:
        free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
        where = f" ({free / 2**20:.1f} MiB free there)"
    except OSError:
        where = ""
    return UserError(f"no space left on the device writing {path}{where}; the previous file, if any, is intact")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """``with atomic_open(p) as f: f.write(...)``: ``p`` appears complete or not at all."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes only ('wb' or 'w'), got mode {mode!r}")
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
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise _disk_full(target, e) from None
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


def atomic_write_with(path: str | os.PathLike, writer: Callable[[BinaryIO], None]) -> None:
    """Call ``writer(f)`` on an open binary file that is installed at ``path`` atomically
    (``torch.save(obj, f)``, ``safetensors`` bytes, an npy array ...)."""
    with atomic_open(path, "wb") as f:
        writer(f)
