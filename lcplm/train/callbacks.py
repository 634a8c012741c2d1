"""Callbacks every run gets: periodic ``last.ckpt`` + ``step<N>.ckpt``, the best checkpoint by
validation loss, and preemption handling (:class:`lcplm.train.slurm.PreemptionCallback`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lcplm.config import PretrainConfig
from lcplm.train.run_dir import STEP_CHECKPOINT
from lcplm.train.slurm import PreemptionCallback


class PeriodicCheckpoint(ModelCheckpoint):
    """``step<N>.ckpt`` and ``last.ckpt`` every ``every_n_train_steps``; one step file is kept.

    Lightning's own top-k bookkeeping forgets files across restarts (a resume whose callback
    settings changed, a kill between the step file and ``last.ckpt``), and its version counter
    then writes ``step<N>-v1.ckpt`` beside a file of the same step. Here the same step
    overwrites its file (atomically), and after each step file is written every other
    ``step*.ckpt`` in the folder is deleted, whatever segment wrote it.
    """

    def __init__(self, dirpath: Path, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,
            monitor="step",
            mode="max",
            save_last=True,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        new = Path(filepath)
        if trainer.is_global_zero and STEP_CHECKPOINT.fullmatch(new.name):
            for old in new.parent.glob("step*.ckpt"):
                if old.name != new.name and STEP_CHECKPOINT.fullmatch(old.name):
                    old.unlink(missing_ok=True)


def build_callbacks(cfg: PretrainConfig, out: Path) -> list[Callback]:
    ckpt_dir = out / "checkpoints"
    periodic = PeriodicCheckpoint(ckpt_dir, cfg.run.save_every_n_steps)
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
    # SIGUSR1/SIGTERM: save last.ckpt at the end of the step (after that step's validation, if
    # one is due), requeue under SLURM, exit. After `best`, so a due validation saves it first.
    return [periodic, best, PreemptionCallback(ckpt_dir / "last.ckpt")]
