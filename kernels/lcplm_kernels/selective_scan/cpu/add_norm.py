"""Residual add + RMSNorm in one pass per row, forward only: the rest of a BiMamba-S block at
inference (``scan.c``, ``lcplm_add_rmsnorm``), beside the mixer ops of ``bidirectional.py``.
Eager PyTorch takes seven passes and as many temporaries for it (add, cast, square, mean, add,
rsqrt, two multiplies); the reference with the same contract is ``naive.add_rms_norm_ref``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import build
from .bidirectional import ACTIVATION_DTYPES, _check
from .ffi import args_struct, row_ranges, run_parallel


def add_rms_norm_cpu(
    hidden: Tensor,
    residual: Optional[Tensor],
    weight: Tensor,
    eps: float,
    norm_dtype: torch.dtype,
    res_out: Optional[Tensor] = None,
    out: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """(r, normed): r = hidden + residual in fp32 (hidden alone when residual is None), and
    normed = x / sqrt(mean(x^2) + eps) * weight with x = r in ``norm_dtype`` (fp32 or bf16:
    rounded first, as ``r.to(norm_dtype)`` would), returned in ``norm_dtype``.

    hidden: (..., d) fp32 or bf16; residual: same shape, fp32, or None; weight: (d,).
    ``res_out`` (fp32, may be ``residual`` itself: updated in place) and ``out`` are reused
    buffers, allocated when not given.
    """
    _check(hidden, residual)
    d = hidden.shape[-1]
    if hidden.dtype not in ACTIVATION_DTYPES or norm_dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"hidden and norm_dtype must be fp32 or bf16, got {hidden.dtype} and {norm_dtype}")
    if residual is not None and (residual.shape != hidden.shape or residual.dtype != torch.float32):
        raise ValueError(f"residual must be fp32 of shape {tuple(hidden.shape)}, got {residual.dtype} {tuple(residual.shape)}")
    if weight.shape != (d,):
        raise ValueError(f"weight must be ({d},), got {tuple(weight.shape)}")
    for name, t, dt in (("res_out", res_out, torch.float32), ("out", out, norm_dtype)):
        if t is not None and (t.shape != hidden.shape or t.dtype != dt or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous {dt} tensor of shape {tuple(hidden.shape)}")
    hidden = hidden.contiguous()
    residual = None if residual is None else residual.contiguous()
    res_out = torch.empty(hidden.shape, dtype=torch.float32) if res_out is None else res_out
    out = torch.empty(hidden.shape, dtype=norm_dtype) if out is None else out
    rows = hidden.numel() // d if d else 0
    if rows == 0:
        return res_out, out
    w = weight.detach().to(torch.float32).contiguous()  # referenced until the call ends
    args = args_struct(
        build.NormArgs, d=d, hidden_bf16=int(hidden.dtype == torch.bfloat16), norm_bf16=int(norm_dtype == torch.bfloat16),
        eps=float(eps), hidden=hidden, residual=residual, weight=w, res_out=res_out, normed=out,
    )  # fmt: skip
    lib = build.load()
    if build.uses_torch_threads():
        if lib.lcplm_add_rmsnorm_team(args, rows, torch.get_num_threads()) != 0:
            raise RuntimeError("lcplm_add_rmsnorm_team failed")
    else:
        run_parallel([(lambda r0=r0, r1=r1: lib.lcplm_add_rmsnorm(args, r0, r1)) for r0, r1 in row_ranges(rows, torch.get_num_threads())])
    return res_out, out
