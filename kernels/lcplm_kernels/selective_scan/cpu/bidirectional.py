"""Forward-only, channels-last, bidirectional conv and scan: BiMamba-S's mixer at inference.

Two C calls (``scan.c``, section "Forward only, channels-last") around the caller's x_proj:

    w   = mixer_weights(conv_weight, conv_bias, dt_weight, dt_bias, A, D)   # once per weights
    xc  = bidirectional_conv1d_cpu(x, w, segments)                          # (2, B, L, E)
    dbl = x_proj_fwd(xc[0]), x_proj_rev(xc[1])                              # the caller's matmuls
    out = bidirectional_scan_cpu(xc, dbl_fwd, dbl_rev, z, w, segments)      # (B, L, E)

They work on the (B, L, E) layout the projections produce (no transposes), run the reverse
direction backwards through each segment (no flips), fuse dt_proj, softplus, the D skip, the sum
of the directions and the silu(z) gate into the scan, and save nothing for a backward. The
PyTorch references with the same contracts are ``naive.bidirectional_conv1d_ref`` and
``naive.bidirectional_scan_ref``.

Activations are fp32 or bf16 (all the same dtype; computed in fp32). Channels are split into
blocks of 16 and the blocks into one contiguous range per thread (``torch.get_num_threads()``):
on PyTorch's own OpenMP threads when the library could share PyTorch's libgomp
(``build.uses_torch_threads()``), else on the calling thread plus a pool, as the training
kernels split rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import build
from .ffi import args_struct, ptr, row_ranges, run_parallel

BLOCK = 16  # channels per vector block (CB in scan.c)
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)
_MAX_DBL = 256  # R + 2N floats per x_proj row (the kernel's row buffer)


@dataclass(frozen=True)
class MixerWeights:
    """Both directions' conv, dt_proj, A and D laid out for the C kernels: fp32, transposed to
    channels-last, the channel dimension zero-padded to a multiple of 16 (whole-vector loads).
    Build it with :func:`mixer_weights` once per set of weights, not per call."""

    dim: int  # E, channels
    width: int  # K, conv taps
    rank: int  # R, dt_proj rank
    nstate: int  # N, state size
    conv_w: Tensor  # (2, K, Ep)
    conv_b: Optional[Tensor]  # (2, Ep)
    dt_w: Tensor  # (2, R, Ep)
    dt_b: Optional[Tensor]  # (2, Ep)
    A2: Tensor  # (2, N, Ep): A log2(e), so that exp(dt A) = 2^(dt A2)
    D: Optional[Tensor]  # (2, Ep)


def _padded(w: Tensor, width: int) -> Tensor:
    """fp32 contiguous copy of ``w`` (..., E) zero-padded to ``width`` on the last dim."""
    w = w.detach().to(torch.float32)
    if w.shape[-1] != width:
        w = torch.nn.functional.pad(w, (0, width - w.shape[-1]))
    return w.contiguous()


def mixer_weights(
    conv_weight: Tensor,
    conv_bias: Optional[Tensor],
    dt_weight: Tensor,
    dt_bias: Optional[Tensor],
    A: Tensor,
    D: Optional[Tensor],
) -> MixerWeights:
    """Lay out both directions' weights, forward first: conv_weight (2, E, K) (tap K-1 weighs the
    current step); conv_bias, dt_bias, D (2, E) or None; dt_weight (2, E, R); A (2, E, N) real."""
    if conv_weight.dim() != 3 or conv_weight.shape[0] != 2 or conv_weight.shape[2] < 1:
        raise ValueError(f"conv_weight must be (2, E, K), got {tuple(conv_weight.shape)}")
    dim = conv_weight.shape[1]
    if A.dim() != 3 or A.shape[:2] != (2, dim) or A.is_complex():
        raise ValueError(f"A must be real (2, {dim}, N), got {tuple(A.shape)}")
    if dt_weight.dim() != 3 or dt_weight.shape[:2] != (2, dim):
        raise ValueError(f"dt_weight must be (2, {dim}, R), got {tuple(dt_weight.shape)}")
    rank, nstate = dt_weight.shape[2], A.shape[2]
    if rank + 2 * nstate > _MAX_DBL:
        raise ValueError(f"dt_rank + 2 d_state must be at most {_MAX_DBL}, got {rank + 2 * nstate}")
    for name, t in (("conv_bias", conv_bias), ("dt_bias", dt_bias), ("D", D)):
        if t is not None and t.shape != (2, dim):
            raise ValueError(f"{name} must be (2, {dim}), got {tuple(t.shape)}")
    width = math.ceil(dim / BLOCK) * BLOCK
    return MixerWeights(
        dim=dim, width=conv_weight.shape[2], rank=rank, nstate=nstate,
        conv_w=_padded(conv_weight.transpose(1, 2), width),
        conv_b=None if conv_bias is None else _padded(conv_bias, width),
        dt_w=_padded(dt_weight.transpose(1, 2), width),
        dt_b=None if dt_bias is None else _padded(dt_bias, width),
        A2=_padded(A.detach().float().transpose(1, 2) * math.log2(math.e), width),
        D=None if D is None else _padded(D, width),
    )  # fmt: skip


def _rows(t: Tensor, batch: int, length: int, name: str) -> tuple[Tensor, int]:
    """``t`` (B, L, W) as a base tensor and a row stride the kernel can index as (B*L, stride)."""
    if t.dim() != 3 or t.shape[:2] != (batch, length):
        raise ValueError(f"{name} must be ({batch}, {length}, W), got {tuple(t.shape)}")
    if t.stride(2) != 1 or (batch > 1 and t.stride(0) != length * t.stride(1)):
        t = t.contiguous()
    return t, t.stride(1)


def _check(*tensors: Optional[Tensor]) -> None:
    if build.load() is None:
        raise RuntimeError(f"the native mixer ops are unavailable: {build.unavailable_reason()}")
    real = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in real):
        raise ValueError("the native mixer ops need CPU tensors")
    if torch.is_grad_enabled() and any(t.requires_grad for t in real):
        raise RuntimeError("the native mixer ops are forward-only: call them under torch.no_grad() or inference_mode()")


def _segments(segments: Tensor, batch: int, length: int) -> tuple[Tensor, int]:
    """Validated (S, 3) int64 segments and how many tokens they cover."""
    seg = segments.to(device="cpu", dtype=torch.int64).contiguous()
    if seg.dim() != 2 or seg.shape[1] != 3:
        raise ValueError(f"segments must be (S, 3) rows (batch row, start, end), got {tuple(seg.shape)}")
    rows = sorted(seg.tolist(), key=lambda r: (r[0], r[1]))  # a few rows per batch: plain Python is fastest
    if any(not (0 <= b < batch and 0 <= s <= e <= length) for b, s, e in rows):
        raise ValueError(f"segments must lie inside the ({batch}, {length}) token grid, got {seg.tolist()}")
    if any(p[0] == q[0] and q[1] < p[2] for p, q in zip(rows, rows[1:])):
        raise ValueError(f"segments must not overlap, got {seg.tolist()}")
    return seg, sum(e - s for _, s, e in rows)


def _output(out: Optional[Tensor], shape: tuple, dtype: torch.dtype, covered: int, tokens: int, name: str) -> Tensor:
    """``out`` checked, or a new tensor: empty when the segments cover every row, else zeros."""
    if out is None:
        return (torch.empty if covered == tokens else torch.zeros)(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of shape {tuple(shape)}")
    return out


def bidirectional_conv1d_cpu(
    x: Tensor, weights: MixerWeights, segments: Tensor, out: Optional[Tensor] = None
) -> Tensor:
    """Causal depthwise conv + SiLU in both directions of every segment, channels-last.

    x: (B, L, E) fp32 or bf16 (a strided view such as in_proj's x half is read in place);
    segments: (S, 3) int rows (batch row, start, end), non-overlapping. Returns (2, B, L, E) in
    x's dtype: [0] the causal conv of each segment, [1] the conv of each segment reversed, read
    back in the original order. Rows outside every segment are zero, or, with ``out`` (a buffer
    reused across calls, e.g. layers, to spare allocating and faulting in fresh pages), left as
    they are in it (zero it once).
    """
    _check(x)
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x must be fp32 or bf16, got {x.dtype}")
    if x.dim() != 3 or x.shape[2] != weights.dim:
        raise ValueError(f"x must be (B, L, {weights.dim}), got {tuple(x.shape)}")
    batch, length, dim = x.shape
    seg, covered = _segments(segments, batch, length)
    xr, ldx = _rows(x, batch, length, "x")
    out = _output(out, (2, batch, length, dim), x.dtype, covered, batch * length, "out")
    if out.numel() == 0 or covered == 0:
        return out
    args = args_struct(
        build.MixerArgs, B=batch, L=length, E=dim, K=weights.width, bf16=int(x.dtype == torch.bfloat16),
        nseg=seg.shape[0], ldx=ldx, seg=seg, x=xr, conv_w=weights.conv_w, conv_b=weights.conv_b, xc=out,
    )  # fmt: skip
    lib = build.load()
    if build.uses_torch_threads():
        if lib.lcplm_mixer_conv_team(args, torch.get_num_threads()) != 0:
            raise RuntimeError("lcplm_mixer_conv_team failed")
        return out
    blocks = row_ranges(weights.conv_w.shape[2] // BLOCK, torch.get_num_threads())
    run_parallel([(lambda c0=c0, c1=c1: lib.lcplm_mixer_conv(args, c0, c1)) for c0, c1 in blocks])
    return out


def bidirectional_scan_cpu(
    xc: Tensor,
    dbl_fwd: Tensor,
    dbl_rev: Tensor,
    z: Tensor,
    weights: MixerWeights,
    segments: Tensor,
    out: Optional[Tensor] = None,
    scratch: Optional[Tensor] = None,
) -> Tensor:
    """Both scan directions of every segment with dt_proj fused, summed and gated, channels-last.

    xc: (2, B, L, E) the conv outputs (the scans' u); dbl_fwd, dbl_rev: (B, L, R + 2N) each
    direction's x_proj output [dt_low | B | C]; z: (B, L, E) (a strided view is read in place);
    all fp32 or all bf16. Per direction delta = softplus(dt_low @ dt_weight.T + dt_bias),
    y = the scan (mamba-ssm semantics, the state reset at each segment's start; the reverse
    direction runs from each segment's end) plus D u, and the result is (y_fwd + y_rev) * silu(z):
    (B, L, E) in xc's dtype, zero outside every segment (``out``: as for the conv). With bf16
    activations y_fwd waits in an fp32 (B, L, E) buffer, ``scratch`` when given.
    """
    _check(xc, dbl_fwd, dbl_rev, z)
    if xc.dtype not in ACTIVATION_DTYPES or any(t.dtype != xc.dtype for t in (dbl_fwd, dbl_rev, z)):
        raise ValueError(
            f"xc, dbl_fwd, dbl_rev and z must share one dtype, fp32 or bf16; got "
            f"{xc.dtype}, {dbl_fwd.dtype}, {dbl_rev.dtype}, {z.dtype}"
        )
    if xc.dim() != 4 or xc.shape[0] != 2 or xc.shape[3] != weights.dim:
        raise ValueError(f"xc must be (2, B, L, {weights.dim}), got {tuple(xc.shape)}")
    _, batch, length, dim = xc.shape
    seg, covered = _segments(segments, batch, length)
    xc = xc.contiguous()
    dbl_f, lddbl = _rows(dbl_fwd, batch, length, "dbl_fwd")
    dbl_r, lddbl_r = _rows(dbl_rev, batch, length, "dbl_rev")
    if lddbl_r != lddbl:  # the kernel takes one row stride for both
        dbl_f, dbl_r = dbl_f.contiguous(), dbl_r.contiguous()
        lddbl = dbl_f.shape[2]
    cols = weights.rank + 2 * weights.nstate
    for name, t in (("dbl_fwd", dbl_f), ("dbl_rev", dbl_r)):
        if t.shape[2] != cols:
            raise ValueError(f"{name} must have dt_rank + 2 d_state = {cols} columns, got {t.shape[2]}")
    zr, ldz = _rows(z, batch, length, "z")
    if zr.shape[2] != dim:
        raise ValueError(f"z must be ({batch}, {length}, {dim}), got {tuple(z.shape)}")
    out = _output(out, (batch, length, dim), xc.dtype, covered, batch * length, "out")
    if out.numel() == 0 or covered == 0:
        return out
    yf = out  # y_fwd, in place for fp32
    if out.dtype != torch.float32:
        yf = _output(scratch, out.shape, torch.float32, 0, 1, "scratch") if scratch is not None else torch.empty(out.shape)
    args = args_struct(
        build.MixerArgs, B=batch, L=length, E=dim, N=weights.nstate, R=weights.rank,
        bf16=int(xc.dtype == torch.bfloat16), nseg=seg.shape[0], lddbl=lddbl, ldz=ldz, seg=seg, xc=xc,
        dbl_f=dbl_f, dbl_r=dbl_r, z=zr, dt_w=weights.dt_w, dt_b=weights.dt_b, A2=weights.A2, Dv=weights.D,
        yf=yf, out=out,
    )  # fmt: skip
    lib = build.load()
    blocks = row_ranges(weights.dt_w.shape[2] // BLOCK, torch.get_num_threads())
    most = max(c1 - c0 for c0, c1 in blocks)
    work = torch.empty(len(blocks), lib.lcplm_mixer_scan_work(weights.nstate, most), dtype=torch.float32)
    if build.uses_torch_threads():  # the same split, on PyTorch's threads
        if lib.lcplm_mixer_scan_team(args, len(blocks), ptr(work), work.shape[1]) != 0:
            raise RuntimeError("lcplm_mixer_scan_team failed")
        return out
    run_parallel(
        [(lambda c0=c0, c1=c1, i=i: lib.lcplm_mixer_scan(args, c0, c1, ptr(work[i]))) for i, (c0, c1) in enumerate(blocks)]
    )
    return out
