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



# ----------------------------------------------------------------------------------------
# The bidirectional mixer ops (cpu/bidirectional.py) in PyTorch: per segment, the forward
# direction as is, the reverse one on the segment flipped and flipped back. Channels-last
# (B, L, E) like the fast path; loops over segments, for tests.
# ----------------------------------------------------------------------------------------


def sequence_segments(
    batch: int, length: int, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None
) -> Tensor:
    """(S, 3) int64 rows (batch row, start, end): where each sequence of a batch sits.

    Padded (``lengths`` (B,)): one segment [0, length_b) per row; packed (``cu_seqlens``, B = 1):
    one per sequence; neither: every row is one sequence. Empty sequences are left out.
    """
    if lengths is not None and cu_seqlens is not None:
        raise ValueError("give lengths (padded batch) or cu_seqlens (packed batch), not both")
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(f"cu_seqlens needs a packed batch of size 1, got batch {batch}")
        segment_starts(cu_seqlens, length)  # validates
        cu = cu_seqlens.to(device="cpu", dtype=torch.int64)
        seg = torch.stack([torch.zeros_like(cu[:-1]), cu[:-1], cu[1:]], 1)
    elif lengths is not None:
        lens = lengths.to(device="cpu", dtype=torch.int64)
        if lens.shape != (batch,) or bool(((lens < 0) | (lens > length)).any()):
            raise ValueError(f"lengths must be ({batch},) values in [0, {length}], got {lens.tolist()}")
        seg = torch.stack([torch.arange(batch), torch.zeros_like(lens), lens], 1)
    else:
        seg = torch.tensor([[b, 0, length] for b in range(batch)], dtype=torch.int64).view(-1, 3)
    return seg[seg[:, 2] > seg[:, 1]].contiguous()


def bidirectional_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor], segments: Tensor) -> Tensor:
    """``bidirectional_conv1d_cpu``'s contract with ``torch.nn.functional.conv1d``, in fp32.

    x: (B, L, E); weight: (2, E, K); bias: (2, E) or None; segments: (S, 3).
    Returns (2, B, L, E) in x's dtype, zero outside every segment.
    """
    out = torch.zeros((2, *x.shape), dtype=torch.float32)
    k = weight.shape[2]
    for b, s, e in segments.tolist():
        seq = x[b, s:e].float().t()[None]  # (1, E, n)
        for d, xs in ((0, seq), (1, seq.flip(-1))):
            bd = None if bias is None else bias[d].float()
            y = F.silu(F.conv1d(xs, weight[d].float()[:, None, :], bd, padding=k - 1, groups=x.shape[2])[..., : e - s])
            out[d, b, s:e] = (y if d == 0 else y.flip(-1))[0].t()
    return out.to(x.dtype)


def bidirectional_scan_ref(
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
    """``bidirectional_scan_cpu``'s contract with :func:`selective_scan_ref`, in fp32.

    xc: (2, B, L, E); dbl_fwd, dbl_rev: (B, L, R + 2N); dt_weight: (2, E, R); dt_bias, D:
    (2, E) or None; A: (2, E, N); z: (B, L, E). Returns (y_fwd + y_rev) * silu(z) (B, L, E)
    in xc's dtype, zero outside every segment.
    """
    rank, nstate = dt_weight.shape[2], A.shape[2]
    out = torch.zeros(z.shape, dtype=torch.float32)
    for b, s, e in segments.tolist():
        y = torch.zeros(e - s, z.shape[2])
        for d, dbl in ((0, dbl_fwd), (1, dbl_rev)):
            rows = dbl[b, s:e].float()
            u = xc[d, b, s:e].float()
            if d == 1:
                rows, u = rows.flip(0), u.flip(0)
            dt_low, bm, cm = rows.split([rank, nstate, nstate], dim=-1)
            delta = dt_low @ dt_weight[d].float().t()  # (n, E)
            yd = selective_scan_ref(
                u.t()[None], delta.t()[None], A[d].float(), bm.t()[None], cm.t()[None],
                None if D is None else D[d].float(), None,
                None if dt_bias is None else dt_bias[d].float(), delta_softplus=True,
            )[0].t()  # fmt: skip
            y += yd if d == 0 else yd.flip(0)
        out[b, s:e] = y * F.silu(z[b, s:e].float())
    return out.to(xc.dtype)


def add_rms_norm_ref(
    hidden: Tensor, residual: Optional[Tensor], weight: Tensor, eps: float, norm_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``cpu.add_rms_norm_cpu``'s contract in PyTorch: r = hidden (+ residual) in fp32, then the
    RMSNorm of r cast to ``norm_dtype``, computed in fp32, returned in ``norm_dtype``."""
    r = hidden.float() if residual is None else (hidden + residual).float()
    x = r.to(norm_dtype).float()
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return r, out.to(norm_dtype)
