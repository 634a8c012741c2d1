"""The environment header every benchmark prints first: machine, versions, git revision.

Benchmarks run as scripts (``python benchmarks/model/scan_cpu.py``), so each adds this folder to
``sys.path`` and imports :func:`header` from here.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device: Optional[torch.device | str] = None, extra: str = "") -> str:
    """Two lines: the machine (CPU, cores, load, GPU) and the versions (python, torch, triton,
    git, torch threads), plus ``extra`` (e.g. numpy's version) at the end of the second."""
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    dev = torch.device(device) if device is not None else None
    gpu = torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else "none"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: {platform.system()} {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, "
        f"load average {load}, GPU {gpu}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, triton {tv}, git {git_rev()}, "
        f"torch threads {torch.get_num_threads()}" + (f", {extra}" if extra else "")
    )
