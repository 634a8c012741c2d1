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
    """q/k/v padded to whole blocks and viewed per block, plus the chunking of query rows."""

    def __init__(self, layout: BlockLayout, H: int, D: int):
        self.layout = layout
        self.bm, self.bn = layout.block_m, layout.block_n
        self.nq, self.nk = layout.num_q_blocks, layout.num_k_blocks
        B, L, P = layout.batch_size, layout.seqlen, layout.num_proteins
        dev = layout.device
        self.pid_q = torch.full((B, self.nq * self.bm), P, dtype=torch.long, device=dev)
        self.pid_q[:, :L] = layout.kernel_pid
        self.pid_q = self.pid_q.view(B, self.nq, self.bm)
        self.pid_k = torch.full((B, self.nk * self.bn), P, dtype=torch.long, device=dev)
        self.pid_k[:, :L] = layout.kernel_pid
        self.pid_k = self.pid_k.view(B, self.nk, self.bn)
        self.allowed = layout.kernel_allowed.bool()
        # each query row's key blocks, partial and full together (the mask comes from pid)
        ptr, fptr = layout.q_ptr.long(), layout.q_full_ptr.long()
        self.n_part, self.n_full = ptr[1:] - ptr[:-1], fptr[1:] - fptr[:-1]
        self.ptr, self.fptr = ptr, fptr
        self.H, self.D = H, D

    def pad_q(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D) -> (B, H, nq, bm, D) fp32."""
        B, H, L, D = x.shape
        out = x.new_zeros(B, H, self.nq * self.bm, D, dtype=torch.float32)
        out[:, :, :L] = x
        return out.view(B, H, self.nq, self.bm, D)

    def pad_k(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D) -> (B, H, nk, bn, D) fp32."""
        B, H, L, D = x.shape
        out = x.new_zeros(B, H, self.nk * self.bn, D, dtype=torch.float32)
        out[:, :, :L] = x
        return out.view(B, H, self.nk, self.bn, D)

    def chunks(self):
        """Yield (rows (R,), key blocks (R, c), valid (R, c)) over query rows with any tile.

        Rows come in the layout's order (decreasing tile count), so padding each chunk to its
        first row's count wastes little; a chunk holds about _CHUNK_ELEMS scores.
        """
        order = self.layout.q_order.long()
        counts = (self.n_part + self.n_full)[order]
        order, counts = order[counts > 0], counts[counts > 0]
        per_tile = self.H * self.bm * self.bn
        start = 0
        while start < order.numel():
            c = int(counts[start])
            n_rows = max(1, _CHUNK_ELEMS // (c * per_tile))
            rows = order[start : start + n_rows]
            start += rows.numel()
            j = torch.arange(c, device=rows.device)
            npart, nfull = self.n_part[rows, None], self.n_full[rows, None]
            in_part = j < npart
            pos_part = (self.ptr[rows, None] + j).clamp(max=max(self.layout.q_idx.numel() - 1, 0))
            pos_full = (self.fptr[rows, None] + j - npart).clamp(0, max(self.layout.q_full_idx.numel() - 1, 0))
            kb = torch.where(
                in_part,
                _take(self.layout.q_idx, pos_part),
                _take(self.layout.q_full_idx, pos_full),
            )
            yield rows, kb, j < npart + nfull

    def tiles(self, rows, kb, valid, qp, kp, vp):
        """Gather one chunk: q (R,H,bm,D), k and v (R,H,c*bn,D), mask (R,1,bm,c*bn)."""
        b = torch.div(rows, self.nq, rounding_mode="floor")
        qb = rows - b * self.nq
        R, c = kb.shape
        q = qp[b, :, qb]
        k = kp[b[:, None], :, kb].permute(0, 2, 1, 3, 4).reshape(R, self.H, c * self.bn, self.D)
        v = vp[b[:, None], :, kb].permute(0, 2, 1, 3, 4).reshape(R, self.H, c * self.bn, self.D)
        P = self.layout.num_proteins
        pq = self.pid_q[b, qb]
        pk = torch.where(valid[:, :, None], self.pid_k[b[:, None], kb], P).reshape(R, c * self.bn)
        mask = self.allowed[b[:, None, None], pq[:, :, None], pk[:, None, :]]
        return b, qb, q, k, v, mask[:, None]


def _take(values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """values[pos] as long, or zeros when values is empty (pos is then fully masked)."""
    if values.numel() == 0:
        return torch.zeros_like(pos)
    return values.long()[pos]


class _BlockwiseAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: BlockLayout, scale: float):
        B, H, L, D = q.shape
        blk = _Blocked(layout, H, D)
        qp, kp, vp = blk.pad_q(q), blk.pad_k(k), blk.pad_k(v)
        out = torch.zeros_like(qp)
        # +inf log-sum-exp marks rows with no allowed key: exp(s - lse) = 0 in the backward
        lse = torch.full(qp.shape[:-1], float("inf"), device=q.device)
        for rows, kb, valid in blk.chunks():
            b, qb, qt, kt, vt, mask = blk.tiles(rows, kb, valid, qp, kp, vp)
            s = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale).masked_fill_(~mask, float("-inf"))
            m = s.amax(dim=-1, keepdim=True)
            m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
            p = torch.exp(s - m)
            denom = p.sum(dim=-1, keepdim=True)
            out[b, :, qb] = torch.matmul(p, vt) / torch.where(denom == 0, torch.ones_like(denom), denom)
            lse[b, :, qb] = torch.where(denom == 0, float("inf"), m + torch.log(denom)).squeeze(-1)
        out = out.view(B, H, -1, D)[:, :, :L]
        # keep the fp32 output: delta = rowsum(dO * O) from a bf16-rounded O would cost accuracy
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        B, H, L, D = q.shape
        blk = _Blocked(layout, H, D)
        qp, kp, vp, dop = blk.pad_q(q), blk.pad_k(k), blk.pad_k(v), blk.pad_q(dout)
        delta = (dop * blk.pad_q(out)).sum(-1)
        dq = torch.zeros_like(qp)
        dk = torch.zeros(B * blk.nk, H, blk.bn, D, device=q.device)
        dv = torch.zeros_like(dk)
        for rows, kb, valid in blk.chunks():
            b, qb, qt, kt, vt, mask = blk.tiles(rows, kb, valid, qp, kp, vp)
            R, c = kb.shape
            s = torch.matmul(qt, kt.transpose(-1, -2)).mul_(scale)
            p = torch.exp(s - lse[b, :, qb, :, None]).masked_fill_(~mask, 0.0)
            do = dop[b, :, qb]
            dp = torch.matmul(do, vt.transpose(-1, -2))
            ds = p * (dp - delta[b, :, qb, :, None])
            dq[b, :, qb] = torch.matmul(ds, kt) * scale
            dk_t = (torch.matmul(ds.transpose(-1, -2), qt) * scale).view(R, H, c, blk.bn, D)
            dv_t = torch.matmul(p.transpose(-1, -2), do).view(R, H, c, blk.bn, D)
            target = (b[:, None] * blk.nk + kb).reshape(-1)
            dk.index_add_(0, target, dk_t.permute(0, 2, 1, 3, 4).reshape(R * c, H, blk.bn, D))
            dv.index_add_(0, target, dv_t.permute(0, 2, 1, 3, 4).reshape(R * c, H, blk.bn, D))

        def unpad_k(x):
            return x.view(B, blk.nk, H, blk.bn, D).permute(0, 2, 1, 3, 4).reshape(B, H, -1, D)[:, :, :L]

        dq = dq.view(B, H, -1, D)[:, :, :L]
        return dq.to(q.dtype), unpad_k(dk).to(k.dtype), unpad_k(dv).to(v.dtype), None, None


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
