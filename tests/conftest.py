"""Markers, shared-data location and small fixtures for the whole suite."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Without a GPU, Triton kernels run in its interpreter, which must be chosen before
# triton.language is first imported: its standard library (tl.zeros, ...) is defined with
# @triton.jit at import time, and torch/lightning import it while other test modules load.
# The check avoids importing torch, which could import triton first.
if not (os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test with a clear message when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data {p} not present (set LCPLM_DATA_DIR to ../shared/data)")
    return p


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    n_gpu = torch.cuda.device_count() if has_gpu else 0
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "multigpu" in item.keywords and n_gpu < 2:
            item.add_marker(pytest.mark.skip(reason="needs two or more CUDA GPUs"))


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    # pytest-xdist runs two workers on two cores: one intra-op thread each avoids oversubscription
    torch.set_num_threads(1)
    yield


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def write_run_checkpoint(model, path) -> None:
    """A run checkpoint as ``lcplm pretrain`` leaves it: the MLMTask's state dict (weights under
    ``model.``) and the resolved experiment config under ``hyper_parameters.config``."""
    from lcplm.config import OptimConfig, PretrainConfig, to_dict
    from lcplm.tasks.mlm import MLMTask
    from lcplm.train.checkpoint_io import atomic_torch_save

    data = {"name": "genome"} if model.cfg.name == "sparse_transformer" else {"name": "fasta"}
    config = to_dict(PretrainConfig(model=model.cfg, data=data))
    task = MLMTask(model, OptimConfig(), config=config)
    atomic_torch_save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams), "global_step": 0}, path)
