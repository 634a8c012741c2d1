"""Mamba-1 selective scan in pure PyTorch, chunked, with a hand-written backward.

The contract (shapes, semantics, segment resets) is the sequential reference's
(``naive.selective_scan_ref``); this is the fast path that needs no compiler: the CPU
fallback when the fused C kernel (``cpu/``) cannot build, fp64 inputs, and CUDA without
mamba-ssm. ``interface.selective_scan`` dispatches between them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import check_scan_shapes, segment_starts


# ----------------------------------------------------------------------------------------
# Chunked scan.
#
# The sequence is cut into chunks of K steps, processed one after another with the state
# carried between them; the backward walks the chunks in reverse, recomputing each chunk's
# states from its saved entering state. The autograd graph therefore holds only the inputs
# plus one (B, D, N) state per chunk: memory is linear in L with a small constant, and the
# (K, B, N, D) work tensors of one chunk are the only large temporaries (K is sized so they
# stay cache-resident).
#
# Inside a chunk the K steps are split into nsub sub-chunks of T steps. The recurrence runs
# its T steps vectorised over all sub-chunks at once (each from a zero state), the true state
# entering each sub-chunk is propagated across the nsub boundaries, and a second T-step pass
# recomputes the states from those entering states: 2T + nsub python-level steps instead of
# K. nsub grows when the per-step state (B*D*N) is small, where per-op overhead would
# dominate a step-by-step loop; for large states nsub = 1 and the chunk is a plain loop.
#
# Numerical safety: the usual closed form h_t = e^{S_t} * cumsum_s(e^{-S_s} b_s), with S the
# cumulative log-decay, needs e^{-S_s}, which overflows fp32 once the decay accumulated in a
# chunk exceeds ~88 nats (6 steps of delta = 1 with A = -16), after which e^{S_t} underflows
# and inf * 0 gives NaN; no chunk size makes that safe for every delta. Here every factor is
# a decay in [0, 1]: step decays exp(delta A), and sub-chunk total decays exp(A sum delta).
# Underflow to zero only drops terms below 1e-38 of their source, nothing can overflow for
# any delta, and the arithmetic is the sequential recurrence's.
# ----------------------------------------------------------------------------------------

_SMALL_STATE = 1 << 14  # below this many state elements per step, per-op overhead dominates
_CHUNK_ELEMS = 1 << 19  # auto chunk: about this many elements (2 MB fp32, an L2) per work tensor


def _plan(m: int, length: int, chunk_size: Optional[int]) -> tuple[int, int]:
    """(nsub, T) for a per-step state of m elements; the chunk is K = nsub * T steps.

    A step costs ~6 us of dispatch plus ~0.3 ns per element. Sub-chunks double the element
    work (two passes) to cut the python-level steps from K to 2K/nsub + nsub, which pays
    only when dispatch dominates, i.e. for small states; nsub ~ sqrt(2K) minimises the steps.
    """
    k = chunk_size if chunk_size is not None else max(16, min(4096, _CHUNK_ELEMS // max(m, 1)))
    k = max(1, min(k, length))
    nsub = 1
    if m < _SMALL_STATE:
        while (2 * nsub) ** 2 <= 2 * k:
            nsub *= 2
    return nsub, -(-k // nsub)


def _time_major(x: Tensor) -> Tensor:
    """(B, X, L) -> time-major fp32 (L, B, X); no copy when x is time-major in memory already."""
    bsz, width, length = x.shape
    tm = x.permute(2, 0, 1)
    if tm.is_contiguous():
        return tm.float()
    if x.is_contiguous():
        # a 2-D transpose copy is several times faster than torch's general 3-D permute copy
        return x.reshape(bsz * width, length).t().contiguous().view(length, bsz, width).float()
    return tm.contiguous().float()


def _rows(x: Tensor, l0: int, l1: int, rows: int) -> Tensor:
    """x[l0:l1] of a time-major tensor, zero rows appended up to ``rows``."""
    out = x[l0:l1]
    if rows > l1 - l0:
        out = F.pad(out, (0, 0, 0, 0, 0, rows - (l1 - l0)))
    return out


class _Chunk:
    """One chunk's time-major fp32 inputs, zero-padded to K steps.

    Padded steps have delta = 0 (decay 1, no input) and C = 0, so they neither change the
    carried state nor produce output: the state after them is the last real step's state.
    """

    def __init__(self, scan: "_Scan", l0: int):
        K = scan.K
        self.l0, self.l1 = l0, min(l0 + K, scan.length)
        self.k = self.l1 - l0
        self.scan = scan
        self.raw = scan.raw[self.l0 : self.l1]  # (k, B, D) delta + bias, before softplus
        self.dlt = _rows(scan.dlt, self.l0, self.l1, K)  # (K, B, D)
        self.u = _rows(scan.u, self.l0, self.l1, K)  # (K, B, D)
        self.du = _rows(scan.du, self.l0, self.l1, K)  # (K, B, D)
        self.B = _rows(scan.B, self.l0, self.l1, K)  # (K, B, N)
        self.C = _rows(scan.C, self.l0, self.l1, K)  # (K, B, N)
        self.keep = None  # (K,): 0 at a sequence start, else 1
        if scan.keep is not None:
            self.keep = F.pad(scan.keep[self.l0 : self.l1], (0, K - self.k), value=1.0)

    def decays(self) -> Tensor:
        """exp(delta_t * A), 0 at sequence starts: (K, B, N, D), in the scan's buffer."""
        a = torch.mul(self.dlt[:, :, None, :], self.scan.At, out=self.scan.buf_a).exp_()
        if self.keep is not None:
            a.mul_(self.keep[:, None, None, None])
        return a

    def inputs(self) -> Tensor:
        """delta_t * u_t * B_t: (K, B, N, D), in the scan's buffer."""
        return torch.mul(self.du[:, :, None, :], self.B[:, :, :, None], out=self.scan.buf_b)

    def sub_decays(self) -> Optional[Tensor]:
        """Total decay of each sub-chunk, exp(A sum delta), 0 if a sequence starts in it: (nsub, M)."""
        nsub, T = self.scan.nsub, self.scan.T
        if nsub == 1:
            return None
        s = self.dlt.reshape(nsub, T, *self.dlt.shape[1:]).sum(1)  # (nsub, B, D)
        p = torch.mul(s[:, :, None, :], self.scan.At).exp_()  # (nsub, B, N, D)
        if self.keep is not None:
            p.mul_(self.keep.view(nsub, T).prod(1)[:, None, None, None])
        return p.view(nsub, -1)

    def states(self, h0: Tensor) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor], Tensor]:
        """(a, b, h, p, last state) over this chunk, from the entering state h0 (M,)."""
        a, b, p = self.decays(), self.inputs(), self.sub_decays()
        h, last = _states(a, b, p, h0, self.scan.nsub, self.scan.buf_h)
        return a, b, h, p, last


class _Scan:
    """One call's time-major fp32 inputs (transient, inputs-sized), chunk plan, and reusable
    (K, B, N, D) work buffers: reused so that no chunk faults in fresh pages for them."""

    def __init__(self, u, delta, A, B, C, delta_bias, delta_softplus, keep, chunk_size, backward=False):
        self.bsz, self.dim, self.length = u.shape
        self.n = A.shape[1]
        self.nsub, self.T = _plan(self.bsz * self.dim * self.n, self.length, chunk_size)
        self.K = self.nsub * self.T
        self.At = A.float().t().contiguous()  # (N, D)
        self.raw = _time_major(delta)  # (L, B, D)
        if delta_bias is not None:
            self.raw = self.raw + delta_bias.float()
        self.dlt = F.softplus(self.raw) if delta_softplus else self.raw
        self.u = _time_major(u)  # (L, B, D)
        self.du = self.dlt * self.u
        self.B = _time_major(B)  # (L, B, N)
        self.C = _time_major(C)  # (L, B, N)
        self.keep = keep
        shape = (self.K, self.bsz, self.n, self.dim)
        opts = dict(dtype=torch.float32, device=u.device)
        self.buf_a, self.buf_b, self.buf_h = (torch.empty(shape, **opts) for _ in range(3))
        self.buf_g = torch.empty(shape, **opts) if backward else None

    def chunks(self) -> list[int]:
        return list(range(0, self.length, self.K))


def _states(a: Tensor, b: Tensor, p: Optional[Tensor], h0: Tensor, nsub: int, out: Tensor) -> tuple[Tensor, Tensor]:
    """All states of h_t = a_t h_{t-1} + b_t over one chunk, from h0, written to ``out``.

    a, b, out: (K, ...) with M elements per step; p: (nsub, M) sub-chunk decays; h0: (M,).
    Returns ``out`` and a copy of the last state (M,).
    """
    T = a.shape[0] // nsub
    a3 = a.view(nsub, T, -1)
    b3 = b.view(nsub, T, -1)
    if nsub == 1:
        enter = h0[None]
    else:
        # pass 1: every sub-chunk from a zero state, keeping only its end state
        cur = b3[:, 0].clone()
        for t in range(1, T):
            torch.addcmul(b3[:, t], a3[:, t], cur, out=cur)
        # the true state entering each sub-chunk (row nsub: leaving the last one)
        enter = torch.empty((nsub + 1, cur.shape[1]), dtype=cur.dtype, device=cur.device)
        enter[0] = h0
        for c in range(nsub):
            torch.addcmul(cur[c], p[c], enter[c], out=enter[c + 1])
        enter = enter[:nsub]
    # pass 2: the states, from the entering states
    h3 = out.view(nsub, T, -1)
    torch.addcmul(b3[:, 0], a3[:, 0], enter, out=h3[:, 0])
    for t in range(1, T):
        torch.addcmul(b3[:, t], a3[:, t], h3[:, t - 1], out=h3[:, t])
    # a copy: a view would keep the chunk's whole buffer alive in the autograd graph
    return out, h3[-1, -1].clone()


def _adjoints(a: Tensor, g: Tensor, p: Optional[Tensor], g_end: Tensor, nsub: int) -> Tensor:
    """Adjoint states over one chunk, in place in g: g_t <- g_t + a_{t+1} g_{t+1}.

    a, g: (K, ...) with M elements per step (g holds dL/dh_t from the outputs); p: (nsub, M);
    g_end: (M,), a_{next} * g_{next} flowing in from after the chunk.
    Returns a_{first} * g_{first} (M,), what flows into the previous chunk.
    """
    T = a.shape[0] // nsub
    a3 = a.view(nsub, T, -1)
    g3 = g.view(nsub, T, -1)
    if nsub == 1:
        enter = g_end[None]
    else:
        cur = g3[:, T - 1].clone()
        for t in range(T - 2, -1, -1):
            torch.addcmul(g3[:, t], a3[:, t + 1], cur, out=cur)
        cur.mul_(a3[:, 0])  # a_first * g_first of each sub-chunk, from a zero end state
        # flowing into each sub-chunk's last step from the right (row nsub: from the next chunk)
        enter = torch.empty((nsub + 1, cur.shape[1]), dtype=cur.dtype, device=cur.device)
        enter[nsub] = g_end
        for c in range(nsub - 1, 0, -1):
            torch.addcmul(cur[c], p[c], enter[c + 1], out=enter[c])
        enter = enter[1:]
    g3[:, T - 1].add_(enter)
    for t in range(T - 2, -1, -1):
        g3[:, t].addcmul_(a3[:, t + 1], g3[:, t + 1])
    return a3[0, 0] * g3[0, 0]


def _like(x: Tensor, tm: Tensor) -> Tensor:
    """A time-major (L, B, X) result as a (B, X, L) tensor with x's dtype and memory layout, so
    that the ops around the scan see the strides they produced (no slow strided copies later)."""
    length, bsz, width = tm.shape
    out = torch.empty_like(x)
    if out.is_contiguous():
        out.view(bsz * width, length).copy_(tm.view(length, bsz * width).t())  # fast 2-D transpose
    else:
        out.copy_(tm.permute(1, 2, 0))
    return out


def _contract_n(h: Tensor, c: Tensor, scratch: Tensor) -> Tensor:
    """sum_n c[k, b, n] h[k, b, n, d] -> (K, B, D); multiply + sum beats bmm's batched
    (1 x N) @ (N x D) products several times on CPU."""
    return torch.mul(h, c[:, :, :, None], out=scratch).sum(2)


class _SelectiveScanChunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, keep, chunk_size):
        scan = _Scan(u, delta, A, B, C, delta_bias, delta_softplus, keep, chunk_size)
        zt = _time_major(z) if z is not None else None
        out = torch.empty(scan.length, scan.bsz, scan.dim, dtype=torch.float32, device=u.device)  # time-major
        Df = D.float() if D is not None else None
        starts = []  # the state entering each chunk
        s = u.new_zeros(scan.bsz * scan.n * scan.dim, dtype=torch.float32)
        for l0 in scan.chunks():
            ch = _Chunk(scan, l0)
            starts.append(s)
            _, _, h, _, s = ch.states(s)
            y = _contract_n(h, ch.C, scan.buf_b)[: ch.k]  # sum_n C_t h_t: (k, B, D)
            if Df is not None:
                y.addcmul_(ch.u[: ch.k], Df)
            if zt is not None:
                y.mul_(F.silu(zt[ch.l0 : ch.l1]))
            out[ch.l0 : ch.l1] = y
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, keep, *starts)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_size = chunk_size
        last = s.view(scan.bsz, scan.n, scan.dim).transpose(1, 2).contiguous()
        return _like(u, out), last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, keep, *starts = ctx.saved_tensors
        scan = _Scan(u, delta, A, B, C, delta_bias, ctx.delta_softplus, keep, ctx.chunk_size, backward=True)
        Df = D.float() if D is not None else None
        dout_t = _time_major(dout)  # (L, B, D)
        zt = _time_major(z) if z is not None else None
        # time-major fp32 gradients, filled chunk by chunk
        du, ddelta, dz = (torch.empty_like(scan.u) for _ in range(3))
        dB, dC = torch.empty_like(scan.B), torch.empty_like(scan.C)
        dAt_b = scan.At.new_zeros(scan.bsz, scan.n, scan.dim)  # dA per batch row, transposed
        dD = scan.At.new_zeros(scan.dim)
        dbias = scan.At.new_zeros(scan.dim)
        g_end = dlast.float().transpose(1, 2).reshape(-1)  # (B, N, D) order
        for l0, h0 in zip(reversed(scan.chunks()), reversed(starts)):
            ch = _Chunk(scan, l0)
            l1, k = ch.l1, ch.k
            a, b, h, p, _ = ch.states(h0)
            dy = _rows(dout_t, l0, l1, scan.K)  # (K, B, D), dL/d output
            if zt is not None:
                zk = _rows(zt, l0, l1, scan.K)
                sz = torch.sigmoid(zk)
                y = _contract_n(h, ch.C, scan.buf_g)
                if Df is not None:
                    y.addcmul_(ch.u, Df)
                # d silu(z)/dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
                dz[l0:l1] = (dy * y * sz * (1 + zk * (1 - sz)))[:k]
                dy = dy * zk * sz  # dL/dy, y before gating
            if Df is not None:
                dD += (dy * ch.u).sum((0, 1))
            dC[l0:l1] = torch.mul(h, dy[:, :, None, :], out=scan.buf_g).sum(3)[:k]
            g = torch.mul(ch.C[:, :, :, None], dy[:, :, None, :], out=scan.buf_g)  # dL/dh_t via y_t
            g_end = _adjoints(a, g, p, g_end, scan.nsub)
            dB[l0:l1] = torch.mul(g, ch.du[:, :, None, :], out=a).sum(3)[:k]
            w = _contract_n(g, ch.B, a)  # dL/d(delta_t u_t): (K, B, D)
            # a_t h_{t-1} = h_t - b_t; times g_t it is dL/d(delta_t A), as a = exp(delta A)
            q = torch.sub(h, b, out=h).mul_(g)
            dd = torch.mul(q, scan.At, out=b).sum(2)  # (K, B, D)
            dAt_b += q.mul_(ch.dlt[:, :, None, :]).sum(0)
            ddlt = dd.addcmul_(w, ch.u)[:k]
            dui = w.mul_(ch.dlt)
            if Df is not None:
                dui.addcmul_(dy, Df)
            du[l0:l1] = dui[:k]
            if ctx.delta_softplus:
                ddlt = ddlt * torch.sigmoid(ch.raw)
            if delta_bias is not None:
                dbias += ddlt.sum((0, 1))
            ddelta[l0:l1] = ddlt
        return (
            _like(u, du),
            _like(delta, ddelta),
            dAt_b.sum(0).t().to(A.dtype),
            _like(B, dB),
            _like(C, dC),
            dD.to(D.dtype) if D is not None else None,
            _like(z, dz) if z is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            None,
            None,
        )


def selective_scan_chunked(
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
    chunk_size: Optional[int] = None,
):
    """Chunked scan with a hand-written, chunk-recomputing backward; same contract as the reference.

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,);
    cu_seqlens: (n+1,) int, packed batch (B == 1). ``chunk_size`` None picks one from the
    state size (work tensors of ~2 MB). Returns out (B, D, L) in u's dtype, and the last
    state (B, D, N) fp32 if asked; gradients flow through both.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias, cu_seqlens)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    keep = None
    if cu_seqlens is not None:
        keep = (~segment_starts(cu_seqlens, u.shape[-1])).float()
    if u.shape[-1] == 0:
        out = u.new_zeros(u.shape)
        last = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
        return (out, last) if return_last_state else out
    out, last = _SelectiveScanChunked.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), keep, chunk_size
    )
    return (out, last) if return_last_state else out
