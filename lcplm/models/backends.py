"""Compute backends: the only module that imports mamba_ssm, causal_conv1d or lcplm_kernels.

Optional compiled dependencies are imported lazily, on first use, so a machine without them
imports lcplm fine; asking for one explicitly (``backend="cuda"``) when it is missing is a
:class:`~lcplm.errors.UserError` with the install hint. ``"auto"`` never fails: it picks the
compiled kernel when it is importable and the tensors are on a GPU, else the pure-PyTorch path.

Sections: the selective scan and causal depthwise conv of BiMamba-S (below), then the
block-sparse attention dispatch of the genome transformer (its own section, at the end).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lcplm.errors import UserError
from lcplm.models import ssm

GPU_INSTALL_HINT = "install the GPU extras on a CUDA machine: pip install -e .[gpu]"

# ======================================================================================
# Selective scan and causal depthwise conv (BiMamba-S)
# ======================================================================================

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


def _cpu_scan_module():
    """``lcplm_kernels.selective_scan_cpu`` (the fused C scan), or None when it cannot import."""
    try:
        from lcplm_kernels import selective_scan_cpu
    except ImportError:
        return None
    return selective_scan_cpu


def native_scan_unavailable() -> Optional[str]:
    """Why the fused CPU scan cannot run here (None when it can): it compiles on first use."""
    mod = _cpu_scan_module()
    if mod is None:
        return "the lcplm_kernels package is not importable (install lcplm with `pip install -e .`)"
    return mod.unavailable_reason()


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
    """The backend a scan on ``device`` runs with.

    ``auto``: ``cuda`` (mamba-ssm) on CUDA tensors when importable; on CPU the fused C scan
    (``native``) when it compiles here and the inputs are not fp64, else ``chunked``.
    """
    if backend not in SCAN_BACKENDS:
        raise UserError(f"scan backend must be one of {list(SCAN_BACKENDS)}, got {backend!r}")
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
            raise UserError(f"scan backend 'cuda' needs mamba-ssm, which is not importable: {GPU_INSTALL_HINT}")
        if device.type != "cuda":
            raise UserError(f"scan backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "native":
        if device.type != "cpu":
            raise UserError(f"scan backend 'native' is the CPU kernel; got tensors on {device} (use auto or cuda)")
        reason = native_scan_unavailable()
        if reason is not None:
            raise UserError(f"scan backend 'native' is unavailable: {reason} (use chunked)")
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

    backend: ``reference`` (sequential, for tests), ``native`` (the fused C kernel of
    ``lcplm_kernels.selective_scan_cpu``, fp32, compiled on first use), ``chunked`` (pure
    PyTorch), ``cuda`` (mamba-ssm's kernel), ``auto`` (cuda when importable on CUDA tensors;
    on CPU native when it compiles and the inputs are not fp64, else chunked). mamba-ssm's kernel has no segment resets: for a packed batch the cuda backend
    unpacks the segments into a right-padded batch, scans it, and packs the result back.
    """
    backend = resolve_scan_backend(backend, u.device, u.dtype)
    if backend == "native":
        ssm.check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, cu_seqlens)
        keep = None
        if cu_seqlens is not None:
            keep = (~ssm.segment_starts(cu_seqlens, u.shape[-1])).float()
        return _cpu_scan_module().selective_scan_cpu(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, keep
        )
    if backend == "reference":
        return ssm.selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cu_seqlens)
    if backend == "chunked":
        return ssm.selective_scan_chunked(
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

    On CUDA tensors without ``positions``, causal-conv1d's kernel runs when importable
    (``backend`` auto or cuda, K <= 4). On CPU, ``backend`` auto or native runs the fused C
    conv of ``lcplm_kernels.selective_scan_cpu`` when the native scan would (same library);
    otherwise a sum of K shifted copies (the same arithmetic for padded and packed batches)
    whose autograd keeps only x.
    """
    k = weight.shape[1]
    # the kernel supports windows of 2 to 4 steps
    if x.is_cuda and positions is None and backend in ("auto", "cuda") and 2 <= k <= 4 and causal_conv1d_fn() is not None:
        # contiguous (B, E, L), the layout mamba-ssm itself feeds the kernel
        return causal_conv1d_fn()(x.contiguous(), weight, bias, activation="silu" if silu else None)
    if backend in ("auto", "native") and resolve_scan_backend(backend, x.device, x.dtype) == "native":
        # the fused C conv, from the same CPU library as the native scan
        return _cpu_scan_module().causal_conv1d_cpu(x, weight, bias, positions, silu)
    return _CausalConv.apply(x, weight, bias, positions, silu)


def _conv_taps(x: Tensor, w: Tensor, bias: Optional[Tensor], positions: Optional[Tensor]) -> Tensor:
    """sum_j w[:, K-1-j] * x[t-j] (zero where t-j precedes the sequence start) + bias."""
    k, length = w.shape[1], x.shape[-1]
    out = x * w[:, k - 1, None]
    for j in range(1, min(k, length)):
        tap = x[..., : length - j] * w[:, k - 1 - j, None]
        if positions is not None:
            tap = tap * (positions[..., j:] >= j).to(x.dtype).unsqueeze(-2)
        out[..., j:] += tap
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return out


class _CausalConv(torch.autograd.Function):
    """Causal depthwise conv (+ SiLU) that saves only its input: the autograd graph would
    otherwise keep K shifted copies and the pre-activation, 5x the input's memory."""

    @staticmethod
    def forward(ctx, x, weight, bias, positions, silu):
        pre = _conv_taps(x, weight.to(x.dtype), bias, positions)
        ctx.save_for_backward(x, weight, bias, positions)
        ctx.silu = silu
        return F.silu(pre) if silu else pre

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, positions = ctx.saved_tensors
        k, length = weight.shape[1], x.shape[-1]
        w = weight.to(x.dtype)
        if ctx.silu:
            pre = _conv_taps(x, w, bias, positions).float()
            sig = torch.sigmoid(pre)
            dpre = dout.float() * sig * (1 + pre * (1 - sig))
        else:
            dpre = dout.float()
        xf = x.float()
        dw = torch.empty(weight.shape, dtype=torch.float32, device=x.device)
        dw[:, k - 1] = (dpre * xf).sum((0, 2))
        dx = dpre * w[:, k - 1, None].float()
        for j in range(1, k):
            if j >= length:
                dw[:, k - 1 - j] = 0
                continue
            g = dpre[..., j:]
            if positions is not None:
                g = g * (positions[..., j:] >= j).float().unsqueeze(-2)
            dw[:, k - 1 - j] = (g * xf[..., : length - j]).sum((0, 2))
            dx[..., : length - j] += g * w[:, k - 1 - j, None].float()
        dbias = dpre.sum((0, 2)).to(bias.dtype) if bias is not None else None
        return dx.to(x.dtype), dw.to(weight.dtype), dbias, None, None


# ======================================================================================
# Block-sparse attention (genome transformer): the sparse-attention dispatch goes below.
# ======================================================================================
#
# lcplm.models.sparse_transformer calls attention only through the functions below, so that
# lcplm_kernels is imported here and nowhere else in lcplm. Backends:
#   kernel     lcplm_kernels.block_sparse_attn: Triton on CUDA, block-wise PyTorch on CPU;
#              the block layout is built once per batch and shared by every layer and head;
#              memory linear in the allowed token pairs.
#   dense      torch scaled_dot_product_attention with an explicit (B, 1, L, L) boolean mask:
#              L x L memory, for short inputs and parity with dense models (ESM-2).
#   flex       PyTorch FlexAttention with a BlockMask holding exactly the layout's tiles (128 x 128),
#              compiled on CUDA; on CPU eager and forward-only (PyTorch has no CPU backward).
#   reference  lcplm_kernels' naive dense fp32 reference with the same mask (tests only).
#   auto       kernel on CUDA; on CPU, dense while the B*H*L*L fp32 scores of one layer fit in
#              DENSE_CPU_MAX_SCORES (there PyTorch's SDPA is several times faster than the
#              block-wise path), else kernel.
# Every backend: query i attends key j iff pid[i] >= 0, pid[j] >= 0 and allowed[b, pid[i], pid[j]];
# a query with no allowed key (padding) gets zeros.
# =============================================================================================

SPARSE_ATTENTION_BACKENDS = ("auto", "kernel", "flex", "dense", "reference")
DENSE_CPU_MAX_SCORES = 1 << 25  # 128 MB of fp32 scores per layer
FLEX_BLOCK = 128  # FlexAttention's own tile on CUDA: its sparse blocks must be a multiple of it


@dataclass(frozen=True)
class SparseAttentionLayout:
    """One batch's attention pattern, shared by all layers and heads.

    pid: (B, L) long, -1 for padding; allowed: (B, P, P) bool; backend: the resolved backend
    (never ``auto``); blocks: the ``BlockLayout`` (backends ``kernel`` and ``flex``); flex:
    (FlexAttention ``BlockMask``, (B, L) rows that have a key) for backend ``flex``.
    """

    pid: torch.Tensor
    allowed: torch.Tensor
    backend: str
    blocks: Any = None
    flex: Any = None


def _block_sparse_attn():
    try:
        from lcplm_kernels import block_sparse_attn
    except ImportError as e:
        raise UserError(
            "the block-sparse attention backend needs the lcplm_kernels package (kernels/ in the "
            f"lcplm repository, installed by `pip install -e .`): {e}"
        ) from None
    return block_sparse_attn


def sparse_attention_layout(
    pid: torch.Tensor, allowed: torch.Tensor, backend: str = "auto", num_heads: int = 1
) -> SparseAttentionLayout:
    """Build once per batch. pid: (B, L) long; allowed: (B, P, P) bool."""
    if backend not in SPARSE_ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {SPARSE_ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        B, L = pid.shape
        small = B * num_heads * L * L <= DENSE_CPU_MAX_SCORES
        backend = "dense" if pid.device.type == "cpu" and small else "kernel"
    if backend == "flex":
        from lcplm_kernels.block_sparse_attn import flex

        blocks = _block_sparse_attn().build_layout(pid, allowed, FLEX_BLOCK, FLEX_BLOCK)
        return SparseAttentionLayout(pid, allowed, backend, blocks, (flex.flex_block_mask(blocks), flex.has_key(blocks)))
    blocks = _block_sparse_attn().build_layout(pid, allowed) if backend == "kernel" else None
    return SparseAttentionLayout(pid, allowed, backend, blocks)


def pair_mask(pid: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool token mask from pid (B, L) and allowed (B, P, P). L x L: short inputs only."""
    pc = pid.clamp_min(0)
    rows = allowed.gather(1, pc.unsqueeze(-1).expand(-1, -1, allowed.shape[-1]))  # (B, L, P)
    m = rows.gather(2, pc.unsqueeze(1).expand(-1, pid.shape[1], -1))  # (B, L, L)
    valid = pid >= 0
    return m & valid.unsqueeze(2) & valid.unsqueeze(1)


def dense_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """SDPA with the pair mask; q, k, v: (B, H, L, D) -> (B, H, L, D), zeros for rows without keys."""
    mask = pair_mask(pid, allowed)
    has_key = mask.any(-1)  # (B, L)
    # a row without any key would be all -inf (NaN): let it see everything, then zero it
    mask = mask | ~has_key.unsqueeze(-1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=scale)
    return out * has_key[:, None, :, None].to(out.dtype)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SparseAttentionLayout, scale: float
) -> torch.Tensor:
    """q, k, v: (B, H, L, D) -> (B, H, L, D) under ``layout``'s pattern, with its backend."""
    backend = layout.backend
    if backend == "kernel":
        return _block_sparse_attn().block_sparse_attn(q, k, v, layout.blocks, scale=scale)
    if backend == "flex":
        from lcplm_kernels.block_sparse_attn import flex

        return flex.flex_block_sparse_attn(q, k, v, layout.flex[0], scale, layout.flex[1])
    if backend == "reference":
        return _block_sparse_attn().naive_block_sparse_attn(q, k, v, layout.pid, layout.allowed, scale=scale).to(q.dtype)
    if backend == "dense":
        return dense_masked_attention(q, k, v, layout.pid, layout.allowed, scale)
    raise ValueError(f"attention backend must be one of {SPARSE_ATTENTION_BACKENDS}, got {backend!r}")
