"""Strategies: presets, per-block activation checkpointing, and golden losses on 2 CPU processes.

Golden-loss design: every optimizer step averages the gradients of the same two micro-batches
(``train_worker.GoldenData``): one process with gradient accumulation 2, or two processes
(DDP, FSDP2) with one micro-batch each. Lightning divides the loss by the accumulation
factor and DDP/FSDP2 average gradients over ranks, so the updates agree up to fp32 summation
order and every micro-batch loss must match the single-process run.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment

from lcplm.config import TrainerConfig, load_config
from lcplm.errors import UserError
from lcplm.models import build_model, model_class
from lcplm.train.checkpoint_io import AtomicCheckpointIO
from lcplm.train.strategies import (
    FSDP2Strategy,
    PlannedDDPStrategy,
    PlannedFSDPStrategy,
    PlannedSingleDeviceStrategy,
    apply_activation_checkpointing,
    build_strategy,
    find_blocks,
)

from train_helpers import REPO, run_worker, write_experiment

PRESETS = sorted((REPO / "experiments" / "trainer").glob("*.yaml"))


def _tiny_model(kind: str):
    if kind == "bimamba":
        from lcplm.models.bimamba import BiMambaConfig

        return build_model(BiMambaConfig(d_model=32, n_layer=3, d_state=8))
    from lcplm.models.sparse_transformer import SparseTransformerConfig

    return build_model(SparseTransformerConfig(num_layers=3, hidden=32, heads=2, ffn=64, attention_backend="reference"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_build_their_strategy(path: Path, monkeypatch):
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    t = load_config(path).trainer
    strategy, plugins = build_strategy(t, "bimamba")
    assert isinstance(plugins[0], AtomicCheckpointIO) and len(plugins) == 1
    expected = {"auto": PlannedSingleDeviceStrategy, "ddp": PlannedDDPStrategy, "fsdp": PlannedFSDPStrategy, "fsdp2": FSDP2Strategy}
    assert isinstance(strategy, expected[t.strategy])
    if t.strategy == "fsdp":
        blocks = set(model_class("bimamba").block_classes)
        assert strategy.kwargs["auto_wrap_policy"]._module_classes == blocks
        assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == blocks
    assert strategy.plan.activation_checkpointing == t.activation_checkpointing
    assert strategy.plan.bf16 == (t.precision == "bf16-mixed")
    if t.strategy in ("ddp", "fsdp2", "fsdp"):
        assert strategy._timeout.total_seconds() == 60 * t.collective_timeout_minutes


def test_bad_strategy_settings_are_user_errors():
    with pytest.raises(UserError, match="trainer.strategy must be one of"):
        build_strategy(TrainerConfig(strategy="deepspeed"), "bimamba")
    with pytest.raises(UserError, match="needs GPUs"):
        build_strategy(TrainerConfig(strategy="fsdp", accelerator="cpu"), "bimamba")
    with pytest.raises(UserError, match="collective_timeout_minutes"):
        build_strategy(TrainerConfig(strategy="ddp", collective_timeout_minutes=0), "bimamba")


def test_under_slurm_lightning_requeue_is_off(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "lcplm-x")
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    _, plugins = build_strategy(TrainerConfig(accelerator="cpu"), "bimamba")
    env = [p for p in plugins if isinstance(p, SLURMEnvironment)]
    assert len(env) == 1 and env[0].auto_requeue is False  # PreemptionCallback saves and requeues


@pytest.mark.parametrize("kind", ["bimamba", "sparse_transformer"])
def test_activation_checkpointing_keeps_outputs_grads_and_state_dict_keys(kind: str):
    torch.manual_seed(0)
    model = _tiny_model(kind)
    ref = _tiny_model(kind)
    ref.load_state_dict(model.state_dict())
    classes = model_class(kind).block_classes
    n_blocks = len(find_blocks(model, classes))
    assert n_blocks >= 2
    assert apply_activation_checkpointing(model, classes) == n_blocks
    assert apply_activation_checkpointing(model, classes) == 0  # idempotent
    assert list(model.state_dict()) == list(ref.state_dict())

    calls = []
    for _, _, unit in find_blocks(model, classes):
        # a pre-hook: recomputation stops early, once the tensors backward needs are rebuilt
        unit._checkpoint_wrapped_module.register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(4, 24, (2, 63))
    lengths = torch.tensor([63, 41])
    out = model(ids, lengths=lengths)
    out_ref = ref(ids, lengths=lengths)
    w = torch.randn_like(out_ref)
    (out * w).sum().backward()
    (out_ref * w).sum().backward()
    # forward once, then once more per block during backward: activations were recomputed
    assert len(calls) == 2 * n_blocks
    # recomputation replays the same ops: bitwise-equal results on CPU
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    # a checkpoint written from the wrapped model loads into a plain one
    plain = _tiny_model(kind)
    plain.load_state_dict(model.state_dict())


def test_fsdp1_flattening_keeps_weight_decay_groups():
    from types import SimpleNamespace

    from lcplm.tasks.optim import param_groups

    model = _tiny_model("bimamba")
    before = [{id(p) for p in g["params"]} for g in param_groups(model, 0.1)]
    strategy, _ = build_strategy(TrainerConfig(strategy="fsdp", accelerator="gpu"), "bimamba")
    strategy.parallelize(SimpleNamespace(model=model))
    for p in model.parameters():  # what FSDP1 does to the original parameters when it shards them
        p.data = p.data.flatten()
    after = [{id(p) for p in g["params"]} for g in param_groups(model, 0.1)]
    assert after == before and len(before[0]) > 0


# -- 2 processes on CPU ----------------------------------------------------------------

def _losses(prefix: Path, world: int, accumulate: int) -> dict[int, float]:
    """Global micro-batch index -> loss, from each rank's record."""
    out: dict[int, float] = {}
    for rank in range(world):
        path = Path(f"{prefix}.rank{rank}.jsonl")
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            step, a = divmod(rec["batch_idx"], accumulate)
            out[step * world * accumulate + rank * accumulate + a] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> dict[int, float]:
    tmp = tmp_path_factory.mktemp("golden")
    exp = write_experiment(tmp)
    r = run_worker([str(exp), "--golden", "--record", str(tmp / "single"), "trainer.accumulate_grad_batches=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(tmp / "single", 1, 2)
    assert sorted(losses) == list(range(12))
    return losses


# fp32 on CPU: the runs differ only in the order of two-term gradient sums. Measured after
# six AdamW steps of the tiny model: DDP bitwise equal, FSDP2 within 1.3e-7 relative. 1e-5
# leaves room for other BLAS builds without hiding a wrong gradient average (a factor of 2
# in the update moves the loss by > 1e-3 within one step).
GOLDEN_RTOL = 1e-5


@pytest.mark.slow
@pytest.mark.xdist_group("lcplm-processes")
@pytest.mark.parametrize("preset", ["ddp_cpu.yaml", "fsdp2_cpu.yaml"])
def test_two_processes_match_single_process_and_resume_after_preemption(preset: str, golden, tmp_path: Path):
    exp = write_experiment(tmp_path, trainer_preset=preset)
    # preempted: SIGUSR1 reaches rank 1 only, in step 3's end hooks (before the preemption
    # callback's check: Lightning runs checkpoint callbacks last); both ranks save last.ckpt at
    # the end of step 3 and exit
    r = run_worker([str(exp), "--golden", "--record", str(tmp_path / "a"), "--fault", "sigusr1", "--at", "3",
                    "--rank", "1"])
    assert r.returncode == 128 + signal.SIGUSR1, r.stderr[-3000:]
    assert "received SIGUSR1: saved" in r.stderr and "at step 3" in r.stderr
    last = tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 3
    assert not any("_checkpoint_wrapped_module" in k or "_fsdp" in k for k in ckpt["state_dict"])
    first = _losses(tmp_path / "a", 2, 1)
    assert sorted(first) == list(range(6))
    # resumed from last.ckpt: steps 4 to 6
    r = run_worker([str(exp), "--golden", "--record", str(tmp_path / "b"), "--ckpt", str(last), "run.name=resumed"])
    assert r.returncode == 0, r.stderr[-3000:]
    second = _losses(tmp_path / "b", 2, 1)
    assert sorted(second) == list(range(6, 12))
    for k, v in {**first, **second}.items():
        assert v == pytest.approx(golden[k], rel=GOLDEN_RTOL), (k, v, golden[k])


# -- GPU (skipped without CUDA) --------------------------------------------------------------

@pytest.mark.gpu
def test_single_gpu_preset_trains_with_bf16_and_checkpointing(tmp_path: Path):
    exp = write_experiment(tmp_path, trainer_preset="single_gpu.yaml")
    r = run_worker([str(exp), "--golden", "--record", str(tmp_path / "g"), "trainer.accumulate_grad_batches=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(tmp_path / "g", 1, 2)
    assert sorted(losses) == list(range(12)) and all(0 < v < 10 for v in losses.values())
    ckpt = torch.load(tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("_checkpoint_wrapped_module" in k for k in ckpt["state_dict"])


@pytest.mark.multigpu
@pytest.mark.parametrize("preset", ["ddp.yaml", "fsdp.yaml", "fsdp2.yaml"])
def test_two_gpus_match_one_gpu(preset: str, tmp_path: Path):
    # fp32 so that the comparison is about the averaging, not bf16 rounding
    common = ["--golden", "trainer.precision=32-true", "trainer.devices=1", "trainer.strategy=auto"]
    exp1 = write_experiment(tmp_path, name="one.yaml", trainer_preset="single_gpu.yaml")
    r = run_worker([str(exp1), *common, "--record", str(tmp_path / "one"), "trainer.accumulate_grad_batches=2",
                    "run.name=one"])
    assert r.returncode == 0, r.stderr[-3000:]
    exp2 = write_experiment(tmp_path, name="two.yaml", trainer_preset=preset)
    r = run_worker([str(exp2), "--golden", "trainer.precision=32-true", "trainer.devices=2",
                    "--record", str(tmp_path / "two"), "run.name=two"])
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _losses(tmp_path / "one", 1, 2), _losses(tmp_path / "two", 2, 1)
    # CUDA reductions are not order-deterministic across process counts; fp32 matmuls (no TF32)
    for k in range(12):
        assert two[k] == pytest.approx(one[k], rel=1e-4), (k, two[k], one[k])
