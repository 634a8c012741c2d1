"""Tiny experiments for the training-infrastructure tests: a small FASTA and the tiny BiMamba-S."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("train_worker.py")

_AA = "ACDEFGHIKLMNPQRSTVWY"


def write_fasta(path: Path, n: int = 64, seed: int = 0, min_len: int = 20, max_len: int = 60) -> Path:
    """``n`` random proteins (seeded) as FASTA."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        idx = torch.randint(0, len(_AA), (length,), generator=g).tolist()
        lines += [f">prot{i:04d}", "".join(_AA[j] for j in idx)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_experiment(tmp_path: Path, name: str = "exp.yaml", trainer_preset: str | None = None) -> Path:
    """The shipped tiny stage-1 experiment on a small FASTA in ``tmp_path``: 6 short steps,
    a checkpoint every 3, quiet. ``trainer_preset``: a file of experiments/trainer/ to include."""
    fasta = tmp_path / "train.fasta"
    if not fasta.exists():
        write_fasta(fasta)
    includes = [REPO / "experiments" / "pretrain" / "tiny.yaml"]
    if trainer_preset:
        includes.append(REPO / "experiments" / "trainer" / trainer_preset)
    text = "# test experiment\ninclude:\n" + "".join(f"  - {i}\n" for i in includes)
    text += f"""data:
  path: {fasta}
  max_tokens: 512
  max_length: 64
  val_fraction: 0.2
  cache_dir: {tmp_path / 'cache'}
trainer:
  max_steps: 6
  max_time_minutes: null
  val_check_interval: 3
  limit_val_batches: 2
  log_every_n_steps: 1
  progress_bar: false
  num_threads: 1
optim:
  warmup_steps: 2
run:
  out_dir: {tmp_path / 'runs'}
  name: run
  save_every_n_steps: 3
"""
    path = tmp_path / name
    path.write_text(text)
    return path


def run_worker(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run tests/train/train_worker.py in a fresh process (DDP children re-run the same command)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO
    )
