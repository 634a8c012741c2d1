"""Downstream heads as one LightningModule, configured by the kind of prediction, and the
factories that build each named head's network.

:class:`DownstreamTask` receives its network (any ``net(**inputs) -> logits`` from
:mod:`lcplm.models.heads`: a probe on cached embeddings, a fine-tuned encoder, a GNN over a PPI
graph) and a batch dict whose ``y`` holds the targets; every other key is a keyword input of
the network. ``kind`` picks the loss and the metrics (:func:`prediction_metrics`, on
:mod:`lcplm.tasks.metrics`):

* ``multiclass`` (fold classification): cross entropy; ``accuracy``.
* ``multilabel`` (EC / GO / ogbn-proteins tasks, STRING interaction types): BCE; ``rocauc`` (OGB's
  mean per-task rule), ``aupr`` (micro-averaged, DeepFRI's), ``fmax`` (CAFA's), and with
  ``f1_threshold`` ``micro_f1`` (GNN-PPI's: labels predicted where sigmoid > threshold).
* ``binary`` (PPI links): BCE; ``auroc``, ``ap`` and, for shared negatives, ``hits@K``.

Metrics are computed once per epoch on all of a stage's predictions, because per-task ROC-AUC
and Hits@K are not averages of per-batch values. The weights of the best validation epoch
(by ``monitor``, default per kind: :data:`MONITOR`) are kept in memory and restored by
:func:`fit_and_evaluate` before testing on a DataModule's test splits
(:mod:`lcplm.data.datamodules.downstream`).

Head names (:func:`head_net`, :func:`finetune_net`): ``linear`` / ``mlp`` on embedding rows
(sequence and node tasks), ``sage`` (GraphSAGE over the node graph, then a linear probe),
``pair_mlp`` (Hadamard product + MLP on the two proteins' embeddings), ``sage_pair`` (the same
over GraphSAGE of the training graph), ``finetune`` (encoder + residue mean + MLP, end to end).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_auroc, binary_average_precision, multiclass_accuracy

from lcplm.data.datamodules.downstream import NodeDataModule, PairDataModule, SequenceDataModule, SplitsDataModule
from lcplm.tasks.metrics import fmax, hits_at_k, micro_f1, ogb_rocauc

Kind = Literal["multiclass", "multilabel", "binary"]
MONITOR: dict[str, str] = {"multiclass": "accuracy", "multilabel": "rocauc", "binary": "auroc"}


def prediction_metrics(kind: Kind, logits: torch.Tensor, y: torch.Tensor, hits_k: tuple[int, ...] = (),
                       f1_threshold: Optional[float] = None) -> dict[str, float]:
    """Metrics of one stage's predictions. logits/y: (N, C)/(N,) multiclass, (N, T)/(N, T)
    multilabel, (N,)/(N,) binary. A metric that is undefined on these labels is NaN."""
    logits, y = logits.detach().float().cpu(), y.detach().cpu()
    if kind == "multiclass":
        return {"accuracy": float(multiclass_accuracy(logits, y, num_classes=logits.shape[-1], average="micro"))}
    prob = torch.sigmoid(logits)
    if kind == "multilabel":
        try:
            rocauc = ogb_rocauc(y, prob)
        except ValueError:  # no task with both classes among these proteins
            rocauc = math.nan
        labels = y.long().flatten()
        aupr = float(binary_average_precision(prob.flatten(), labels)) if bool(labels.any()) else math.nan
        has_true = bool((y == 1).any())
        out = {"rocauc": rocauc, "aupr": aupr, "fmax": fmax(y, prob) if has_true else math.nan}
        if f1_threshold is not None:
            out["micro_f1"] = micro_f1(y, prob, f1_threshold)
        return out
    labels = y.long()
    both = bool((labels == 1).any()) and bool((labels == 0).any())
    out = {
        "auroc": float(binary_auroc(prob, labels)) if both else math.nan,
        "ap": float(binary_average_precision(prob, labels)) if bool((labels == 1).any()) else math.nan,
    }
    for k in hits_k:
        out[f"hits@{k}"] = hits_at_k(logits[labels == 1], logits[labels == 0], k) if both else math.nan
    return out


class DownstreamTask(L.LightningModule):
    """Loss, metrics and optimiser around a downstream ``net``; see the module docstring."""

    def __init__(self, net: nn.Module, kind: Kind, lr: float = 1e-3, weight_decay: float = 0.0,
                 encoder_lr: Optional[float] = None, hits_k: tuple[int, ...] = (), patience: int = 0,
                 f1_threshold: Optional[float] = None, monitor: Optional[str] = None):
        super().__init__()
        if kind not in MONITOR:
            raise ValueError(f"DownstreamTask: kind must be one of {sorted(MONITOR)}, got {kind!r}")
        if f1_threshold is not None and kind != "multilabel":
            raise ValueError(f"DownstreamTask: f1_threshold is for multilabel tasks, not {kind!r}")
        self.net = net
        self.kind = kind
        self.lr, self.weight_decay, self.encoder_lr = lr, weight_decay, encoder_lr
        self.hits_k = tuple(hits_k)
        self.f1_threshold = f1_threshold
        self.patience = patience  # validation epochs without improvement before stopping; 0 = never
        self.monitor = monitor or MONITOR[kind]
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_metrics: dict[str, float] = {}
        self._best_state: Optional[dict[str, torch.Tensor]] = None
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.net(**inputs)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "multiclass":
            return F.cross_entropy(logits.float(), y)
        return F.binary_cross_entropy_with_logits(logits.float(), y.float())

    def _forward_batch(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "y"}
        return self.net(**inputs), batch["y"]

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, y = self._forward_batch(batch)
        loss = self.loss(logits, y)
        self.log("train/loss", loss, batch_size=int(y.shape[0]))
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        logits, y = self._forward_batch(batch)
        self._outputs["val"].append((logits.detach().cpu(), y.detach().cpu()))

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        logits, y = self._forward_batch(batch)
        self._outputs["test"].append((logits.detach().cpu(), y.detach().cpu()))

    def _stage_metrics(self, stage: str) -> dict[str, float]:
        outs = self._outputs[stage]
        self._outputs[stage] = []
        logits = torch.cat([o[0] for o in outs])
        y = torch.cat([o[1] for o in outs])
        metrics = prediction_metrics(self.kind, logits, y, self.hits_k, self.f1_threshold)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, batch_size=int(y.shape[0]))
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._stage_metrics("val")
        score = metrics[self.monitor]
        if not math.isnan(score) and score > self.best_score:
            self.best_score, self.best_epoch, self.best_metrics = score, self.current_epoch, metrics
            self._best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.net.state_dict().items()})
        elif self.patience and self.current_epoch - self.best_epoch >= self.patience:
            self.trainer.should_stop = True

    def on_test_epoch_end(self) -> None:
        self._stage_metrics("test")

    def restore_best(self) -> None:
        """Load the weights of the best validation epoch (no-op if validation never improved)."""
        if self._best_state is not None:
            self.net.load_state_dict(self._best_state)

    def configure_optimizers(self):
        encoder = getattr(self.net, "encoder", None)
        enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
        head = [p for p in self.net.parameters() if p.requires_grad and id(p) not in enc_ids]
        groups = [{"params": head, "lr": self.lr}]
        enc = [p for p in self.net.parameters() if p.requires_grad and id(p) in enc_ids]
        if enc:
            groups.append({"params": enc, "lr": self.encoder_lr if self.encoder_lr is not None else self.lr})
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)


def fit_and_evaluate(task: DownstreamTask, data: SplitsDataModule, max_epochs: int, accelerator: str = "cpu",
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Train ``task`` on ``data`` (best validation epoch kept), then test it on each of
    ``data.test_splits``.

    The task is returned in eval mode with the weights of its best validation epoch.

    Returns ``{"valid": metrics at the best epoch, <test split>: metrics, ...}``, plus
    ``{"fit": {"best_epoch": e}}``.
    """
    L.seed_everything(seed, workers=False, verbose=False)
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [q.level for q in quiet]
    for q in quiet:  # the per-fit banner (GPU available, TPU, tips), repeated for every head, is noise
        q.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # in-memory tensors: worker processes would only add start-up time
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
            trainer = L.Trainer(
                max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(task, datamodule=data)
            task.restore_best()
            results: dict[str, dict[str, float]] = {"valid": dict(task.best_metrics), "fit": {"best_epoch": task.best_epoch}}
            for name in data.test_splits:
                out = trainer.test(task, data.loader(name), verbose=False)[0]
                results[name] = {k.split("/", 1)[1]: float(v) for k, v in out.items()}
            task.eval()  # hand back the best weights ready for inference (no dropout)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return results


# --------------------------------------------------------------------------------- heads


@dataclass
class TrainSettings:
    hidden: int = 512  # width of MLP heads and the pair decoder
    gnn_hidden: int = 128  # GraphSAGE width (each step propagates over the whole graph)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 40
    patience: int = 8  # stop after this many epochs without a better validation score (0: never)
    batch_size: int = 256  # rows (or pairs) per step; 0 = the whole split in one batch
    gnn_layers: int = 2
    accelerator: str = "cpu"  # for the heads: cpu | gpu | auto


SEQUENCE_HEADS = ("linear", "mlp")  # plus "finetune" (finetune_net)
NODE_HEADS = ("linear", "mlp", "sage")
PAIR_HEADS = ("pair_mlp", "sage_pair")


def feature_head(head: str, d: int, n_out: int, hp: TrainSettings) -> nn.Module:
    """``linear`` or ``mlp`` on (B, d) rows -> (B, n_out)."""
    from lcplm.models.heads import LinearProbe, MLPHead

    if head == "linear":
        return LinearProbe(d, n_out)
    if head == "mlp":
        return MLPHead(d, n_out, hidden=hp.hidden, dropout=hp.dropout)
    raise ValueError(f"unknown head {head!r} for this task (linear, mlp)")


def head_net(head: str, data: SplitsDataModule, hp: TrainSettings) -> nn.Module:
    """The network of a named head for ``data``'s kind of task, initialised from the global seed
    (the caller seeds it: modules are built in a fixed order)."""
    from lcplm.models.heads import FeatureNet, GraphNodeNet, GraphPairNet, GraphSAGE, LinearProbe, PairDecoder

    if isinstance(data, SequenceDataModule):
        if data.features is None:
            raise ValueError("a sequence head on embeddings needs a DataModule built with features")
        return FeatureNet(feature_head(head, data.features.shape[1], data.n_outputs, hp))
    d = data.features.shape[1]
    if isinstance(data, PairDataModule):
        if head == "pair_mlp":
            return GraphPairNet(data.features, PairDecoder(d, hidden=hp.hidden, dropout=hp.dropout, n_out=data.n_outputs))
        if head == "sage_pair":
            gnn = GraphSAGE(d, hp.gnn_hidden, hp.gnn_layers, hp.dropout)
            decoder = PairDecoder(hp.gnn_hidden, hidden=hp.hidden, dropout=hp.dropout, n_out=data.n_outputs)
            return GraphPairNet(data.features, decoder, gnn, data.train_edges)
        raise ValueError(f"unknown head {head!r} for a pair task {PAIR_HEADS}")
    if isinstance(data, NodeDataModule):
        if head == "sage":
            return GraphNodeNet(data.features, LinearProbe(hp.gnn_hidden, data.n_outputs),
                                GraphSAGE(d, hp.gnn_hidden, hp.gnn_layers, hp.dropout), data.edge_index)
        return GraphNodeNet(data.features, feature_head(head, d, data.n_outputs, hp))
    raise TypeError(f"no heads for {type(data).__name__}")


def finetune_net(encoder: nn.Module, n_out: int, hp: TrainSettings) -> nn.Module:
    """``finetune``: the encoder, residue-mean pooling and an MLP head, trained end to end."""
    from lcplm.data import tokenizer as tok
    from lcplm.models.heads import MLPHead, SequenceNet

    d = int(encoder.encode(torch.tensor([[tok.CLS, 5, tok.EOS]]), lengths=torch.tensor([3])).shape[-1])
    return SequenceNet(encoder, MLPHead(d, n_out, hidden=hp.hidden, dropout=hp.dropout))
