"""PPI-guided block-sparse attention: layouts, the Triton kernels and their PyTorch references.

Public API (see README.md in this folder):
- ``build_layout(pid, allowed, block_m=64, block_n=64) -> BlockLayout``
- ``block_sparse_attn(q, k, v, layout, scale=None, *, backend="auto") -> out``
- allowed-matrix builders: ``dense_allowed``, ``single_protein_allowed``, ``window_allowed``,
  ``global_allowed``, ``allowed_from_pairs``
- references: ``naive_block_sparse_attn``, ``blockwise_block_sparse_attn``, ``naive_block_mask``

Importing this package does not import Triton; the kernels load on the first Triton call.
"""

from .interface import block_sparse_attn
from .layout import (
    BlockLayout,
    allowed_from_pairs,
    build_layout,
    dense_allowed,
    global_allowed,
    single_protein_allowed,
    window_allowed,
)
from .naive import blockwise_block_sparse_attn, dense_token_mask, naive_block_mask, naive_block_sparse_attn

__all__ = [
    "BlockLayout",
    "allowed_from_pairs",
    "block_sparse_attn",
    "blockwise_block_sparse_attn",
    "build_layout",
    "dense_allowed",
    "dense_token_mask",
    "global_allowed",
    "naive_block_mask",
    "naive_block_sparse_attn",
    "single_protein_allowed",
    "window_allowed",
]
