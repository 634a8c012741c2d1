"""Forward-only, channels-last, bidirectional conv and scan: BiMamba-S's mixer at inference.

Two C calls (``scan.c``, section "Forward only, channels-last") around the caller's x_proj:

    xc  = bidirectional_conv1d_cpu(x, conv_weight, conv_bias, segments)       # (2, B, L, E)
    dbl = x_proj_fwd(xc[0]), x_proj_rev(xc[1])                                # the caller's matmuls
    out = bidirectional_scan_cpu(xc, dbl_fwd, dbl_rev, dt_weight, dt_bias, A, D, z, segments)

They work on the (B, L, E) layout the projections produce (no transposes), run the reverse
direction backwards through each segment (no flips), fuse dt_proj, softplus, the D skip, the sum
of the directions and the silu(z) gate into the scan, and save nothing for a backward. The
PyTorch references with the same contracts are ``naive.bidirectional_conv1d_ref`` and
``naive.bidirectional_scan_ref``.

Activations are fp32 or bf16 (all the same dtype; computed in fp32); weights any float dtype
(used in fp32). Channels are split into blocks of 16 and the blocks into one contiguous range per
thread (``torch.get_num_threads()``), as the training kernels split rows.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import build
from .ffi import args_struct, ptr, row_ranges, run_parallel

BLOCK = 16  # channels per vector block (CB in scan.c)
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16)
_MAX_DBL = 256  # R + 2N floats per x_proj row (the kernel's row buffer)


def _padded(w: Tensor, width: int) -> Tensor:
    """fp32 contiguous copy of ``w`` (..., E) zero-padded to ``width`` on the last dim."""
    w = w.detach().to(torch.float32)
    if w.shape[-1] == width:
        return w.contiguous()
    return torch.nn.functional.pad(w, (0, width - w.shape[-1])).contiguous()


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


def _segments(segments: Tensor, batch: int, length: int) -> Tensor:
    seg = segments.to(device="cpu", dtype=torch.int64).contiguous()
    if seg.dim() != 2 or seg.shape[1] != 3:
        raise ValueError(f"segments must be (S, 3) rows (batch row, start, end), got {tuple(seg.shape)}")
    if seg.numel() and bool(
        ((seg[:, 0] < 0) | (seg[:, 0] >= batch) | (seg[:, 1] < 0) | (seg[:, 2] < seg[:, 1]) | (seg[:, 2] > length)).any()
    ):
        raise ValueError(f"segments must lie inside the ({batch}, {length}) token grid, got {seg.tolist()}")
    return seg


def bidirectional_conv1d_cpu(x: Tensor, weight: Tensor, bias: Optional[Tensor], segments: Tensor) -> Tensor:
    """Causal depthwise conv + SiLU in both directions of every segment, channels-last.

    x: (B, L, E) fp32 or bf16 (a strided view such as in_proj's x half is read in place);
    weight: (2, E, K) forward then reverse taps (tap K-1 weighs the current step); bias: (2, E)
    or None; segments: (S, 3) int rows (batch row, start, end). Returns (2, B, L, E) in x's
    dtype: [0] the causal conv of each segment, [1] the conv of each segment reversed, read
    back in the original order. Rows outside every segment are zero.
    """
    _check(x, weight, bias)
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x must be fp32 or bf16, got {x.dtype}")
    batch, length, dim = x.shape
    if weight.dim() != 3 or weight.shape[:2] != (2, dim) or weight.shape[2] < 1:
        raise ValueError(f"weight must be (2, {dim}, K), got {tuple(weight.shape)}")
    seg = _segments(segments, batch, length)
    xr, ldx = _rows(x, batch, length, "x")
    width = math.ceil(dim / BLOCK) * BLOCK
    w = _padded(weight.transpose(1, 2), width)  # (2, K, Ep)
    b = None if bias is None else _padded(bias, width)
    covered = int((seg[:, 2] - seg[:, 1]).sum()) if seg.numel() else 0
    alloc = torch.empty if covered == batch * length else torch.zeros  # segments never overlap
    out = alloc(2, batch, length, dim, dtype=x.dtype)
    if out.numel() == 0 or seg.numel() == 0:
        return out
    args = args_struct(
        build.MixerArgs, B=batch, L=length, E=dim, K=weight.shape[2], bf16=int(x.dtype == torch.bfloat16),
        nseg=seg.shape[0], ldx=ldx, seg=seg, x=xr, conv_w=w, conv_b=b, xc=out,
    )  # fmt: skip
    lib = build.load()
    blocks = row_ranges(width // BLOCK, torch.get_num_threads())
    run_parallel([(lambda c0=c0, c1=c1: lib.lcplm_mixer_conv(args, c0, c1)) for c0, c1 in blocks])
    return out


def bidirectional_scan_cpu(
    xc: Tensor,
    dbl_fwd: Tensor,
    dbl_rev: Tensor,
    dt_weight: Tensor,
    dt_bias: Optional[Tensor],
    A: Tensor,
    D: Optional[Tensor],
    z: Tensor,
    segments: Tensor,
) -> Tensor:
    """Both scan directions of every segment with dt_proj fused, summed and gated, channels-last.

    xc: (2, B, L, E) the conv outputs (the scans' u); dbl_fwd, dbl_rev: (B, L, R + 2N) each
    direction's x_proj output [dt_low | B | C]; dt_weight: (2, E, R); dt_bias, D: (2, E) or None;
    A: (2, E, N) real; z: (B, L, E) (a strided view is read in place). Per direction
    delta = softplus(dt_low @ dt_weight.T + dt_bias), y = scan (mamba-ssm semantics, the state
    reset at each segment's start; the reverse direction runs from each segment's end), and the
    result is (y_fwd + y_rev + D-skips) * silu(z): (B, L, E) in xc's dtype, zero outside every
    segment.
    """
    _check(xc, dbl_fwd, dbl_rev, dt_weight, dt_bias, A, D, z)
    if xc.dtype not in ACTIVATION_DTYPES or any(t.dtype != xc.dtype for t in (dbl_fwd, dbl_rev, z)):
        raise ValueError(
            f"xc, dbl_fwd, dbl_rev and z must share one dtype, fp32 or bf16; got "
            f"{xc.dtype}, {dbl_fwd.dtype}, {dbl_rev.dtype}, {z.dtype}"
        )
    if xc.dim() != 4 or xc.shape[0] != 2:
        raise ValueError(f"xc must be (2, B, L, E), got {tuple(xc.shape)}")
    _, batch, length, dim = xc.shape
    if A.dim() != 3 or A.shape[:2] != (2, dim) or A.is_complex():
        raise ValueError(f"A must be real (2, {dim}, N), got {tuple(A.shape)}")
    nstate = A.shape[2]
    if dt_weight.dim() != 3 or dt_weight.shape[:2] != (2, dim):
        raise ValueError(f"dt_weight must be (2, {dim}, R), got {tuple(dt_weight.shape)}")
    rank = dt_weight.shape[2]
    if rank + 2 * nstate > _MAX_DBL:
        raise ValueError(f"dt_rank + 2 d_state must be at most {_MAX_DBL}, got {rank + 2 * nstate}")
    for name, t in (("dt_bias", dt_bias), ("D", D)):
        if t is not None and t.shape != (2, dim):
            raise ValueError(f"{name} must be (2, {dim}), got {tuple(t.shape)}")
    seg = _segments(segments, batch, length)
    xc = xc.contiguous()
    dbl_f, lddbl = _rows(dbl_fwd, batch, length, "dbl_fwd")
    dbl_r, lddbl_r = _rows(dbl_rev, batch, length, "dbl_rev")
    if lddbl_r != lddbl:  # the kernel takes one row stride for both
        dbl_f, dbl_r = dbl_f.contiguous(), dbl_r.contiguous()
        lddbl = dbl_f.shape[2]
    for name, t in (("dbl_fwd", dbl_f), ("dbl_rev", dbl_r)):
        if t.shape[2] != rank + 2 * nstate:
            raise ValueError(f"{name} must have dt_rank + 2 d_state = {rank + 2 * nstate} columns, got {t.shape[2]}")
    zr, ldz = _rows(z, batch, length, "z")
    if zr.shape[2] != dim:
        raise ValueError(f"z must be ({batch}, {length}, {dim}), got {tuple(z.shape)}")
    width = math.ceil(dim / BLOCK) * BLOCK
    covered = int((seg[:, 2] - seg[:, 1]).sum()) if seg.numel() else 0
    alloc = torch.empty if covered == batch * length else torch.zeros
    out = alloc(batch, length, dim, dtype=xc.dtype)
    if out.numel() == 0 or seg.numel() == 0:
        return out
    # the struct holds raw pointers: every tensor it points to stays referenced until the call ends
    dt_w = _padded(dt_weight.transpose(1, 2), width)  # (2, R, Ep)
    dt_b = None if dt_bias is None else _padded(dt_bias, width)
    A2 = _padded(A.detach().transpose(1, 2) * math.log2(math.e), width)  # (2, N, Ep): exp(x) = 2^(x log2 e)
    Dv = None if D is None else _padded(D, width)
    yf = out if out.dtype == torch.float32 else torch.empty(out.shape, dtype=torch.float32)  # y_fwd
    args = args_struct(
        build.MixerArgs, B=batch, L=length, E=dim, N=nstate, R=rank, bf16=int(xc.dtype == torch.bfloat16),
        nseg=seg.shape[0], lddbl=lddbl, ldz=ldz, seg=seg, xc=xc, dbl_f=dbl_f, dbl_r=dbl_r, z=zr,
        dt_w=dt_w, dt_b=dt_b, A2=A2, Dv=Dv, yf=yf, out=out,
    )  # fmt: skip
    lib = build.load()
    blocks = row_ranges(width // BLOCK, torch.get_num_threads())
    most = max(c1 - c0 for c0, c1 in blocks)
    work = torch.empty(len(blocks), lib.lcplm_mixer_scan_work(nstate, most), dtype=torch.float32)
    run_parallel(
        [(lambda c0=c0, c1=c1, i=i: lib.lcplm_mixer_scan(args, c0, c1, ptr(work[i]))) for i, (c0, c1) in enumerate(blocks)]
    )
    return out
