"""``block_sparse_attn``: the differentiable entry point, dispatching Triton on CUDA and the
block-wise PyTorch reference elsewhere.

The Triton modules are imported on first use, not at import time: CPU users never need a
working Triton, and the interpreter (``TRITON_INTERPRET=1``) only takes effect when it is set
before the kernels are defined.
"""

from __future__ import annotations

import math

import torch

from .layout import BlockLayout
from .naive import blockwise_block_sparse_attn

_BACKENDS = ("auto", "triton", "reference")


def _kernels():
    from . import bwd, fwd

    return fwd, bwd


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow PyTorch's own matmul setting; fp16/bf16 ignore the option
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must all be (B, H, L, D) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, _, L, _ = q.shape
    if (layout.batch_size, layout.seqlen) != (B, L):
        raise ValueError(
            f"layout was built for (B, L) = ({layout.batch_size}, {layout.seqlen}), q has ({B}, {L})"
        )
    if not (q.device == k.device == v.device == layout.device):
        raise ValueError(
            f"q, k, v and layout must be on one device, got {q.device}, {k.device}, {v.device}, {layout.device}"
        )


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def triton_fwd(q, k, v, layout: BlockLayout, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kernel launch. q, k, v: (B, H, L, D). Returns out (B, H, L, D), lse (B, H, L) fp32 base 2."""
    fwd, _ = _kernels()
    B, H, L, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    fwd.block_sparse_attn_fwd_kernel[(B * layout.num_q_blocks, H)](
        q, k, v, out, lse,
        layout.kernel_pid, layout.kernel_allowed, layout.q_ptr, layout.q_idx, layout.q_full_ptr, layout.q_full_idx, layout.q_order,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, L, layout.num_proteins + 1, layout.num_q_blocks, scale * math.log2(math.e), fwd.l_bucket(L),
        BLOCK_M=layout.block_m, BLOCK_N=layout.block_n, BLOCK_D=_block_d(D), HEAD_D=D,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse


def triton_bwd(do, q, k, v, out, lse, layout: BlockLayout, scale: float):
    """Backward kernel launches. Returns dq, dk, dv, each (B, H, L, D) in the input dtype."""
    fwd, bwd = _kernels()
    B, H, L, D = q.shape
    block_d = _block_d(D)
    delta = torch.empty(B, H, L, device=q.device, dtype=torch.float32)
    pre_block = 64
    bwd.block_sparse_attn_bwd_preprocess_kernel[(-(-L // pre_block), B * H)](
        out, do, delta,
        out.stride(0), out.stride(1), out.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, L, BLOCK_M=pre_block, BLOCK_D=block_d, HEAD_D=D,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(BLOCK_M=layout.block_m, BLOCK_N=layout.block_n, BLOCK_D=block_d, HEAD_D=D,
                  DOT_PRECISION=_dot_precision(q.dtype))
    qk_scale = scale * math.log2(math.e)
    strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
    )
    bwd.block_sparse_attn_bwd_dkdv_kernel[(B * layout.num_k_blocks, H)](
        q, k, v, do, lse, delta, dk, dv,
        layout.kernel_pid, layout.kernel_allowed, layout.k_ptr, layout.k_idx, layout.k_full_ptr, layout.k_full_idx, layout.k_order,
        *strides,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, L, layout.num_proteins + 1, layout.num_k_blocks, qk_scale, scale, fwd.l_bucket(L),
        **common,
    )
    bwd.block_sparse_attn_bwd_dq_kernel[(B * layout.num_q_blocks, H)](
        q, k, v, do, lse, delta, dq,
        layout.kernel_pid, layout.kernel_allowed, layout.q_ptr, layout.q_idx, layout.q_full_ptr, layout.q_full_idx, layout.q_order,
        *strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        H, L, layout.num_proteins + 1, layout.num_q_blocks, qk_scale, scale, fwd.l_bucket(L),
        **common,
    )
    return dq, dk, dv


def _block_d(D: int) -> int:
    if not 16 <= D <= 128:
        raise ValueError(
            f"the Triton kernel supports head dims 16..128, got {D}; use backend='reference' for others"
        )
    return 1 << (D - 1).bit_length()


class BlockSparseAttnFunction(torch.autograd.Function):
    """Autograd wrapper of the Triton forward and backward kernels."""

    @staticmethod
    def forward(ctx, q, k, v, layout: BlockLayout, scale: float):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        out, lse = triton_fwd(q, k, v, layout, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = triton_bwd(_last_dim_contiguous(do), q, k, v, out, lse, ctx.layout, ctx.scale)
        return dq, dk, dv, None, None


def block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: BlockLayout,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention restricted to the layout's pattern. q, k, v: (B, H, L, D) -> out (B, H, L, D).

    Query i of sample b attends key j iff pid[b, i] >= 0, pid[b, j] >= 0 and
    allowed[b, pid[b, i], pid[b, j]] (see :func:`build_layout`); a query with no allowed key
    gets zeros. scale defaults to 1/sqrt(D). Differentiable in q, k, v.
    backend: "auto" (Triton on CUDA tensors, the block-wise PyTorch reference otherwise),
    "triton" (also on CPU under TRITON_INTERPRET=1, for tests) or "reference".
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    _check(q, k, v, layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if backend == "reference" or (backend == "auto" and not q.is_cuda):
        return blockwise_block_sparse_attn(q, k, v, layout, scale)
    _block_d(q.shape[-1])
    if not q.is_cuda:
        fwd, _ = _kernels()
        if not fwd.INTERPRET:
            raise RuntimeError(
                "Triton on CPU tensors needs TRITON_INTERPRET=1 set before "
                "lcplm_kernels.block_sparse_attn.fwd is first imported"
            )
    return BlockSparseAttnFunction.apply(q, k, v, layout, scale)
