"""``causal_conv1d_cpu``: the Mamba mixer's causal depthwise conv + SiLU as one C kernel.

Same library as the scan (``scan.c``): per channel row, the K-tap window (masked at packed
sequence starts by ``positions``), the bias and the SiLU in one pass; the backward recomputes
the pre-activation from the saved input and writes dx plus per-row partial sums of dw and
dbias. The PyTorch reference is ``lcplm.models.backends._CausalConv`` (tested against it).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import build
from .interface import _args, _f32, _p, _ranges, _run


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
        xf, wf, bf = _f32(x), _f32(weight), _f32(bias)
        pos, pos_stride = _pos32(positions, bsz, length)
        out = torch.empty(bsz, dim, length, dtype=torch.float32)
        args = _args(build.ConvArgs, E=dim, L=length, K=k, silu=int(silu), pos_stride_b=pos_stride, x=xf, w=wf, bias=bf, pos=pos, out=out)
        _run([(lambda r0=r0, r1=r1: lib.lcplm_conv_fwd(args, r0, r1)) for r0, r1 in _ranges(bsz * dim, torch.get_num_threads())])
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
        args = _args(
            build.ConvArgs, E=dim, L=length, K=k, silu=int(ctx.silu), pos_stride_b=ctx.pos_stride,
            x=xf, w=wf, bias=bf, pos=pos, dout=_f32(dout), dx=dx, dw_part=dw_part, dbias_part=dbias_part,
        )  # fmt: skip
        parts = _ranges(rows, torch.get_num_threads())
        work = torch.empty(len(parts), length, dtype=torch.float32)
        _run([(lambda r0=r0, r1=r1, i=i: lib.lcplm_conv_bwd(args, r0, r1, _p(work[i]))) for i, (r0, r1) in enumerate(parts)])
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
