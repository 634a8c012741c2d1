"""Calling the compiled library from Python: tensors as ctypes argument structs, and the
row ranges the calling thread and a pool run in parallel.

ctypes releases the GIL for the duration of each call, so a plain ``ThreadPoolExecutor``
runs the row ranges on separate cores; ``torch.get_num_threads()`` sets how many.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch
from torch import Tensor

_pool_lock = threading.Lock()
_pool: dict = {}


def executor(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads."""
    # one pool per process and size; a forked child (DataLoader worker) gets a fresh one
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool.get("key") != key:
            old = _pool.get("ex")
            if old is not None and _pool["key"][0] == os.getpid():
                old.shutdown(wait=False)  # the thread count changed: do not leak idle threads
            _pool["key"], _pool["ex"] = key, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lcplm-scan")
        return _pool["ex"]


def row_ranges(rows: int, threads: int) -> list[tuple[int, int]]:
    """[r0, r1) ranges splitting ``rows`` as evenly as possible among at most ``threads``."""
    parts = max(1, min(threads, rows))
    step, extra = divmod(rows, parts)
    out, r = [], 0
    for i in range(parts):
        n = step + (1 if i < extra else 0)
        out.append((r, r + n))
        r += n
    return out


def run_parallel(calls) -> None:
    """Run thunks returning the kernel's status: the first here, the others on the pool."""
    futures = [executor(len(calls) - 1).submit(c) for c in calls[1:]] if len(calls) > 1 else []
    codes = [calls[0]()] + [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"lcplm_kernels.selective_scan.cpu: the kernel returned {codes}")


def ptr(t: Optional[Tensor]) -> Optional[int]:
    """A tensor's data pointer for a ctypes argument (None: a NULL pointer)."""
    return None if t is None else t.data_ptr()


def f32(t: Optional[Tensor]) -> Optional[Tensor]:
    """A contiguous fp32 tensor the kernel may read (no copy when ``t`` already is one)."""
    return None if t is None else t.detach().to(torch.float32).contiguous()


def args_struct(struct, **kw):
    """A ctypes argument struct (``build.ScanArgs``, ``ConvArgs`` or ``MixerArgs``): tensors become
    data pointers, None NULL. The struct does not keep the tensors alive: the caller must hold a
    reference to each until the kernel call returns (no temporaries in the argument list)."""
    args = struct()
    for name, value in kw.items():
        setattr(args, name, ptr(value) if isinstance(value, Tensor) or value is None else value)
    return args
