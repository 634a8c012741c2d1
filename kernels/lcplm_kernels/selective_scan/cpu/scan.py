"""``selective_scan_cpu``: the fused CPU selective scan as a differentiable function.

The C kernel (``scan.c``) does all of it per channel row: delta bias and softplus, the
recurrence (its (d_state,) state in registers), the D skip, the silu(z) gate, and all their
gradients, touching each input once per pass; PyTorch only sums the per-row partial
gradients of A, B, C, D and the bias. Channels are split into contiguous row ranges, one per
thread (``torch.get_num_threads()``): the calling thread runs the first, a pool the others;
ctypes releases the GIL, so they run in parallel (``ffi.py``). The backward recomputes one chunk
of ``chunk_size`` steps at a time from the state saved at its start: saved memory is the
inputs plus (B, D, L / chunk_size, N) states, linear in L.

Semantics are mamba-ssm's ``selective_scan_fn`` (and ``naive.selective_scan_ref``,
the reference this is tested against) with one addition: ``keep`` (L,) float, 0 where a
packed sequence starts, resets the state there. Computes in fp32; other input dtypes are
converted and the output and gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import build
from .ffi import args_struct, f32, ptr, row_ranges, run_parallel

DEFAULT_CHUNK = 256


def available() -> bool:
    """True when the kernel is compiled and loadable on this machine."""
    return build.load() is not None


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, keep, chunk_size):
        lib = build.load()
        bsz, dim, length = u.shape
        nstate = A.shape[1]
        f = [f32(t) for t in (u, delta, A, D, z, delta_bias, keep)]
        uf, deltaf, Af, Df, zf, biasf, keepf = f
        Bt, Ct = f32(B.transpose(1, 2)), f32(C.transpose(1, 2))  # (B, L, N)
        rows, nchunk = bsz * dim, -(-length // chunk_size)
        out = torch.empty(bsz, dim, length, dtype=torch.float32)
        states = torch.empty(rows, nchunk, nstate, dtype=torch.float32)
        last = torch.empty(bsz, dim, nstate, dtype=torch.float32)
        y = None if zf is None else torch.empty_like(out)  # pre-gate output, for dz
        args = args_struct(
            build.ScanArgs,
            Dm=dim, L=length, N=nstate, K=chunk_size, softplus=int(delta_softplus),
            u=uf, delta=deltaf, bias=biasf, A=Af, Bt=Bt, Ct=Ct, Dv=Df, z=zf, keep=keepf,
            out=out, y=y, states=states, last=last,
        )  # fmt: skip
        parts = row_ranges(rows, torch.get_num_threads())
        work = torch.empty(len(parts), lib.lcplm_scan_work(length, nstate, chunk_size, 0), dtype=torch.float32)
        run_parallel([(lambda r0=r0, r1=r1, i=i: lib.lcplm_scan_fwd(args, r0, r1, ptr(work[i]))) for i, (r0, r1) in enumerate(parts)])
        ctx.delta_softplus, ctx.chunk_size = delta_softplus, chunk_size
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.save_for_backward(uf, deltaf, Af, Bt, Ct, Df, zf, biasf, keepf, states, y)
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, dout, dlast):
        lib = build.load()
        uf, deltaf, Af, Bt, Ct, Df, zf, biasf, keepf, states, y = ctx.saved_tensors
        bsz, dim, length = uf.shape
        nstate = Af.shape[1]
        rows, K = bsz * dim, ctx.chunk_size
        doutf = torch.zeros_like(uf) if dout is None else f32(dout)
        dlastf = f32(dlast)  # referenced until the call ends: the struct holds only its pointer
        du, ddelta = torch.empty_like(uf), torch.empty_like(uf)
        dz = None if zf is None else torch.empty_like(uf)
        dA_part = torch.empty(rows, nstate, dtype=torch.float32)
        dD_part, dbias_part = torch.empty(rows, dtype=torch.float32), torch.empty(rows, dtype=torch.float32)
        args = args_struct(
            build.ScanArgs,
            Dm=dim, L=length, N=nstate, K=K, softplus=int(ctx.delta_softplus),
            u=uf, delta=deltaf, bias=biasf, A=Af, Bt=Bt, Ct=Ct, Dv=Df, z=zf, keep=keepf,
            y=y, states=states, dout=doutf, dlast=dlastf,
            du=du, ddelta=ddelta, dz=dz, dA_part=dA_part, dD_part=dD_part, dbias_part=dbias_part,
        )  # fmt: skip
        parts = row_ranges(rows, torch.get_num_threads())
        # dB and dC sum over channels, which different threads own: one buffer per thread
        dBt = torch.zeros(len(parts), bsz, length, nstate, dtype=torch.float32)
        dCt = torch.zeros(len(parts), bsz, length, nstate, dtype=torch.float32)
        work = torch.empty(len(parts), lib.lcplm_scan_work(length, nstate, K, 1), dtype=torch.float32)
        run_parallel(
            [
                (lambda r0=r0, r1=r1, i=i: lib.lcplm_scan_bwd(args, r0, r1, ptr(dBt[i]), ptr(dCt[i]), ptr(work[i])))
                for i, (r0, r1) in enumerate(parts)
            ]
        )
        dB = (dBt[0] if len(parts) == 1 else dBt.sum(0)).transpose(1, 2)
        dC = (dCt[0] if len(parts) == 1 else dCt.sum(0)).transpose(1, 2)
        grads = (
            du,
            ddelta,
            dA_part.view(bsz, dim, nstate).sum(0),
            dB,
            dC,
            None if Df is None else dD_part.view(bsz, dim).sum(0),
            dz,
            None if biasf is None else dbias_part.view(bsz, dim).sum(0),
        )
        return tuple(None if g is None else g.to(t) for g, t in zip(grads, ctx.dtypes)) + (None, None, None)


def selective_scan_cpu(
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
    keep: Optional[Tensor] = None,
    chunk_size: int = DEFAULT_CHUNK,
):
    """Fused CPU selective scan; mamba-ssm's ``selective_scan_fn`` contract plus ``keep``.

    u, delta, z: (B, D, L); A: (D, N) real; B, C: (B, N, L); D, delta_bias: (D,);
    keep: (L,) float, 0 at each packed sequence's first token (needs B == 1).
    Returns out (B, D, L) in u's dtype, and the fp32 state after the last step (B, D, N) if
    asked; gradients flow through both. Raises RuntimeError when the kernel is unavailable
    (check :func:`available`; :func:`build.unavailable_reason` says why).
    """
    if build.load() is None:
        raise RuntimeError(f"selective_scan_cpu is unavailable: {build.unavailable_reason()}")
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, keep) if t is not None]
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("selective_scan_cpu needs CPU tensors")
    if A.is_complex():
        raise ValueError("selective_scan_cpu supports real A only")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bsz, dim, length = u.shape
    if keep is not None and (bsz != 1 or keep.shape != (length,)):
        raise ValueError(f"keep must be (L,) = ({length},) with batch 1, got {tuple(keep.shape)} with batch {bsz}")
    if length == 0 or bsz * dim == 0:
        out = u.new_zeros(u.shape) + 0 * u  # keeps the graph so backward is defined
        last = torch.zeros(bsz, dim, A.shape[1], dtype=torch.float32)
        return (out, last) if return_last_state else out
    out, last = _SelectiveScanCPU.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), keep, int(chunk_size)
    )
    return (out, last) if return_last_state else out
