"""Mamba-1 selective scan, the sequential reference: the contract every backend is tested against.

Semantics are mamba-ssm's ``selective_scan_fn`` (real A, input-dependent B and C)::

    delta <- softplus(delta + delta_bias)            (bias and softplus optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t     h: (B, D, N), h_{-1} = 0
    y_t    = <C_t, h_t> + D * u_t
    out_t  = y_t * silu(z_t)                         (gating optional)

plus segment resets for packed sequences: at every sequence start given by ``cu_seqlens``
the state restarts from zero, so no information crosses a sequence boundary.

Shapes: u, delta, z ``(B, D, L)``; A ``(D, N)``; B, C ``(B, N, L)``; D, delta_bias ``(D,)``;
out ``(B, D, L)`` in u's dtype; last state ``(B, D, N)`` fp32. All arithmetic is fp32; fp64
inputs run in fp64, which makes the reference its own fp64 oracle (the tests measure every
fast path's fp32 error against it: at most twice the fp32 reference's).

Pure PyTorch, one step at a time (autograd's backward): for tests. The fast paths are
``chunked.py`` (PyTorch), ``cpu/`` (fused C) and mamba-ssm's CUDA kernel, dispatched by
``interface.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_starts(cu_seqlens: Tensor, length: int) -> Tensor:
    """Bool mask ``(L,)``: True where a packed sequence starts (cu_seqlens[:-1])."""
    cu = cu_seqlens.to(device="cpu", dtype=torch.long)
    if cu.ndim != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != length:
        raise ValueError(
            f"cu_seqlens must be 1-D, start at 0 and end at the packed length {length}; got {cu.tolist()}"
        )
    if bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing; got {cu.tolist()}")
    starts = torch.zeros(length, dtype=torch.bool)
    starts[cu[:-1][cu[:-1] < length]] = True
    return starts.to(cu_seqlens.device)


def check_scan_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, delta_bias, cu_seqlens):
    if u.ndim != 3:
        raise ValueError(f"u must be (B, D, L), got {tuple(u.shape)}")
    bsz, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.ndim != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be real (D, N) with D={dim}, got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (bsz, n, length):
            raise ValueError(f"{name} must be input-dependent (B, N, L) = {(bsz, n, length)}, got {tuple(t.shape)}")
    if D is not None and D.shape != (dim,):
        raise ValueError(f"D must be ({dim},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"delta_bias must be ({dim},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z {tuple(z.shape)} must match u {tuple(u.shape)}")
    if cu_seqlens is not None and bsz != 1:
        raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {bsz}")


def selective_scan_ref(
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
):
    """Sequential fp32 reference (fp64 for fp64 inputs), one step at a time; autograd's backward.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,);
    cu_seqlens: (n+1,) int, packed batch (B == 1): the state resets at each sequence start.
    Returns out (B, D, L) in u's dtype, and the state after the last step (B, D, N) if asked.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, cu_seqlens)
    dtype_in = u.dtype
    ct = torch.float64 if dtype_in == torch.float64 else torch.float32  # fp64 in: an fp64 oracle
    u, delta, A, B, C = u.to(ct), delta.to(ct), A.to(ct), B.to(ct), C.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    keep = None
    if cu_seqlens is not None:
        keep = (~segment_starts(cu_seqlens, length)).to(ct)
    h = u.new_zeros(bsz, dim, A.shape[1])
    ys = []
    # unbind (not indexing) so that autograd's backward stays linear in L
    steps = zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1))
    for t, (dt, ut, bt, ctt) in enumerate(steps):
        decay = torch.exp(dt[:, :, None] * A)  # (B, D, N)
        if keep is not None:
            decay = decay * keep[t]
        h = decay * h + (dt * ut)[:, :, None] * bt[:, None, :]
        ys.append((h * ctt[:, None, :]).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(bsz, dim, 0)
    if D is not None:
        y = y + D.to(ct)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(ct))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out

