"""Block-sparse attention dispatch of the genome transformer: the only lcplm module that
imports lcplm_kernels.block_sparse_attn.

lcplm.models.sparse_transformer calls attention only through the functions here. Backends
(``SPARSE_ATTENTION_BACKENDS``)::

  kernel     lcplm_kernels.block_sparse_attn: Triton on CUDA, block-wise PyTorch on CPU;
             the block layout is built once per batch and shared by every layer and head;
             memory linear in the allowed token pairs.
  dense      torch scaled_dot_product_attention with an explicit (B, 1, L, L) boolean mask:
             L x L memory, for short inputs and parity with dense models (ESM-2).
  flex       PyTorch FlexAttention with a BlockMask holding exactly the layout's tiles (128 x 128),
             compiled on CUDA; on CPU eager and forward-only (PyTorch has no CPU backward).
  reference  lcplm_kernels' naive dense fp32 reference with the same mask (tests only).
  auto       kernel on CUDA; on CPU, dense while the B*H*L*L fp32 scores of one layer fit in
             DENSE_CPU_MAX_SCORES (there PyTorch's SDPA is several times faster than the
             block-wise path), else kernel.

Every backend: query i attends key j iff pid[i] >= 0, pid[j] >= 0 and allowed[b, pid[i], pid[j]];
a query with no allowed key (padding) gets zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lcplm.errors import UserError

SPARSE_ATTENTION_BACKENDS = ("auto", "kernel", "flex", "dense", "reference")
DENSE_CPU_MAX_SCORES = 1 << 25  # 128 MB of fp32 scores per layer
FLEX_BLOCK = 128  # FlexAttention's own tile on CUDA: its sparse blocks must be a multiple of it


@dataclass(frozen=True)
class SparseAttentionLayout:
    """One batch's attention pattern, shared by all layers and heads.

    pid: (B, L) long, -1 for padding; allowed: (B, P, P) bool; backend: the resolved backend
    (never ``auto``); blocks: the ``BlockLayout`` (backends ``kernel`` and ``flex``); flex:
    (FlexAttention ``BlockMask``, (B, L) rows that have a key) for backend ``flex``.
    """

    pid: torch.Tensor
    allowed: torch.Tensor
    backend: str
    blocks: Any = None
    flex: Any = None


def _block_sparse_attn():
    try:
        from lcplm_kernels import block_sparse_attn
    except ImportError as e:
        raise UserError(
            "the block-sparse attention backend needs the lcplm_kernels package (kernels/ in the "
            f"lcplm repository, installed by `pip install -e .`): {e}"
        ) from None
    return block_sparse_attn


def sparse_attention_layout(
    pid: torch.Tensor, allowed: torch.Tensor, backend: str = "auto", num_heads: int = 1
) -> SparseAttentionLayout:
    """Build once per batch. pid: (B, L) long; allowed: (B, P, P) bool."""
    if backend not in SPARSE_ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {SPARSE_ATTENTION_BACKENDS}, got {backend!r}")
    if backend == "auto":
        B, L = pid.shape
        small = B * num_heads * L * L <= DENSE_CPU_MAX_SCORES
        backend = "dense" if pid.device.type == "cpu" and small else "kernel"
    if backend == "flex":
        from lcplm_kernels.block_sparse_attn import flex

        blocks = _block_sparse_attn().build_layout(pid, allowed, FLEX_BLOCK, FLEX_BLOCK)
        return SparseAttentionLayout(pid, allowed, backend, blocks, (flex.flex_block_mask(blocks), flex.has_key(blocks)))
    blocks = _block_sparse_attn().build_layout(pid, allowed) if backend == "kernel" else None
    return SparseAttentionLayout(pid, allowed, backend, blocks)


def pair_mask(pid: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool token mask from pid (B, L) and allowed (B, P, P). L x L: short inputs only."""
    pc = pid.clamp_min(0)
    rows = allowed.gather(1, pc.unsqueeze(-1).expand(-1, -1, allowed.shape[-1]))  # (B, L, P)
    m = rows.gather(2, pc.unsqueeze(1).expand(-1, pid.shape[1], -1))  # (B, L, L)
    valid = pid >= 0
    return m & valid.unsqueeze(2) & valid.unsqueeze(1)


def dense_masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor, scale: float
) -> torch.Tensor:
    """SDPA with the pair mask; q, k, v: (B, H, L, D) -> (B, H, L, D), zeros for rows without keys."""
    mask = pair_mask(pid, allowed)
    has_key = mask.any(-1)  # (B, L)
    # a row without any key would be all -inf (NaN): let it see everything, then zero it
    mask = mask | ~has_key.unsqueeze(-1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=scale)
    return out * has_key[:, None, :, None].to(out.dtype)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SparseAttentionLayout, scale: float
) -> torch.Tensor:
    """q, k, v: (B, H, L, D) -> (B, H, L, D) under ``layout``'s pattern, with its backend."""
    backend = layout.backend
    if backend == "kernel":
        return _block_sparse_attn().block_sparse_attn(q, k, v, layout.blocks, scale=scale)
    if backend == "flex":
        from lcplm_kernels.block_sparse_attn import flex

        return flex.flex_block_sparse_attn(q, k, v, layout.flex[0], scale, layout.flex[1])
    if backend == "reference":
        return _block_sparse_attn().naive_block_sparse_attn(q, k, v, layout.pid, layout.allowed, scale=scale).to(q.dtype)
    if backend == "dense":
        return dense_masked_attention(q, k, v, layout.pid, layout.allowed, scale)
    raise ValueError(f"attention backend must be one of {SPARSE_ATTENTION_BACKENDS}, got {backend!r}")
