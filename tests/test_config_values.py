"""Every config value is checked at load: ranges, finite numbers, choices; one line naming the key."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported at collection: its log handler must bind the real stderr)
import pytest
import torch

from lcplm.__main__ import main as cli
from lcplm.config import OptimConfig, PretrainConfig, TrainerConfig, load_config
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "pretrain" / "tiny.yaml"


def _one_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.max_steps=-5", "trainer.max_steps"),
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.weight_decay=-0.1", "optim.weight_decay"),
        ("optim.betas=[0.9,1.5]", "optim.betas"),
        ("optim.min_lr_ratio=2", "optim.min_lr_ratio"),
        ("optim.warmup_steps=-1", "optim.warmup_steps"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval"),
        ("run.save_every_n_steps=-1", "run.save_every_n_steps"),
        ("run.seed=-3", "run.seed"),
        ("run.name=a/b", "run.name"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("trainer.accelerator=tpu", "trainer.accelerator"),
        ("trainer.precision=bogus", "trainer.precision"),
        ("trainer.strategy=deepspeed", "trainer.strategy"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.max_time_minutes=-2", "trainer.max_time_minutes"),
        ("trainer.collective_timeout_minutes=nan", "trainer.collective_timeout_minutes"),
        ("task.name=classify", "task.name"),
        ("model.dt_scale=nan", "model.dt_scale"),  # NaN anywhere, also in sections without their own checks
        ("data.mask_prob=nan", "data.mask_prob"),
    ],
)
def test_out_of_range_values_are_one_line_naming_the_key(capsys, tmp_path: Path, override: str, key: str):
    err = _one_line(capsys, ["pretrain", str(TINY), override, f"run.out_dir={tmp_path}"])
    assert key in err and str(TINY) in err, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("value", ["42", "{a: 1}", "[1, 2]", "['']"])
def test_include_must_be_paths(tmp_path: Path, value: str):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"include: {value}\n")
    with pytest.raises(UserError, match=r"'include' must be a file path or a list of file paths"):
        load_config(exp, [], PretrainConfig)


def test_a_trainer_lightning_refuses_is_one_line(capsys, tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU")
    err = _one_line(capsys, ["pretrain", str(TINY), "trainer.accelerator=gpu", f"run.out_dir={tmp_path}"])
    assert err.startswith("lcplm pretrain: error: trainer:"), err


def test_defaults_and_edges_are_accepted():
    OptimConfig(lr=1e-6, weight_decay=0.0, betas=(0.0, 0.999), warmup_steps=0, min_lr_ratio=1.0, grad_clip=0.0)
    TrainerConfig(max_steps=-1, max_epochs=3, limit_val_batches=0, precision="bf16-mixed", strategy="fsdp2")
    cfg = load_config(TINY, ["trainer.max_steps=-1", "trainer.max_time_minutes=1.5"], PretrainConfig)
    assert cfg.trainer.max_steps == -1
    with pytest.raises(UserError, match="optim.eps must be a finite number > 0, got 0"):
        OptimConfig(eps=0)
