"""Pure-PyTorch references for PPI-guided block-sparse attention.

- :func:`naive_block_sparse_attn`: dense attention with the token-level mask (fp32 by
  default); O(L^2) memory, the ground truth for tests at small L.
- :func:`naive_block_mask`: the tile matrix derived from that dense mask; the ground truth
  for :func:`~lcplm_kernels.block_sparse_attn.layout.build_layout`.
- :func:`blockwise_block_sparse_attn`: the CPU path. Gathers only the computed tiles of a
  :class:`BlockLayout`, a chunk of query blocks at a time, with a hand-written backward that
  recomputes the probabilities from the saved log-sum-exp (flash-attention's algorithm in
  PyTorch), so memory is O(B * H * L * D) plus one chunk of tiles.

Semantics: query i attends key j iff pid[i] >= 0, pid[j] >= 0 and allowed[pid[i], pid[j]];
a query with no allowed key returns zeros and gets zero gradients.
"""

from __future__ import annotations

import math

import torch

from .layout import BlockLayout

# scores per chunk in the block-wise reference: about 16 MB of fp32 per temporary
_CHUNK_ELEMS = 1 << 22


def dense_token_mask(pid: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: mask[b, i, j] = query i may attend key j. Tests and small L only.

    pid: (B, L) integer, -1 for padding; allowed: (B, P, P) or (P, P) bool.
    """
    B, L = pid.shape
    if allowed.dim() == 2:
        allowed = allowed.unsqueeze(0).expand(B, -1, -1)
    valid = pid >= 0
    p = pid.clamp(min=0).long()
    b = torch.arange(B, device=pid.device)[:, None, None]
    mask = allowed[b, p[:, :, None], p[:, None, :]]
    return mask & valid[:, :, None] & valid[:, None, :]


def naive_block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pid: torch.Tensor,
    allowed: torch.Tensor,
    scale: float | None = None,
    upcast: bool = True,
) -> torch.Tensor:
    """Dense masked attention. q, k, v: (B, H, L, D); returns (B, H, L, D) in q's dtype.

    upcast=True computes in fp32 (the reference); upcast=False computes in the input dtype
    (the "plain PyTorch in the same dtype" error baseline for low-precision kernels).
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = dense_token_mask(pid, allowed)[:, None]
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    # a row with no allowed key would be softmax of all -inf (NaN): give it zeros instead
    p = torch.softmax(s, dim=-1).masked_fill(~mask, 0.0)
    return torch.matmul(p, v).to(dtype)


def naive_block_mask(
    pid: torch.Tensor, allowed: torch.Tensor, block_m: int, block_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(computed, full), each (B, ceil(L/block_m), ceil(L/block_n)) bool, from the dense mask.

    A tile is computed when any of its token pairs is allowed, full when all block_m x block_n
    of its pairs exist (inside [0, L)) and are allowed.
    """
    mask = dense_token_mask(pid, allowed)
    B, L, _ = mask.shape
    nq, nk = -(-L // block_m), -(-L // block_n)
    padded = torch.zeros(B, nq * block_m, nk * block_n, dtype=torch.bool, device=mask.device)
    padded[:, :L, :L] = mask
    tiles = padded.view(B, nq, block_m, nk, block_n)
    return tiles.any(dim=(2, 4)), tiles.all(dim=(2, 4))


class _Blocked:
    """q/k/v cut into blocks, head-major, and the chunking of query rows into gathered tiles.

    Head-major block views (H, B * n_blocks, block, D) make every gather an ``index_select``
    along dim 1 that lands directly in the (H, R, ...) shape the batched matmuls want.
    """

    def __init__(self, layout: BlockLayout, H: int):
        self.layout = layout
        self.bm, self.bn = layout.block_m, layout.block_n
        self.nq, self.nk = layout.num_q_blocks, layout.num_k_blocks
        B, L, P = layout.batch_size, layout.seqlen, layout.num_proteins
        self.B, self.L, self.H, self.P1 = B, L, H, P + 1
        dev = layout.device
        pid = torch.full((B, max(self.nq * self.bm, self.nk * self.bn)), P, dtype=torch.long, device=dev)
        pid[:, :L] = layout.kernel_pid
        self.pid_q = pid[:, : self.nq * self.bm].reshape(B * self.nq, self.bm)
        self.pid_k = pid[:, : self.nk * self.bn].reshape(B * self.nk, self.bn)
        self.allowed = layout.kernel_allowed.bool().reshape(-1, self.P1)
        self.ptr, self.fptr = layout.q_ptr.long(), layout.q_full_ptr.long()
        self.n_part, self.n_full = self.ptr[1:] - self.ptr[:-1], self.fptr[1:] - self.fptr[:-1]

    def blocks(self, x: torch.Tensor, block: int, n_blocks: int) -> torch.Tensor:
        """(B, H, L, D) -> (H, B * n_blocks, block, D) fp32, zero-padded past L."""
        B, H, L, D = x.shape
        out = x.new_zeros(H, B, n_blocks * block, D, dtype=torch.float32)
        out[:, :, :L] = x.transpose(0, 1)
        return out.view(H, B * n_blocks, block, D)

    def unblock(self, x: torch.Tensor) -> torch.Tensor:
        """(H, B * n_blocks, block, D) -> (B, H, L, D)."""
        H, _, _, D = x.shape
        return x.reshape(H, self.B, -1, D)[:, :, : self.L].transpose(0, 1)

    def chunks(self):
        """Yield one chunk of query rows at a time, as a dict of index tensors.

        Rows come in the layout's order (decreasing tile count) and a chunk only takes rows
        with at least 3/4 of its first row's tiles, so padding every row to the widest wastes
        at most a quarter; a chunk holds about _CHUNK_ELEMS scores. Partial and full tiles are
        treated alike: the token mask from pid/allowed decides, so this path checks the
        layout's tile set but does not rely on its full/partial split.
        """
        order = self.layout.q_order.long()
        total = (self.n_part + self.n_full)[order]
        order, total = order[total > 0], total[total > 0]
        per_tile = self.H * self.bm * self.bn
        start = 0
        while start < order.numel():
            widest = int(total[start])
            similar = int((total[start:] * 4 >= widest * 3).sum())
            n_rows = min(similar, max(1, _CHUNK_ELEMS // (widest * per_tile)))
            rows = order[start : start + n_rows]
            start += rows.numel()
            npart, nfull = self.n_part[rows, None], self.n_full[rows, None]
            j = torch.arange(widest, device=rows.device)
            in_part = j < npart
            ok = j < npart + nfull
            kb = torch.where(
                in_part,
                _take(self.layout.q_idx, self.ptr[rows, None] + j, in_part),
                _take(self.layout.q_full_idx, self.fptr[rows, None] + j - npart, ok & ~in_part),
            )
            b = torch.div(rows, self.nq, rounding_mode="floor")
            yield {"rows": rows, "b": b, "krows": b[:, None] * self.nk + kb, "ok": ok}

    def mask(self, c: dict) -> torch.Tensor:
        """(R, bm, c*bn) bool token mask of a chunk; padding entries are all False."""
        R, cc = c["ok"].shape
        pq = self.pid_q[c["rows"]]
        pk = torch.where(c["ok"][:, :, None], self.pid_k[c["krows"]], self.P1 - 1).reshape(R, 1, cc * self.bn)
        # each query's row of allowed (R, bm, P+1), then one gather along it: no int64 index
        # of the chunk's full size is ever materialised
        rows = self.allowed[c["b"][:, None] * self.P1 + pq]
        return torch.gather(rows, 2, pk.expand(R, self.bm, -1))

    def scores(self, c: dict, qp, kp, scale: float):
        """q tile (H, R, bm, D), gathered k (H, R, c*bn, D) and masked scores (H, R, bm, c*bn)."""
        R, cc = c["krows"].shape
        qt = qp.index_select(1, c["rows"])
        kt = kp.index_select(1, c["krows"].reshape(-1)).view(self.H, R, cc * self.bn, -1)
        s = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
        return qt, kt, s.masked_fill_(~self.mask(c), float("-inf"))


def _take(values: torch.Tensor, pos: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """values[pos] as long where ok, 0 elsewhere (padding entries, masked out later)."""
    if values.numel() == 0:
        return torch.zeros_like(pos)
    return torch.where(ok, values.long()[pos.clamp(0, values.numel() - 1)], 0)


class _BlockwiseAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: BlockLayout, scale: float):
        blk = _Blocked(layout, q.shape[1])
        qp = blk.blocks(q, blk.bm, blk.nq)
        kp, vp = blk.blocks(k, blk.bn, blk.nk), blk.blocks(v, blk.bn, blk.nk)
        out = torch.zeros_like(qp)
        # +inf log-sum-exp marks rows with no allowed key: exp(s - lse) = 0 in the backward
        lse = torch.full(qp.shape[:-1], float("inf"), device=q.device)
        for c in blk.chunks():
            R, cc = c["krows"].shape
            _, _, s = blk.scores(c, qp, kp, scale)
            m = s.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            p = s.sub_(m).exp_()
            denom = p.sum(dim=-1, keepdim=True)
            vt = vp.index_select(1, c["krows"].reshape(-1)).view(blk.H, R, cc * blk.bn, -1)
            o = torch.matmul(p, vt).div_(torch.where(denom == 0, torch.ones_like(denom), denom))
            out.index_copy_(1, c["rows"], o)
            lse.index_copy_(1, c["rows"], torch.where(denom == 0, float("inf"), m + torch.log(denom)).squeeze(-1))
        # keep the fp32 output: delta = rowsum(dO * O) from a bf16-rounded O would cost accuracy
        out = blk.unblock(out)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        blk = _Blocked(layout, q.shape[1])
        qp, dop = blk.blocks(q, blk.bm, blk.nq), blk.blocks(dout, blk.bm, blk.nq)
        kp, vp = blk.blocks(k, blk.bn, blk.nk), blk.blocks(v, blk.bn, blk.nk)
        delta = (dop * blk.blocks(out, blk.bm, blk.nq)).sum(-1)
        dq = torch.zeros_like(qp)
        dk, dv = torch.zeros_like(kp), torch.zeros_like(vp)
        for c in blk.chunks():
            R, cc = c["krows"].shape
            qt, kt, s = blk.scores(c, qp, kp, scale)
            p = s.sub_(lse.index_select(1, c["rows"])[..., None]).exp_()
            do = dop.index_select(1, c["rows"])
            vt = vp.index_select(1, c["krows"].reshape(-1)).view(blk.H, R, cc * blk.bn, -1)
            ds = torch.matmul(do, vt.transpose(-1, -2)).sub_(delta.index_select(1, c["rows"])[..., None]).mul_(p)
            dq.index_copy_(1, c["rows"], torch.matmul(ds, kt).mul_(scale))
            target = c["krows"].reshape(-1)
            dk.index_add_(1, target, torch.matmul(ds.transpose(-1, -2), qt).mul_(scale).view(blk.H, R * cc, blk.bn, -1))
            dv.index_add_(1, target, torch.matmul(p.transpose(-1, -2), do).view(blk.H, R * cc, blk.bn, -1))
        return blk.unblock(dq).to(q.dtype), blk.unblock(dk).to(k.dtype), blk.unblock(dv).to(v.dtype), None, None


def blockwise_block_sparse_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention computing only the layout's tiles, in pure PyTorch (differentiable).

    q, k, v: (B, H, L, D), any float dtype (computed in fp32, returned in q's dtype).
    Memory: the fp32 padded copies of q, k, v (and of dO, dQ, dK, dV in the backward) plus one
    chunk of about 4M scores; never L x L.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _BlockwiseAttn.apply(q, k, v, layout, scale)
