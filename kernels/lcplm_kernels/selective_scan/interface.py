"""The selective scan's and causal conv's one dispatch: the only module that imports mamba_ssm
or causal_conv1d.

Backends (``SCAN_BACKENDS``):

=========  ==================================================================================
reference  ``naive.selective_scan_ref``: sequential PyTorch, for tests
chunked    ``chunked.selective_scan_chunked``: PyTorch, any device, hand-written backward
native     ``cpu.selective_scan_cpu``: the fused C kernel for CPUs (fp32, compiled on first use)
cuda       mamba-ssm's ``selective_scan_fn`` (and causal-conv1d's ``causal_conv1d_fn``)
auto       cuda on CUDA tensors when mamba-ssm imports; on CPU native when it compiles and the
           inputs are not fp64; otherwise chunked
=========  ==================================================================================

The optional CUDA packages are imported lazily through importlib, on first use, so a machine
without them imports this fine. ``auto`` never fails; asking for a backend by name where it
cannot run raises :class:`~lcplm_kernels.errors.BackendUnavailableError` saying what to do.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import BackendUnavailableError
from .chunked import selective_scan_chunked
from .conv import causal_conv1d_cpu, causal_conv1d_torch
from .cpu import build as cpu_build
from .cpu import selective_scan_cpu
from .naive import check_scan_shapes, segment_starts, selective_scan_ref

GPU_INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install -e .[gpu]"
SCAN_BACKENDS = ("auto", "native", "chunked", "reference", "cuda")


@functools.lru_cache(maxsize=None)
def _optional_import(module: str, attr: str) -> Optional[Callable]:
    """``module.attr`` or None when the module (or its compiled extension) cannot load."""
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # ImportError, or OSError/RuntimeError from a broken CUDA extension
        return None


def mamba_scan_fn() -> Optional[Callable]:
    """mamba-ssm's CUDA ``selective_scan_fn``, or None when mamba-ssm is not importable."""
    return _optional_import("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


def causal_conv1d_fn() -> Optional[Callable]:
    """The causal-conv1d package's CUDA ``causal_conv1d_fn``, or None."""
    return _optional_import("causal_conv1d", "causal_conv1d_fn")


def native_scan_unavailable() -> Optional[str]:
    """Why the fused CPU scan cannot run here (None when it can): it compiles on first use."""
    return cpu_build.unavailable_reason()


_fallback_warned: list[str] = []


def _warn_fallback_once(reason: str) -> None:
    """Say once per process that CPU runs take the slower PyTorch scan, unless asked for."""
    if _fallback_warned or reason.startswith("disabled by LCPLM_CPU_SCAN"):
        return
    _fallback_warned.append(reason)
    warnings.warn(
        f"lcplm: the native CPU scan is unavailable ({reason}); using the pure-PyTorch chunked scan, "
        "about 5x slower (LCPLM_CPU_SCAN=0 chooses it silently)",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_scan_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The backend a scan on ``device`` runs with (never ``auto``).

    Raises ValueError for a name not in ``SCAN_BACKENDS`` and
    :class:`BackendUnavailableError` for a named backend that cannot run here.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be one of {list(SCAN_BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            return "cuda" if mamba_scan_fn() is not None else "chunked"
        if device.type == "cpu" and dtype != torch.float64:
            reason = native_scan_unavailable()
            if reason is None:
                return "native"
            _warn_fallback_once(reason)
        return "chunked"
    if backend == "cuda":
        if mamba_scan_fn() is None:
            raise BackendUnavailableError(
                f"scan backend 'cuda' needs mamba-ssm, which is not importable: {GPU_INSTALL_HINT}"
            )
        if device.type != "cuda":
            raise BackendUnavailableError(f"scan backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "native":
        if device.type != "cpu":
            raise BackendUnavailableError(
                f"scan backend 'native' is the CPU kernel; got tensors on {device} (use auto or cuda)"
            )
        reason = native_scan_unavailable()
        if reason is not None:
            raise BackendUnavailableError(f"scan backend 'native' is unavailable: {reason} (use chunked)")
    return backend


def _unpack(x: Tensor, index: Tensor) -> Tensor:
    """Packed (1, X, T) -> padded (n, X, Lmax) through a (n, Lmax) gather index."""
    return x[0][:, index].permute(1, 0, 2)


def _pack(x: Tensor, seg: Tensor, pos: Tensor) -> Tensor:
    """Padded (n, X, Lmax) -> packed (1, X, T): token t is row seg[t], column pos[t]."""
    return x[seg, :, pos].t()[None]


def _packed_index(cu_seqlens: Tensor, total: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gather index (n, Lmax) for unpacking, and each packed token's (segment, position)."""
    cu = cu_seqlens.long()
    lens = cu[1:] - cu[:-1]
    lmax = max(int(lens.max()), 1)
    ar = torch.arange(lmax, device=cu.device)
    # positions past a sequence's end repeat its last token; they sit after the real tokens,
    # so the causal scan never lets them reach a real position
    index = (cu[:-1, None] + torch.minimum(ar, (lens - 1).clamp(min=0)[:, None])).clamp(max=max(total - 1, 0))
    seg = torch.repeat_interleave(torch.arange(lens.numel(), device=cu.device), lens)
    pos = torch.arange(total, device=cu.device) - cu[:-1][seg]
    return index, seg, pos


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    backend: str = "auto",
    chunk_size: Optional[int] = None,
):
    """Mamba-1 selective scan (mamba-ssm's ``selective_scan_fn`` semantics) on any backend.

    u, delta, z: (B, D, L); A: (D, N) real; B, C: (B, N, L); D, delta_bias: (D,).
    cu_seqlens: (n+1,) int32 for a packed batch (B == 1): the state resets at every sequence
    start. Returns out (B, D, L) in u's dtype, plus the last state (B, D, N) if asked.
    ``chunk_size``: the chunked scan's chunk (None: picked from the state size).

    mamba-ssm's kernel has no segment resets: for a packed batch the cuda backend unpacks the
    segments into a right-padded batch, scans it, and packs the result back; the native
    kernel takes them as ``keep`` (0 at each sequence start).
    """
    backend = resolve_scan_backend(backend, u.device, u.dtype)
    if backend == "native":
        check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, cu_seqlens)
        keep = None
        if cu_seqlens is not None:
            keep = (~segment_starts(cu_seqlens, u.shape[-1])).float()
        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep)
    if backend == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens)
    if backend == "chunked":
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens, chunk_size
        )
    fn = mamba_scan_fn()
    if cu_seqlens is None:
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        raise ValueError("return_last_state is not supported with cu_seqlens")
    if u.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {u.shape[0]}")
    index, seg, pos = _packed_index(cu_seqlens, u.shape[-1])
    out = fn(
        _unpack(u, index).contiguous(),
        _unpack(delta, index).contiguous(),
        A,
        _unpack(B, index).contiguous(),
        _unpack(C, index).contiguous(),
        D,
        None if z is None else _unpack(z, index).contiguous(),
        delta_bias,
        delta_softplus,
        False,
    )
    return _pack(out, seg, pos)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    positions: Optional[Tensor] = None,
    silu: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Causal depthwise conv1d (window of the current and K-1 previous steps), then SiLU.

    x: (B, E, L); weight: (E, K); bias: (E,). positions: (B, L) or (L,) long, each token's
    index within its own sequence, for packed batches: taps reaching before a sequence's
    start read zeros, so no window crosses a boundary. Returns (B, E, L) in x's dtype.

    ``backend`` is the scan's: on CUDA tensors without ``positions``, causal-conv1d's kernel
    runs when importable (auto or cuda, 2 <= K <= 4); on CPU, auto or native run the fused C
    conv when the native scan would (same library); otherwise ``conv.causal_conv1d_torch``.
    """
    k = weight.shape[1]
    # the kernel supports windows of 2 to 4 steps
    if x.is_cuda and positions is None and backend in ("auto", "cuda") and 2 <= k <= 4 and causal_conv1d_fn() is not None:
        # contiguous (B, E, L), the layout mamba-ssm itself feeds the kernel
        return causal_conv1d_fn()(x.contiguous(), weight, bias, activation="silu" if silu else None)
    if backend in ("auto", "native") and resolve_scan_backend(backend, x.device, x.dtype) == "native":
        return causal_conv1d_cpu(x, weight, bias, positions, silu)
    return causal_conv1d_torch(x, weight, bias, positions, silu)
