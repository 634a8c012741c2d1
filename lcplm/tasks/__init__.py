"""LightningModules: losses, metrics, optimisers.

:data:`TASKS` maps ``task.name`` (experiment config) to the LightningModule ``lcplm pretrain``
trains the model with; every task takes ``(model, optim_config, config=resolved_config_dict)``.
"""

from __future__ import annotations

import importlib

from lcplm.errors import UserError

TASKS: dict[str, str] = {
    "mlm": "lcplm.tasks.mlm:MLMTask",  # masked LM: stage 1, stage 2 (graph contexts) and genomes
}


def task_class(name: str) -> type:
    """The LightningModule registered as ``name`` (its module, and Lightning, imported on use)."""
    if name not in TASKS:
        raise UserError(f"task.name must be one of {sorted(TASKS)}, got {name!r}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
