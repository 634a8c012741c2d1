"""A training process for the multi-process and fault-injection tests (not collected by pytest).

    python train_worker.py EXPERIMENT.yaml [key=value ...] [--record PREFIX] [--golden]
                           [--ckpt PATH] [--fault KIND --at STEP --rank R]

Runs the production path (``lcplm.train.run.train``, or its ``build_trainer`` with the
golden data below) and records, per rank, every micro-batch loss and learning rate to
``PREFIX.rank<r>.jsonl`` and the process id to ``PREFIX.pid<r>``. Lightning's DDP launcher
re-runs this same command for the other ranks. Faults, at the end of optimizer step STEP on
rank R: ``sigkill`` (the process), ``exit`` (``os._exit(3)``), ``sigusr1`` / ``sigterm`` (to
itself), ``nan`` (a parameter becomes NaN before step STEP + 1); ``sigterm-in-step``: SIGTERM
while step STEP runs (before its end); ``kill-in-save``: SIGKILL halfway through writing the
STEP-th checkpoint file of the process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningDataModule

from lcplm.config import PretrainConfig, load_config
from lcplm.data import tokenizer

MICRO_BATCHES_PER_STEP = 2  # world size x gradient accumulation, equal in every compared run
BATCH, MAX_LEN = 3, 37


def golden_micro_batch(index: int) -> dict[str, torch.Tensor]:
    """Micro-batch ``index`` of the global stream: padded proteins of odd lengths, ~15% targets."""
    g = torch.Generator().manual_seed(1000 + index)
    lengths = torch.randint(8, MAX_LEN + 1, (BATCH,), generator=g)
    lengths[0] = MAX_LEN
    aa = torch.as_tensor(tokenizer.STANDARD_AA_IDS)
    ids = torch.full((BATCH, MAX_LEN), tokenizer.PAD, dtype=torch.long)
    labels = torch.full((BATCH, MAX_LEN), -100, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        seq = aa[torch.randint(0, len(aa), (n - 2,), generator=g)]
        ids[b, :n] = torch.cat([torch.tensor([tokenizer.CLS]), seq, torch.tensor([tokenizer.EOS])])
        target = torch.rand(n - 2, generator=g) < 0.15
        target[0] = True
        pos = torch.nonzero(target).squeeze(1) + 1
        labels[b, pos] = ids[b, pos]
        ids[b, pos] = tokenizer.MASK
    return {"input_ids": ids, "lengths": lengths, "labels": labels}


class GoldenData(LightningDataModule):
    """Rank r of W with accumulation A trains micro-batches s*M + r*A + a of each step s (M = W*A).

    A single process with A = 2 and two processes with A = 1 therefore average the gradients
    of the same two micro-batches in every optimizer step.
    """

    def __init__(self, accumulate: int) -> None:
        super().__init__()
        self.accumulate = accumulate

    def train_dataloader(self):
        from lcplm.data.datamodules import resume_position

        trainer = self.trainer
        world, rank = trainer.world_size, trainer.global_rank
        assert world * self.accumulate == MICRO_BATCHES_PER_STEP, (world, self.accumulate)
        _, done = resume_position(trainer)
        idx = [
            s * MICRO_BATCHES_PER_STEP + rank * self.accumulate + a
            for s in range(200)
            for a in range(self.accumulate)
        ][done:]
        return torch.utils.data.DataLoader([golden_micro_batch(i) for i in idx[:64]], batch_size=None)

    def val_dataloader(self):
        return torch.utils.data.DataLoader([golden_micro_batch(10_000 + i) for i in range(2)], batch_size=None)


class Recorder(Callback):
    def __init__(self, prefix: str, accumulate: int) -> None:
        self.prefix, self.accumulate = prefix, accumulate
        self.lr = float("nan")

    def setup(self, trainer, pl_module, stage):
        Path(f"{self.prefix}.pid{trainer.global_rank}").write_text(str(os.getpid()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step's update uses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Lightning hands back the loss divided by the accumulation factor
        loss = float(outputs["loss"]) * self.accumulate
        rec = {"step": trainer.global_step, "batch_idx": batch_idx, "loss": loss, "lr": self.lr}
        with open(f"{self.prefix}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


class Fault(Callback):
    def __init__(self, kind: str, at: int, rank: int) -> None:
        self.kind, self.at, self.rank = kind, at, rank

    def _mine(self, trainer) -> bool:
        return trainer.global_rank == self.rank and trainer.global_step == self.at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._mine(trainer) or self.kind == "nan":
            return
        if self.kind == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "exit":
            os._exit(3)
        elif self.kind in ("sigusr1", "sigterm"):
            os.kill(os.getpid(), signal.SIGUSR1 if self.kind == "sigusr1" else signal.SIGTERM)
        self.at = -1  # once

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kind == "nan" and self._mine(trainer):
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))
        # global_step counts finished steps: STEP - 1 while step STEP runs
        if self.kind == "sigterm-in-step" and trainer.global_rank == self.rank and trainer.global_step == self.at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
            self.at = -1


def kill_in_save(nth: int) -> None:
    """SIGKILL this process halfway through writing its ``nth`` checkpoint file."""
    from lcplm.train import checkpoint_io

    real = checkpoint_io.atomic_torch_save
    count = [0]

    def save(obj, path):
        count[0] += 1
        if count[0] < nth:
            return real(obj, path)
        buf = io.BytesIO()
        torch.save(obj, buf)

        def half_then_die(f):
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint_io.atomic_write_with(path, half_then_die)

    checkpoint_io.atomic_torch_save = save


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--record")
    p.add_argument("--golden", action="store_true")
    p.add_argument("--ckpt")
    p.add_argument("--fault", choices=["sigkill", "exit", "sigusr1", "sigterm", "nan", "sigterm-in-step", "kill-in-save"])
    p.add_argument("--at", type=int, default=-1)
    p.add_argument("--rank", type=int, default=0)
    ns = p.parse_intermixed_args()
    cfg: PretrainConfig = load_config(ns.experiment, ns.overrides)
    callbacks: list[Callback] = []
    if ns.record:
        callbacks.append(Recorder(ns.record, cfg.trainer.accumulate_grad_batches))
    if ns.fault == "kill-in-save":
        kill_in_save(ns.at)
    elif ns.fault:
        callbacks.append(Fault(ns.fault, ns.at, ns.rank))
    if not ns.golden:
        from lcplm.train.run import train

        train(cfg, extra_callbacks=callbacks)
        return 0

    import lightning as L

    from lcplm.models import build_model
    from lcplm.tasks.mlm import MLMTask
    from lcplm.train.run import build_trainer

    torch.set_num_threads(max(1, cfg.trainer.num_threads))
    out = Path(cfg.run.out_dir) / cfg.run.name
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    task = MLMTask(build_model(cfg.model), cfg.optim)
    trainer = build_trainer(cfg, out, callbacks)
    trainer.fit(task, datamodule=GoldenData(cfg.trainer.accumulate_grad_batches), ckpt_path=ns.ckpt, weights_only=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
