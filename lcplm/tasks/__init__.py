"""LightningModules: losses, metrics, optimisers.

:data:`TASKS` (kept in :mod:`lcplm.registry`) maps ``task.name`` (experiment config) to the
LightningModule ``lcplm pretrain`` trains the model with; every task takes ``(model, optim_config,
config=resolved_config_dict)``. :mod:`~lcplm.tasks.metrics` holds the metrics, computed once for
training and evaluation alike.
"""

from __future__ import annotations

import importlib

from lcplm.errors import UserError
from lcplm.registry import TASKS


def task_class(name: str) -> type:
    """The LightningModule registered as ``name`` (its module, and Lightning, imported on use)."""
    if name not in TASKS:
        raise UserError(f"task.name must be one of {sorted(TASKS)}, got {name!r}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
