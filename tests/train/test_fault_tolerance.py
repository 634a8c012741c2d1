"""Fault tolerance: atomic checkpoints, kill + resume, NaN stop, preemption signals, dead ranks."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lcplm.train.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

from train_helpers import REPO, run_worker, write_experiment


# -- atomic checkpoint files -----------------------------------------------------------

def test_atomic_save_round_trip_and_no_leftovers(tmp_path: Path):
    path = tmp_path / "ck" / "last.ckpt"
    state = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "global_step": 4}
    atomic_torch_save(state, path)
    atomic_torch_save({**state, "global_step": 5}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 5 and torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


_KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from lcplm.train.checkpoint_io import atomic_torch_save
    path = sys.argv[1]
    atomic_torch_save({"global_step": 1, "w": torch.ones(3)}, path)
    real_fsync = os.fsync
    def die(fd):  # the new file is fully written but not yet renamed over the old one
        os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = die
    atomic_torch_save({"global_step": 2, "w": torch.zeros(1_000_000)}, path)
    """
)


def test_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    r = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    old = torch.load(path, weights_only=True)
    assert old["global_step"] == 1 and torch.equal(old["w"], torch.ones(3))
    # the half-finished temporary file is beside it, never in its place; the next save replaces it
    assert (tmp_path / ".last.ckpt.tmp").exists()
    atomic_torch_save({"global_step": 3}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert not (tmp_path / ".last.ckpt.tmp").exists()


class _NotATensor:
    pass


def test_checkpoint_io_loads_weights_only(tmp_path: Path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, tmp_path / "ok.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "ok.ckpt")["state_dict"]["w"], torch.ones(2))
    torch.save({"state_dict": {}, "obj": _NotATensor()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(tmp_path / "unsafe.ckpt")
