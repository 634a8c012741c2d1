"""Custom kernels for lcplm (imports only torch, triton and the standard library), one folder per op:

- ``selective_scan``: the Mamba-1 selective scan and causal depthwise conv (reference, chunked
  PyTorch, fused C for CPUs, mamba-ssm / causal-conv1d on CUDA) behind one dispatch;
- ``block_sparse_attn``: PPI-guided block-sparse attention (Triton, PyTorch, FlexAttention).
"""

from .errors import BackendUnavailableError

__all__ = ["BackendUnavailableError"]
