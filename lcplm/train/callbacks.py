"""Callbacks every run gets: periodic ``last.ckpt`` and the best checkpoint by validation loss."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lcplm.config import PretrainConfig
from lcplm.train.slurm import PreemptionCallback


def build_callbacks(cfg: PretrainConfig, out: Path) -> list[Callback]:
    ckpt_dir = out / "checkpoints"
    last = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.run.save_every_n_steps,
        save_top_k=1,  # only the newest periodic one besides last.ckpt
        monitor="step",
        mode="max",
        save_last=True,
        save_on_train_epoch_end=True,
    )
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=False,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # SIGUSR1/SIGTERM: save last.ckpt at the end of the step, requeue under SLURM, exit
    return [last, best, PreemptionCallback(ckpt_dir / "last.ckpt")]
