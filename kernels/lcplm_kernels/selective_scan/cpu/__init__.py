"""The fused C library of the Mamba mixer for CPUs (``scan.c``, compiled on first use by
``build.py``): the selective scan (``scan.py``) and the causal depthwise conv + SiLU, whose
autograd op sits beside the PyTorch one in ``../conv.py``. See ../README.md."""

from .build import library_info, unavailable_reason
from .scan import DEFAULT_CHUNK, available, selective_scan_cpu

__all__ = ["DEFAULT_CHUNK", "available", "library_info", "selective_scan_cpu", "unavailable_reason"]
