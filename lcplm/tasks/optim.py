"""AdamW with decoupled weight decay on matrices only, and warm-up + cosine schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lcplm.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices; never norms, biases, embeddings or SSM parameters (A_log, D).

    Embeddings are recognised by module type, not by name, so a renamed table is still
    excluded; 1-D parameters (norm scales, biases, D, dt biases) are never decayed.
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        # FSDP1 turns parameters into 1-D shard views; lcplm.train.strategies records their ndim first
        if getattr(p, "_orig_ndim", p.ndim) < 2 or name.endswith("A_log") or getattr(p, "_no_weight_decay", False):
            no_decay_ids.add(id(p))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    """AdamW + LambdaLR (stepped every optimizer step); returns Lightning's optimizer dict."""
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def apply_optim_config(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, cfg: OptimConfig) -> None:
    """Make an optimizer and LambdaLR restored from a checkpoint follow ``cfg`` (a resumed run).

    Lightning restores every param group's ``lr``/``initial_lr``/``weight_decay``/``betas``/``eps``
    and the scheduler's ``base_lrs`` from the checkpoint, which would silently keep the old
    settings. This sets them from ``cfg`` and recomputes the current learning rate from the
    scheduler's restored step (``lr = cfg.lr * multiplier(step)``, exactly what the scheduler
    computes), so an unchanged config leaves every number as it was.
    """
    fresh = param_groups(model, cfg.weight_decay)
    if len(fresh) != len(optimizer.param_groups):
        raise ValueError(f"optimizer has {len(optimizer.param_groups)} param groups, the model gives {len(fresh)}")
    for group, want in zip(optimizer.param_groups, fresh):
        group["initial_lr"] = cfg.lr
        group["weight_decay"] = want["weight_decay"]
        group["betas"] = tuple(cfg.betas)
        group["eps"] = cfg.eps
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
