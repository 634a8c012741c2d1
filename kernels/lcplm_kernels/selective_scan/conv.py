"""Causal depthwise conv1d + SiLU, the Mamba mixer's other per-token operation, two ways:

- ``causal_conv1d_torch``: PyTorch, a sum of K shifted copies (the same arithmetic for padded
  and packed batches), as an autograd op that saves only its input (autograd's own graph would
  keep K shifted copies and the pre-activation, 5x the input's memory). The reference, and the
  path wherever the C library is not used.
- ``causal_conv1d_cpu``: one C kernel from the scan's library (``cpu/scan.c``): per channel
  row, the K-tap window (masked at packed sequence starts by ``positions``), the bias and the
  SiLU in one pass; the backward recomputes the pre-activation from the saved input and writes
  dx plus per-row partial sums of dw and dbias. Tested against ``causal_conv1d_torch``.

``interface.causal_conv1d`` picks between them (and causal-conv1d's CUDA kernel).
Shapes: x (B, E, L); weight (E, K); bias (E,); positions (L,) or (B, L) int, each token's
index within its own packed sequence (None for padded batches): taps reaching before a
sequence's start read zeros, so no window crosses a boundary.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpu import build
from .cpu.ffi import args_struct, f32, ptr, row_ranges, run_parallel


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
    """Causal depthwise conv (+ SiLU) that saves only its input."""

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


def causal_conv1d_torch(
    x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, positions: Optional[Tensor] = None, silu: bool = True
) -> Tensor:
    """Causal depthwise conv1d (+ SiLU) in PyTorch, any device and dtype: (B, E, L) in x's dtype."""
    return _CausalConv.apply(x, weight, bias, positions, bool(silu))


def _pos32(positions: Optional[Tensor], bsz: int, length: int) -> tuple[Optional[Tensor], int]:
    if positions is None:
        return None, 0
    if positions.shape not in ((length,), (bsz, length)):
        raise ValueError(f"positions must be (L,) or (B, L) = ({bsz}, {length}), got {tuple(positions.shape)}")
    return positions.detach().to(torch.int32).contiguous(), (length if positions.dim() == 2 else 0)


class _CausalConvCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, positions, silu):
        lib = build.load()
        bsz, dim, length = x.shape
        k = weight.shape[1]
        xf, wf, bf = f32(x), f32(weight), f32(bias)
        pos, pos_stride = _pos32(positions, bsz, length)
        out = torch.empty(bsz, dim, length, dtype=torch.float32)
        args = args_struct(build.ConvArgs, E=dim, L=length, K=k, silu=int(silu), pos_stride_b=pos_stride, x=xf, w=wf, bias=bf, pos=pos, out=out)
        run_parallel([(lambda r0=r0, r1=r1: lib.lcplm_conv_fwd(args, r0, r1)) for r0, r1 in row_ranges(bsz * dim, torch.get_num_threads())])
        ctx.save_for_backward(xf, wf, bf, pos)
        ctx.silu, ctx.pos_stride = silu, pos_stride
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        lib = build.load()
        xf, wf, bf, pos = ctx.saved_tensors
        bsz, dim, length = xf.shape
        k = wf.shape[1]
        rows = bsz * dim
        dx = torch.empty_like(xf)
        dw_part = torch.empty(rows, k, dtype=torch.float32)
        dbias_part = torch.empty(rows, dtype=torch.float32)
        doutf = f32(dout)  # referenced until the call ends: the struct holds only its pointer
        args = args_struct(
            build.ConvArgs, E=dim, L=length, K=k, silu=int(ctx.silu), pos_stride_b=ctx.pos_stride,
            x=xf, w=wf, bias=bf, pos=pos, dout=doutf, dx=dx, dw_part=dw_part, dbias_part=dbias_part,
        )  # fmt: skip
        parts = row_ranges(rows, torch.get_num_threads())
        work = torch.empty(len(parts), length, dtype=torch.float32)
        run_parallel([(lambda r0=r0, r1=r1, i=i: lib.lcplm_conv_bwd(args, r0, r1, ptr(work[i]))) for i, (r0, r1) in enumerate(parts)])
        dt_x, dt_w, dt_b = ctx.dtypes
        dw = dw_part.view(bsz, dim, k).sum(0).to(dt_w)
        dbias = None if bf is None else dbias_part.view(bsz, dim).sum(0).to(dt_b)
        return dx.to(dt_x), dw, dbias, None, None


def causal_conv1d_cpu(
    x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, positions: Optional[Tensor] = None, silu: bool = True
) -> Tensor:
    """Causal depthwise conv1d (+ SiLU) on CPU: x (B, E, L), weight (E, K), bias (E,),
    positions (L,) or (B, L) int (each token's index in its own packed sequence, or None).
    Returns (B, E, L) in x's dtype; computes in fp32."""
    if build.load() is None:
        raise RuntimeError(f"causal_conv1d_cpu is unavailable: {build.unavailable_reason()}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"x must be (B, E, L) and weight (E, K); got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.device.type != "cpu":
        raise ValueError("causal_conv1d_cpu needs CPU tensors")
    if x.shape[-1] == 0 or x.shape[0] * x.shape[1] == 0 or weight.shape[1] == 0:
        return x.new_zeros(x.shape) + 0 * x
    return _CausalConvCPU.apply(x, weight, bias, positions, bool(silu))
