"""The model registry and the facts model classes carry (block classes, FSDP2 dtype, inputs),
read by the other layers instead of string tables of their own; task.name's registry."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from lcplm.config import SECTION_SCHEMAS, TrainerConfig, _import, load_config
from lcplm.errors import UserError
from lcplm.models import MODELS, model_class
from lcplm.train.strategies import build_strategy, find_blocks

PACKAGE = Path(model_class.__code__.co_filename).resolve().parents[1]
REPO = PACKAGE.parent


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_registered_class_carries_its_facts(kind):
    cls = model_class(kind)
    cfg = cls.config_class()
    assert cfg.name == kind
    assert isinstance(cls.block_classes, tuple) and cls.block_classes
    assert all(issubclass(b, nn.Module) for b in cls.block_classes)
    assert cls.fsdp_param_dtype is None or isinstance(cls.fsdp_param_dtype, torch.dtype)
    params = inspect.signature(cls.forward).parameters
    assert all(name in params for name in cls.keyword_inputs), (cls.keyword_inputs, list(params))
    assert all(name in inspect.signature(cls.encode).parameters for name in cls.keyword_inputs)
    # the block classes are the model's residual layers: one unit per layer
    model = cls(cfg)
    layers = next(v for k, v in vars(cfg).items() if k in ("n_layer", "num_layers"))
    assert len(find_blocks(model, cls.block_classes)) == layers


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_strategies_read_the_facts_from_the_model_class(kind):
    cls = model_class(kind)
    strategy, _ = build_strategy(TrainerConfig(accelerator="cpu", activation_checkpointing=True), kind)
    assert strategy.plan.blocks == cls.block_classes
    assert strategy.plan.fsdp2_param_dtype == cls.fsdp_param_dtype
    assert strategy.plan.activation_checkpointing


def test_config_model_names_are_the_registry():
    assert set(SECTION_SCHEMAS["model"]) == set(MODELS)
    for kind, target in SECTION_SCHEMAS["model"].items():
        assert _import(target) is model_class(kind).config_class
    with pytest.raises(UserError, match="model.name must be one of"):
        model_class("mamba3")


def test_no_table_keyed_by_model_kind_outside_lcplm_models():
    """Facts about a model live on its class: no dict literal elsewhere is keyed by model kinds
    (but the registry itself, lcplm/registry.py's MODELS)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "models") or path == PACKAGE / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if keys & set(MODELS):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not offenders, offenders


def test_models_have_no_activation_checkpointing_switch_of_their_own():
    for kind in MODELS:
        fields = vars(model_class(kind).config_class())
        assert "activation_checkpointing" not in fields, kind  # one switch: trainer.activation_checkpointing


def test_task_name_selects_the_lightning_module(tmp_path):
    from lcplm.tasks import TASKS, task_class
    from lcplm.tasks.mlm import MLMTask

    assert task_class("mlm") is MLMTask and set(TASKS) == {"mlm"}
    exp = REPO / "experiments" / "pretrain" / "tiny.yaml"
    assert load_config(exp).task.name == "mlm"
    with pytest.raises(UserError, match="task.name must be one of"):
        load_config(exp, ["task.name=ranking"])
