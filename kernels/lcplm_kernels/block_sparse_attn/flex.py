"""PyTorch FlexAttention over the same block layout: the comparison (and alternative) to our
Triton kernel.

``flex_block_mask(layout)`` turns a :class:`BlockLayout` into a FlexAttention ``BlockMask``
with exactly the layout's tiles: its partial tiles become Flex's masked blocks (the token
rule ``kernel_allowed[b, kernel_pid[b, i], kernel_pid[b, j]]`` is the ``mask_mod``), its full
tiles Flex's full blocks (no mask evaluated). Both kernels therefore compute the same tiles,
so their times compare the kernels and nothing else.

``flex_block_sparse_attn(q, k, v, block_mask, scale)`` runs ``flex_attention`` (compiled once
per process on CUDA; eager on CPU, where PyTorch has no FlexAttention backward) and zeroes the
rows without any allowed key, whatever Flex returns for them, so the contract of
``block_sparse_attn`` holds: such rows are zeros, never NaN.

Flex's sparse block size must be a multiple of its kernel's tile (128 by default on CUDA): build
the layout with ``block_m = block_n = 128`` for this path.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .layout import BlockLayout


def _dense_indices(ptr: torch.Tensor, idx: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (ptr, idx) over ``rows`` rows -> Flex's (num, indices) of shapes (rows,) and (rows, cols)."""
    ptr = ptr.long()
    counts = ptr[1:] - ptr[:-1]
    row = torch.repeat_interleave(torch.arange(rows, device=ptr.device), counts)
    pos = torch.arange(idx.numel(), device=ptr.device) - ptr[row]
    mat = torch.zeros(rows, cols, dtype=torch.int32, device=ptr.device)
    mat[row, pos] = idx
    return counts.to(torch.int32), mat


def flex_block_mask(layout: BlockLayout):
    """A FlexAttention ``BlockMask`` (shared by all heads) with exactly the layout's tiles."""
    from torch.nn.attention.flex_attention import BlockMask

    B, nq, nk, L = layout.batch_size, layout.num_q_blocks, layout.num_k_blocks, layout.seqlen
    kv_num, kv_idx = _dense_indices(layout.q_ptr, layout.q_idx, B * nq, nk)
    full_num, full_idx = _dense_indices(layout.q_full_ptr, layout.q_full_idx, B * nq, nk)
    kpid, kallowed = layout.kernel_pid, layout.kernel_allowed

    def mask_mod(b, h, q_idx, kv_idx):
        return kallowed[b, kpid[b, q_idx], kpid[b, kv_idx]] != 0

    return BlockMask.from_kv_blocks(
        kv_num.view(B, 1, nq),
        kv_idx.view(B, 1, nq, nk),
        full_num.view(B, 1, nq),
        full_idx.view(B, 1, nq, nk),
        BLOCK_SIZE=(layout.block_m, layout.block_n),
        mask_mod=mask_mod,
        seq_lengths=(L, L),
    )


@functools.lru_cache(maxsize=None)
def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def has_key(layout: BlockLayout) -> torch.Tensor:
    """(B, L) bool: the query rows with at least one allowed key."""
    pid = layout.kernel_pid.long()
    P = layout.num_proteins
    # a protein p has a key iff some allowed partner p2 has at least one token in the sample
    present = torch.zeros(layout.batch_size, P + 1, dtype=torch.bool, device=pid.device)
    present.scatter_(1, pid, True)
    present[:, P] = False
    reach = (layout.kernel_allowed.bool() & present[:, None, :]).any(-1)  # (B, P+1)
    return reach.gather(1, pid)


def flex_block_sparse_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, scale: float, rows_with_keys: torch.Tensor
) -> torch.Tensor:
    """q, k, v: (B, H, L, D) -> (B, H, L, D) through FlexAttention with ``block_mask``.

    rows_with_keys: (B, L) bool from :func:`has_key`; other rows are returned as zeros.
    Compiled on CUDA tensors, eager elsewhere (CPU: forward only, a PyTorch limit).
    """
    if q.is_cuda:
        out = _flex(True)(q, k, v, block_mask=block_mask, scale=scale)
    else:
        with warnings.catch_warnings():  # eager on purpose: the CPU path is for tests and parity
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = _flex(False)(q, k, v, block_mask=block_mask, scale=scale)
    return out * rows_with_keys[:, None, :, None].to(out.dtype)
