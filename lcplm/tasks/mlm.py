"""Masked-language-model training as a LightningModule (stage 1, stage 2 and genome MLM).

The task receives its network (any lcplm model: ``forward(input_ids, **inputs) -> logits``)
and a batch dict whose ``labels`` hold the MLM targets (-100 elsewhere); every other key of
the batch is a keyword input of the model. The task knows nothing about where the batch came
from, so one class serves FASTA pretraining, PPI-walk contexts and whole genomes.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lcplm.config import OptimConfig
from lcplm.data.tokenizer import MASK
from lcplm.tasks.optim import apply_optim_config, build_optimizer

IGNORE_INDEX = -100


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross entropy over targets, number of targets, number of correct argmax predictions.

    logits: (B, L, V), labels: (B, L) with -100 where not a target. The loss is computed in
    fp32 whatever the autocast dtype, and is 0 (not NaN) for a batch without targets.
    """
    target = labels != IGNORE_INDEX
    n = target.sum()
    sel = logits[target].float()  # (n, V): the LM head's outputs at target positions only
    y = labels[target]
    loss_sum = F.cross_entropy(sel, y, reduction="sum")
    correct = (sel.argmax(-1) == y).sum()
    return loss_sum / n.clamp_min(1), n, correct


class MLMTask(L.LightningModule):
    """Masked cross entropy; AdamW (no decay on norms/biases/embeddings); warm-up + cosine."""

    def __init__(self, model: nn.Module, optim: OptimConfig | None = None, config: dict | None = None):
        super().__init__()
        self.model = model
        self.optim_cfg = optim or OptimConfig()
        # The resolved experiment config (plain types only) travels in every checkpoint, so
        # ``lcplm.models.io.from_pretrained`` can rebuild the model with weights_only=True.
        self.save_hyperparameters({"config": config or {}})
        self.val_loss = MeanMetric()
        self.val_acc = MeanMetric()
        # loss at targets shown as <mask> only: the model must infer them from context, so
        # this is the number to compare with a context-free (unigram) baseline
        self.val_mask_loss = MeanMetric()

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs)

    def configure_model(self) -> None:
        # The strategy applies its parallelism plan here, once the process group exists
        # (lcplm.train.strategies: activation checkpointing per block, FSDP2 sharding).
        parallelize = getattr(self.trainer.strategy, "parallelize", None)
        if parallelize is not None:
            parallelize(self)

    def _step(self, batch: dict[str, torch.Tensor]):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs)
        return masked_lm_loss(logits, batch["labels"])

    def _nonfinite(self, loss: torch.Tensor) -> tuple[bool, bool]:
        """(this rank's loss is NaN/inf, any rank's is): one tiny all-reduce when world size > 1."""
        here = not bool(torch.isfinite(loss))
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return here, here
        flag = torch.tensor([1.0 if here else 0.0], device=loss.device)
        return here, bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n, correct = self._step(batch)
        here, anywhere = self._nonfinite(loss)
        if anywhere:
            # NaN/inf guard: raise before the optimizer step so the last checkpoint stays good.
            # Every rank raises at the same step (the flag is all-reduced), so a multi-process
            # job stops together instead of leaving the other ranks waiting in a collective.
            what = f"training loss is {loss.item()}" if here else "training loss is not finite on another rank"
            raise FloatingPointError(
                f"{what} at global step {self.global_step}; the last good checkpoint is untouched: resume from it "
                f"with a lower learning rate (same command plus --resume optim.lr={self.optim_cfg.lr / 4:.3g}) "
                "or check the data"
            )
        bs = int(batch["labels"].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/masked_acc", correct.float() / n.clamp_min(1), batch_size=bs)
        self.log("train/targets", n.float(), reduce_fx="sum", batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
        logits = self.model(**inputs)
        target = labels != IGNORE_INDEX
        if not bool(target.any()):
            return
        y = labels[target]
        sel = logits[target].float()
        token_loss = F.cross_entropy(sel, y, reduction="none")
        shown_mask = batch["input_ids"][target] == MASK
        # token-weighted means: the epoch value is total loss / total targets, across ranks
        self.val_loss.update(token_loss.mean(), weight=token_loss.numel())
        self.val_acc.update((sel.argmax(-1) == y).float().mean(), weight=token_loss.numel())
        if bool(shown_mask.any()):
            self.val_mask_loss.update(token_loss[shown_mask].mean(), weight=int(shown_mask.sum()))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.world_size == 1 and float(self.val_loss.weight) == 0.0:
            return  # no validation targets at all (e.g. an empty validation split)
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/perplexity", torch.exp(loss.clamp(max=50)))
        self.log("val/masked_acc", self.val_acc.compute())
        self.log("val/mask_token_loss", self.val_mask_loss.compute())
        for m in (self.val_loss, self.val_acc, self.val_mask_loss):
            m.reset()

    def on_train_start(self) -> None:
        # A resumed run: the optimizer and scheduler state came from the checkpoint; the
        # optim settings of this segment (a lower learning rate after a NaN stop, say) apply.
        if self._trainer is not None and self.trainer.ckpt_path:
            sched = self.trainer.lr_scheduler_configs[0].scheduler if self.trainer.lr_scheduler_configs else None
            if sched is not None:
                apply_optim_config(self.model, self.trainer.optimizers[0], sched, self.optim_cfg)

    def configure_optimizers(self) -> Any:
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        if total is None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if math.isfinite(est) else 10_000
        return build_optimizer(self.model, self.optim_cfg, total)
