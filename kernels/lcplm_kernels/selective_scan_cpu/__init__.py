"""Fused CPU kernels of the Mamba mixer (C, compiled on first use; see README.md): the
selective scan and the causal depthwise conv + SiLU."""

from .build import library_info, unavailable_reason
from .conv import causal_conv1d_cpu
from .interface import DEFAULT_CHUNK, available, selective_scan_cpu

__all__ = ["DEFAULT_CHUNK", "available", "causal_conv1d_cpu", "library_info", "selective_scan_cpu", "unavailable_reason"]
