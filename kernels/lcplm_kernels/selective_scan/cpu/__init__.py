"""The fused C library of the Mamba mixer for CPUs (``scan.c``, compiled on first use by
``build.py``): the selective scan (``scan.py``) and the causal depthwise conv + SiLU, whose
autograd op sits beside the PyTorch one in ``../conv.py``; and BiMamba-S's forward-only
channels-last bidirectional conv and scan (``bidirectional.py``) with the block's residual add +
RMSNorm (``add_norm.py``). See ../README.md."""

from .add_norm import add_rms_norm_cpu
from .bidirectional import MixerWeights, bidirectional_conv1d_cpu, bidirectional_scan_cpu, mixer_weights
from .build import library_info, unavailable_reason
from .scan import DEFAULT_CHUNK, available, selective_scan_cpu

__all__ = [
    "DEFAULT_CHUNK",
    "MixerWeights",
    "add_rms_norm_cpu",
    "available",
    "bidirectional_conv1d_cpu",
    "bidirectional_scan_cpu",
    "library_info",
    "mixer_weights",
    "selective_scan_cpu",
    "unavailable_reason",
]
