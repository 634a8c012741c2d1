"""Mamba-1 selective scan and the causal depthwise conv + SiLU beside it (see README.md).

Public API:
- dispatch (``interface.py``): ``selective_scan``, ``causal_conv1d``, ``resolve_scan_backend``,
  ``SCAN_BACKENDS``, ``native_scan_unavailable``, ``mamba_scan_fn``, ``causal_conv1d_fn``
- reference (``naive.py``): ``selective_scan_ref``, ``check_scan_shapes``, ``segment_starts``
- PyTorch fast path (``chunked.py``): ``selective_scan_chunked``
- fused C for CPUs (``cpu/``): ``selective_scan_cpu``; conv (``conv.py``): ``causal_conv1d_cpu``,
  ``causal_conv1d_torch``
- inference (forward-only, channels-last, both directions of BiMamba-S's mixer):
  ``mixer_weights``, ``bidirectional_conv1d_cpu``, ``bidirectional_scan_cpu`` (``cpu/bidirectional.py``), their
  references ``bidirectional_conv1d_ref``, ``bidirectional_scan_ref``, and ``sequence_segments``;
  the block's residual add + RMSNorm ``add_rms_norm_cpu`` (``cpu/add_norm.py``), ``add_rms_norm_ref``

Importing this package compiles nothing and imports neither mamba_ssm nor causal_conv1d.
"""

from ..errors import BackendUnavailableError
from .chunked import selective_scan_chunked
from .conv import causal_conv1d_cpu, causal_conv1d_torch
from .cpu import MixerWeights, add_rms_norm_cpu, bidirectional_conv1d_cpu, bidirectional_scan_cpu, mixer_weights, selective_scan_cpu
from .interface import (
    GPU_INSTALL_HINT,
    SCAN_BACKENDS,
    causal_conv1d,
    causal_conv1d_fn,
    mamba_scan_fn,
    native_scan_unavailable,
    resolve_scan_backend,
    selective_scan,
)
from .naive import (
    add_rms_norm_ref,
    bidirectional_conv1d_ref,
    bidirectional_scan_ref,
    check_scan_shapes,
    segment_starts,
    selective_scan_ref,
    sequence_segments,
)

__all__ = [
    "BackendUnavailableError",
    "GPU_INSTALL_HINT",
    "MixerWeights",
    "add_rms_norm_cpu",
    "add_rms_norm_ref",
    "bidirectional_conv1d_cpu",
    "bidirectional_conv1d_ref",
    "bidirectional_scan_cpu",
    "bidirectional_scan_ref",
    "SCAN_BACKENDS",
    "causal_conv1d",
    "causal_conv1d_cpu",
    "causal_conv1d_fn",
    "causal_conv1d_torch",
    "check_scan_shapes",
    "mamba_scan_fn",
    "mixer_weights",
    "native_scan_unavailable",
    "resolve_scan_backend",
    "segment_starts",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_cpu",
    "selective_scan_ref",
    "sequence_segments",
]
