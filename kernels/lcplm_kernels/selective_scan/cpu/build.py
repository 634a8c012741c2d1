"""Compile ``scan.c`` on first use and load it with ctypes.

The shared library is built for the machine it runs on (``-march=native``) and cached under
``$LCPLM_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/lcplm/kernels``, i.e.
``~/.cache/lcplm/kernels``). The file name hashes the source, the flags, the compiler's
version and the CPU's feature flags, so a home directory shared by cluster nodes of
different CPU generations keeps one build per generation and never runs AVX-512 code on a
node without it. Builds go to a temporary file renamed into place, so concurrent ranks
never load a half-written library.

Nothing here raises: :func:`load` returns the library or None, and :func:`unavailable_reason`
says why (no compiler, a failed build, ``LCPLM_CPU_SCAN=0``). Compile time is a few seconds
(about 4 s of CPU with GCC 12); there are no PyTorch headers involved.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional

SOURCE = Path(__file__).with_name("scan.c")
ABI = 7
# -O2 -ftree-vectorize, not -O3: GCC 12 at -O3 makes the backward 4x slower (measured).
# NaN still propagates under -ffast-math: scan.c tests for it on the bits (see exp_f).
FLAGS = ["-O2", "-ftree-vectorize", "-ffast-math", "-fPIC", "-shared", "-std=c11", "-fno-strict-aliasing"]
NATIVE = ["-march=native"]
# Only when the process already runs libgomp (PyTorch's own build ships it): the library's
# NEEDED libgomp.so.1 then resolves to that copy, so the mixer ops' OpenMP team is PyTorch's
# intra-op threads (see lcplm_mixer_scan_team in scan.c). Elsewhere, no OpenMP: a second
# runtime's threads would compete with PyTorch's.
OPENMP = ["-fopenmp"]

_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    env = os.environ.get("LCPLM_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lcplm" / "kernels"


def compiler() -> Optional[list[str]]:
    """The compiler command: ``$CC`` if set (it may carry flags, e.g. ``gcc -m64``), else the
    first of cc, gcc, clang on PATH; None when there is none."""
    env = os.environ.get("CC", "").strip()
    if env:
        parts = shlex.split(env)
        exe = shutil.which(parts[0]) or (parts[0] if os.path.isfile(parts[0]) else None)
        return [exe, *parts[1:]] if exe else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


def _compiler_version(cc: list[str]) -> str:
    try:
        return " ".join(cc) + "\n" + subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _compile(cc: list[str], flags: list[str], target: Path) -> Optional[str]:
    """Build into ``target``; None on success, else the compiler's complaint (one line)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write to the kernel cache {target.parent}: {exc.strerror or exc}"
    try:
        proc = subprocess.run([*cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            lines = [x for x in (proc.stderr or proc.stdout).splitlines() if x.strip()]
            return f"{Path(cc[0]).name} exited {proc.returncode}: " + (lines[0] if lines else "no output")
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{Path(cc[0]).name} failed: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ScanArgs(ctypes.Structure):
    """Mirror of ``scan_args`` in scan.c (pointers are data_ptr() ints, 0 for NULL)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("Dm", "L", "N", "K", "softplus")] + [
        (name, ctypes.c_void_p)
        for name in (
            "u", "delta", "bias", "A", "Bt", "Ct", "Dv", "z", "keep",
            "out", "y", "states", "last",
            "dout", "dlast",
            "du", "ddelta", "dz", "dA_part", "dD_part", "dbias_part",
        )
    ]


class ConvArgs(ctypes.Structure):
    """Mirror of ``conv_args`` in scan.c."""

    _fields_ = [(name, ctypes.c_int64) for name in ("E", "L", "K", "silu", "pos_stride_b")] + [
        (name, ctypes.c_void_p) for name in ("x", "w", "bias", "pos", "out", "dout", "dx", "dw_part", "dbias_part")
    ]


class MixerArgs(ctypes.Structure):
    """Mirror of ``mixer_args`` in scan.c (the forward-only channels-last mixer ops)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("B", "L", "E", "N", "R", "K", "bf16", "nseg", "ldx", "lddbl", "ldz")] + [
        (name, ctypes.c_void_p)
        for name in ("seg", "x", "conv_w", "conv_b", "xc", "dbl_f", "dbl_r", "z", "dt_w", "dt_b", "A2", "Dv", "yf", "out")
    ]


class NormArgs(ctypes.Structure):
    """Mirror of ``norm_args`` in scan.c (residual add + RMSNorm at inference)."""

    _fields_ = [(name, ctypes.c_int64) for name in ("d", "hidden_bf16", "norm_bf16")] + [("eps", ctypes.c_double)] + [
        (name, ctypes.c_void_p) for name in ("hidden", "residual", "weight", "res_out", "normed")
    ]


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lcplm_scan_abi.restype = ctypes.c_int
    lib.lcplm_scan_abi.argtypes = []
    if lib.lcplm_scan_abi() != ABI:
        raise OSError(f"{path.name}: ABI {lib.lcplm_scan_abi()} != {ABI}")
    lib.lcplm_scan_work.restype = i64
    lib.lcplm_scan_work.argtypes = [i64] * 4
    lib.lcplm_scan_fwd.restype = ctypes.c_int
    lib.lcplm_scan_fwd.argtypes = [ctypes.POINTER(ScanArgs), i64, i64, ptr]
    lib.lcplm_scan_bwd.restype = ctypes.c_int
    lib.lcplm_scan_bwd.argtypes = [ctypes.POINTER(ScanArgs), i64, i64, ptr, ptr, ptr]
    lib.lcplm_conv_fwd.restype = ctypes.c_int
    lib.lcplm_conv_fwd.argtypes = [ctypes.POINTER(ConvArgs), i64, i64]
    lib.lcplm_conv_bwd.restype = ctypes.c_int
    lib.lcplm_conv_bwd.argtypes = [ctypes.POINTER(ConvArgs), i64, i64, ptr]
    lib.lcplm_mixer_conv.restype = ctypes.c_int
    lib.lcplm_mixer_conv.argtypes = [ctypes.POINTER(MixerArgs), i64, i64]
    lib.lcplm_mixer_scan_work.restype = i64
    lib.lcplm_mixer_scan_work.argtypes = [i64, i64]
    lib.lcplm_mixer_scan.restype = ctypes.c_int
    lib.lcplm_mixer_scan.argtypes = [ctypes.POINTER(MixerArgs), i64, i64, ptr]
    lib.lcplm_openmp.restype = ctypes.c_int
    lib.lcplm_openmp.argtypes = []
    lib.lcplm_mixer_conv_team.restype = ctypes.c_int
    lib.lcplm_mixer_conv_team.argtypes = [ctypes.POINTER(MixerArgs), i64]
    lib.lcplm_mixer_scan_team.restype = ctypes.c_int
    lib.lcplm_mixer_scan_team.argtypes = [ctypes.POINTER(MixerArgs), i64, ptr, i64]
    lib.lcplm_add_rmsnorm.restype = ctypes.c_int
    lib.lcplm_add_rmsnorm.argtypes = [ctypes.POINTER(NormArgs), i64, i64]
    lib.lcplm_add_rmsnorm_team.restype = ctypes.c_int
    lib.lcplm_add_rmsnorm_team.argtypes = [ctypes.POINTER(NormArgs), i64, i64]
    return lib


def openmp_runtimes() -> set[str]:
    """Paths of the libgomp copies mapped into this process (Linux /proc; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {parts[5] for parts in (line.split() for line in maps) if len(parts) >= 6 and Path(parts[5]).name.startswith("libgomp")}


def _build() -> tuple[Optional[ctypes.CDLL], str]:
    if os.environ.get("LCPLM_CPU_SCAN", "1").strip().lower() in ("0", "off", "false", "no"):
        return None, "disabled by LCPLM_CPU_SCAN=0"
    cc = compiler()
    if cc is None:
        if os.environ.get("CC", "").strip():
            return None, f"no C compiler found: $CC={os.environ['CC']!r} is not an executable"
        return None, "no C compiler found (set CC, or install gcc)"
    version = _compiler_version(cc)
    errors = []
    omp = OPENMP if openmp_runtimes() else []
    candidates = [FLAGS + NATIVE + omp, FLAGS + NATIVE, FLAGS]  # compilers may reject -fopenmp, -march=native
    for flags in [f for i, f in enumerate(candidates) if f not in candidates[:i]]:
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), " ".join(flags), version, _cpu_flags(), str(ABI)]).encode()
        ).hexdigest()[:20]
        for folder in _cache_dirs():
            target = folder / f"selective_scan_cpu-{key}.so"
            if not target.exists():
                err = _compile(cc, flags, target)
                if err is not None:
                    errors.append(err)
                    if err.startswith("cannot write"):
                        continue  # an unwritable cache: try the next folder
                    break  # the compiler itself failed: the next flags, not the next folder
            try:
                return _bind(target), f"{target} ({' '.join(flags)})"
            except OSError as exc:
                errors.append(f"cannot load {target}: {exc}")
                break
    return None, "; ".join(errors)


def _cache_dirs() -> list[Path]:
    """The cache, then a per-user folder under the temporary directory (a read-only home)."""
    fallback = Path(tempfile.gettempdir()) / f"lcplm-kernels-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return [cache_dir(), fallback]


def load() -> Optional[ctypes.CDLL]:
    """The compiled kernel, building it on first call; None when it cannot be had."""
    with _lock:
        if "lib" not in _state:
            before = openmp_runtimes()
            _state["lib"], _state["info"] = _build()
            lib = _state["lib"]
            # loading mapped no new libgomp: ``NEEDED libgomp.so.1`` bound to the copy already
            # running (PyTorch's; other packages' bundled copies carry other SONAMEs), so our
            # OpenMP team is PyTorch's threads, not a second runtime's
            _state["team"] = lib is not None and lib.lcplm_openmp() == 1 and bool(before) and openmp_runtimes() == before
        return _state["lib"]


def uses_torch_threads() -> bool:
    """True when the mixer ops' OpenMP team is PyTorch's own intra-op threads (else the callers
    split the work among threads of their own)."""
    return load() is not None and _state["team"]


def unavailable_reason() -> Optional[str]:
    """Why :func:`load` returns None (None when it does not)."""
    return None if load() is not None else _state["info"]


def library_info() -> str:
    """Where the loaded library lives and its flags, or why there is none."""
    load()
    return _state["info"]


def reset() -> None:
    """Forget the loaded library (tests: rebuild under a different environment)."""
    with _lock:
        _state.clear()
