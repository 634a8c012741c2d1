"""Fused selective scan for CPUs (C, compiled on first use; see README.md)."""

from .build import library_info, unavailable_reason
from .interface import DEFAULT_CHUNK, available, selective_scan_cpu

__all__ = ["DEFAULT_CHUNK", "available", "library_info", "selective_scan_cpu", "unavailable_reason"]
