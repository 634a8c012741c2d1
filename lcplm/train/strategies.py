"""Parallelism applied from outside the (single-device) models: DDP, FSDP, FSDP2.

``build_strategy(trainer_cfg, model) -> (strategy, plugins)`` turns the ``trainer`` section
(presets in ``experiments/trainer/``) into a Lightning strategy plus plugins:

- ``auto`` / one device: :class:`PlannedSingleDeviceStrategy`;
- ``ddp``: :class:`PlannedDDPStrategy` (gloo on CPU, NCCL on GPU);
- ``fsdp``: :class:`PlannedFSDPStrategy`, Lightning's ``FSDPStrategy`` (FSDP1, GPU only),
  wrapping and checkpointing per block (``auto_wrap_policy`` / ``activation_checkpointing_policy``);
- ``fsdp2``: :class:`FSDP2Strategy`, Lightning's ``ModelParallelStrategy`` with
  ``fully_shard`` per block and on the root (runs on CPU with gloo too).

The "planned" strategies carry a :class:`ParallelPlan` and apply it in
:meth:`parallelize`, which the task calls from ``LightningModule.configure_model`` (after
the process group exists, before optimisers are built): activation checkpointing per block
(``checkpoint_wrapper``, non-reentrant; state-dict keys are unchanged so checkpoints load
into unwrapped models) and, for FSDP2, sharding. A "block" is one residual layer of the model:
the classes are listed per model in :data:`BLOCK_CLASSES`.

Every strategy gets a bounded collective timeout (``trainer.collective_timeout_minutes``), so
a rank that dies or hangs fails the job instead of blocking the others forever; local
child ranks also watch their parent (rank 0) and exit when it is gone.
Plugins: :class:`~lcplm.train.checkpoint_io.AtomicCheckpointIO` always; under SLURM, the
cluster environment with Lightning's own requeue handler off, because
:class:`lcplm.train.slurm.PreemptionCallback` saves ``last.ckpt`` and requeues instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from torch import nn

from lcplm.errors import UserError
from lcplm.train.checkpoint_io import AtomicCheckpointIO

# model name -> the residual block classes that are wrapped (FSDP) and checkpointed
BLOCK_CLASSES: dict[str, tuple[str, ...]] = {
    "bimamba": ("lcplm.models.bimamba:BiMambaBlock",),
    "sparse_transformer": ("lcplm.models.sparse_transformer:SparseTransformerBlock",),
    "esm2": ("lcplm.models.sparse_transformer:SparseTransformerBlock",),
}

# FSDP2 all-gathers parameters in this dtype under bf16 mixed precision. BiMamba-S keeps
# fp32: its A_log, D and dt bias feed exp/softplus in the scan, where bf16 rounding (8-bit
# mantissa) shifts the decay rates; autocast still runs its matmuls in bf16.
FSDP2_PARAM_DTYPE: dict[str, Optional[torch.dtype]] = {
    "bimamba": None,
    "sparse_transformer": torch.bfloat16,
    "esm2": torch.bfloat16,
}

STRATEGIES = ("auto", "ddp", "fsdp", "fsdp2")


def block_classes(model_kind: str) -> tuple[type[nn.Module], ...]:
    """The residual block classes of model ``model_kind`` (imported lazily)."""
    if model_kind not in BLOCK_CLASSES:
        raise UserError(f"model.name {model_kind!r} has no block classes for strategies; known: {sorted(BLOCK_CLASSES)}")
    out = []
    for target in BLOCK_CLASSES[model_kind]:
        module, _, attr = target.partition(":")
        out.append(getattr(importlib.import_module(module), attr))
    return tuple(out)


@dataclass
class ParallelPlan:
    """What :meth:`parallelize` applies to the task's network."""

    blocks: tuple[type[nn.Module], ...]
    activation_checkpointing: bool = False
    fsdp2_param_dtype: Optional[torch.dtype] = None  # None keeps fp32 all-gathers
    bf16: bool = False  # mixed precision on (reduce-scatter in fp32 either way)


def _unwrap(m: nn.Module) -> nn.Module:
    return getattr(m, "_checkpoint_wrapped_module", m)


def find_blocks(model: nn.Module, classes: tuple[type[nn.Module], ...]) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute name, unit)`` for each outermost block of ``model``.

    A unit is the block itself or the checkpoint wrapper around it, so sharding and
    checkpointing see the same units whichever was applied first.
    """
    found: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(m: nn.Module) -> None:
        for name, child in m.named_children():
            if isinstance(_unwrap(child), classes):
                found.append((m, name, child))
            else:
                visit(child)

    visit(model)
    return found


def apply_activation_checkpointing(model: nn.Module, classes: tuple[type[nn.Module], ...]) -> int:
    """Recompute each block's activations in backward; returns the number of blocks wrapped.

    Idempotent (already wrapped blocks are skipped). Each block keeps only its input for
    backward instead of all its intermediates. The wrapper's state-dict hooks drop its
    prefix, so parameter names in checkpoints do not change.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    n = 0
    for parent, name, unit in find_blocks(model, classes):
        if unit is _unwrap(unit):
            setattr(parent, name, checkpoint_wrapper(unit, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
            n += 1
    return n


def _network(task: nn.Module) -> nn.Module:
    net = getattr(task, "model", None)
    if not isinstance(net, nn.Module):
        raise TypeError(f"{type(task).__name__} has no `model` sub-module to parallelize")
    return net


def _checkpoint_blocks(net: nn.Module, plan: ParallelPlan) -> None:
    # a model that checkpoints its own layers (model.activation_checkpointing) is not
    # wrapped again: nested checkpoints would recompute each block twice
    if plan.activation_checkpointing and not getattr(getattr(net, "cfg", None), "activation_checkpointing", False):
        apply_activation_checkpointing(net, plan.blocks)


class _ParentWatchdog(threading.Thread):
    """In a local child rank: exit (status 1) within ``period`` s once the parent rank is gone.

    Lightning's launcher kills rank 0 when a child dies; this covers the other direction
    (rank 0 killed), where children would otherwise wait in a collective until the timeout.
    """

    def __init__(self, period: float = 1.0) -> None:
        super().__init__(daemon=True, name="lcplm-parent-watchdog")
        self.parent = os.getppid()
        self.period = period

    def run(self) -> None:
        while True:
            time.sleep(self.period)
            if os.getppid() != self.parent:
                print(
                    f"lcplm: rank 0 (pid {self.parent}) is gone; rank process {os.getpid()} exits",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)


class _WatchParent:
    """Mixin for the multi-process strategies: after the environment is set up, a local child
    rank (one Lightning's launcher created) starts a :class:`_ParentWatchdog`."""

    def setup_environment(self) -> None:
        super().setup_environment()
        env = self.cluster_environment
        if self.local_rank > 0 and env is not None and not env.creates_processes_externally:
            _ParentWatchdog().start()


class PlannedSingleDeviceStrategy(SingleDeviceStrategy):
    """One device; ``parallelize`` applies activation checkpointing only."""

    def __init__(self, plan: ParallelPlan, device: torch.device, **kwargs: Any) -> None:
        super().__init__(device=device, **kwargs)
        self.plan = plan

    def parallelize(self, task: nn.Module) -> None:
        _checkpoint_blocks(_network(task), self.plan)


class PlannedDDPStrategy(_WatchParent, DDPStrategy):
    """DDP (``popen`` launcher: children re-run the command), bounded timeout, parent watchdog."""

    def __init__(self, plan: ParallelPlan, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def parallelize(self, task: nn.Module) -> None:
        _checkpoint_blocks(_network(task), self.plan)


class PlannedFSDPStrategy(_WatchParent, FSDPStrategy):
    """Lightning's FSDP (FSDP1): wrapping and checkpointing come from its policies.

    ``parallelize`` runs before FSDP1 flattens the parameters into 1-D shard views and records
    each parameter's true ``ndim``, which the optimizer's weight-decay grouping reads.
    """

    def __init__(self, plan: ParallelPlan, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def parallelize(self, task: nn.Module) -> None:
        for p in _network(task).parameters():
            if not hasattr(p, "_orig_ndim"):
                p._orig_ndim = p.ndim


class FSDP2Strategy(_WatchParent, ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over all ranks: one data-parallel mesh dimension, no TP.

    Parameters, gradients and optimizer state are sharded across ranks; each block is its
    own FSDP unit, so only one block's full parameters exist at a time (plus the prefetched
    next one). Checkpoints are single full-state files written by rank 0 (through the
    atomic CheckpointIO), which ``load_model`` and any world size can read.
    """

    def __init__(self, plan: ParallelPlan, world_size: int, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs
        )
        self.plan = plan

    def parallelize(self, task: nn.Module) -> None:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        net = _network(task)
        if isinstance(net, FSDPModule):
            return  # configure_model runs again for trainer.validate(): already sharded
        _checkpoint_blocks(net, self.plan)
        # everything outside the network (metrics) goes to the device too: the strategy
        # does not move the module after configure_model
        task.to(self.root_device)
        mesh = self.device_mesh["data_parallel"]
        mp = None
        if self.plan.bf16:
            # inputs are not cast: autocast (precision=bf16-mixed) already runs matmuls in
            # bf16 and keeps norms, softmax and the residual stream in fp32
            mp = MixedPrecisionPolicy(
                param_dtype=self.plan.fsdp2_param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
            )
        kw = {"mesh": mesh, **({"mp_policy": mp} if mp is not None else {})}
        for _, _, unit in find_blocks(net, self.plan.blocks):
            fully_shard(unit, **kw)
        fully_shard(net, **kw)


def _bf16(trainer_cfg: Any) -> bool:
    p = str(trainer_cfg.precision)
    if p == "auto":
        return _on_gpu(trainer_cfg)
    return p.startswith("bf16")


def _on_gpu(trainer_cfg: Any) -> bool:
    acc = trainer_cfg.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _timeout(trainer_cfg: Any) -> timedelta:
    minutes = float(getattr(trainer_cfg, "collective_timeout_minutes", 10.0))
    if minutes <= 0:
        raise UserError(f"trainer.collective_timeout_minutes must be > 0, got {minutes}")
    return timedelta(minutes=minutes)


def cluster_plugins() -> list[Any]:
    """Under SLURM: its environment, with Lightning's own SIGUSR1 requeue handler off."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=False)]
    return []


def build_strategy(trainer_cfg: Any, model: Any) -> tuple[Any, list[Any]]:
    """``(strategy, plugins)`` for ``lightning.Trainer`` from the ``trainer`` config section.

    ``model`` is the model config (anything with ``.name``) or the model name itself.
    """
    kind = model if isinstance(model, str) else model.name
    name = trainer_cfg.strategy
    if name not in STRATEGIES:
        raise UserError(f"trainer.strategy must be one of {list(STRATEGIES)}, got {name!r}")
    on_gpu = _on_gpu(trainer_cfg)
    world = int(trainer_cfg.devices) * int(trainer_cfg.num_nodes)
    plan = ParallelPlan(
        blocks=block_classes(kind),
        activation_checkpointing=bool(trainer_cfg.activation_checkpointing),
        fsdp2_param_dtype=FSDP2_PARAM_DTYPE.get(kind),
        bf16=_bf16(trainer_cfg),
    )
    plugins: list[Any] = [AtomicCheckpointIO(), *cluster_plugins()]
    timeout = _timeout(trainer_cfg)
    if name == "auto":
        name = "ddp" if world > 1 else "single"
    if name == "single":
        if world != 1:
            raise UserError(f"one device expected for a single-device run, got devices*num_nodes={world}")
        device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
        return PlannedSingleDeviceStrategy(plan, device=device), plugins
    if name == "ddp":
        # no unused parameters in our models: skipping the search saves a pass over the graph
        return PlannedDDPStrategy(plan, timeout=timeout, find_unused_parameters=False, gradient_as_bucket_view=True), plugins
    if name == "fsdp":
        if not on_gpu:
            raise UserError("trainer.strategy=fsdp (FSDP1) needs GPUs; use trainer.strategy=fsdp2 on CPU")
        blocks = set(plan.blocks)
        return (
            PlannedFSDPStrategy(
                plan,
                auto_wrap_policy=blocks,
                activation_checkpointing_policy=blocks if plan.activation_checkpointing else None,
                sharding_strategy="FULL_SHARD",
                state_dict_type="full",
                limit_all_gathers=True,
                timeout=timeout,
            ),
            plugins,
        )
    return FSDP2Strategy(plan, world_size=world, timeout=timeout), plugins
