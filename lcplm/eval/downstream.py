"""``eval-downstream``: embed each data set once per model, train heads over seeds, report.

The config (:class:`DownstreamConfig`, loaded by ``lcplm.config.load_config(path, overrides,
schema=DownstreamConfig)``) lists models (checkpoints as ``PATH`` or ``LABEL=PATH``, plus
baselines) and lists of tasks (each entry's schema and reader: :mod:`lcplm.data.downstream_tasks`):

* ``homology``: fold classification, ``format`` ``astral`` (hold-outs built per seed) or ``tape``
  (TAPE's five split files); accuracy on every hold-out;
* ``function``: multi-label, ``format`` ``table`` (``id<TAB>labels`` + sequences, seeded random
  split) or ``ogbn_proteins`` (OGB's species split, optional GraphSAGE head over the PPI graph);
  OGB's mean per-task ROC-AUC, micro AUPR, Fmax;
* ``ppi``: link prediction, ``format`` ``pairs``, ``string`` (links + sampled negatives) or
  ``ogbl_ppa`` (Hits@K against OGB's shared negatives); split by pair or by protein; ROC-AUC,
  AP, Hits@K;
* ``interaction``: STRING interaction types (7 modes, multi-label) of interacting pairs, GNN-PPI's
  random / BFS / DFS splits; micro-F1 at 0.5 (the monitored metric), plus ROC-AUC, AUPR, Fmax;
* ``fitness``: zero-shot variant effects on ProteinGym DMS tables with the masked LM alone
  (:mod:`lcplm.eval.variants`); no heads and no seeds (one row per metric, under the first
  seed), and nothing for featurisers.

A task whose files are absent is skipped with one line naming the file and how to get it.
For every model (:mod:`lcplm.eval.model_sources`) a task's proteins are embedded once (cached on
disk); then for every seed the task's DataModule (:mod:`lcplm.data.datamodules.downstream`:
split, standardised features, batches) is built, and for every head a network
(:func:`lcplm.tasks.downstream.head_net`) is trained by :class:`~lcplm.tasks.downstream.DownstreamTask`
(:func:`~lcplm.tasks.downstream.fit_and_evaluate`); each test split's metrics become result rows.
Results: ``<out_dir>/<name>/results.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lcplm.data.datamodules.downstream import NodeDataModule, PairDataModule, SequenceDataModule
from lcplm.data.downstream_tasks import (
    FitnessTask, FunctionTask, HomologyTask, InteractionTask, NodeTask, PairTask, PPITask, SequenceTask, Skip,
    ZeroShotTask, fitness_task, function_task, homology_task, interaction_task, ppi_task,
)
from lcplm.errors import UserError
from lcplm.eval.model_sources import EmbedSettings, ModelSource, build_sources, features_for
from lcplm.tasks.downstream import (
    NODE_HEADS, PAIR_HEADS, SEQUENCE_HEADS, DownstreamTask, TrainSettings, finetune_net, fit_and_evaluate, head_net,
)

# --------------------------------------------------------------------------------- config


@dataclass
class FinetuneSettings:
    enabled: bool = False  # add a 'finetune' head (encoder + MLP trained end to end) to sequence tasks
    lr: float = 1e-4  # encoder learning rate (the head uses train.lr)
    max_epochs: int = 3
    max_tokens: int = 4096  # token budget per fine-tuning batch
    max_train: Optional[int] = None  # fine-tune on at most this many training sequences (seeded subset)


@dataclass
class DownstreamConfig:
    """``lcplm eval-downstream``: models x tasks x seeds x heads."""

    name: str = "default"  # results go to <out_dir>/<name>/
    out_dir: str = "runs/downstream"
    checkpoints: list[str] = field(default_factory=list)  # PATH or LABEL=PATH: run .ckpt, model directory, LC-PLM / ESM-2 dir
    baselines: list[str] = field(default_factory=lambda: ["composition", "random_init"])  # composition | random_init
    random_init_seed: int = 0  # weights of the random_init baseline
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # split (where seeded) and head initialisation
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    homology: list[HomologyTask] = field(default_factory=list)
    function: list[FunctionTask] = field(default_factory=list)
    ppi: list[PPITask] = field(default_factory=list)
    interaction: list[InteractionTask] = field(default_factory=list)
    fitness: list[FitnessTask] = field(default_factory=list)


# --------------------------------------------------------------------------------- tasks

BUILDERS: dict[str, Callable[[Any], Any]] = {
    "homology": homology_task, "function": function_task, "ppi": ppi_task, "interaction": interaction_task,
    "fitness": fitness_task,
}
HEADS = {
    "homology": {*SEQUENCE_HEADS, "finetune"},
    "function": {*SEQUENCE_HEADS, "finetune", *NODE_HEADS},  # sage: ogbn_proteins only
    "ppi": set(PAIR_HEADS),
    "interaction": set(PAIR_HEADS),
}


def _check_heads(section: str, t, cfg: DownstreamConfig) -> None:
    """Head names are checked before any work, so a typo does not surface an hour in."""
    allowed = set(HEADS[section])
    if section == "function":
        allowed -= {"finetune"} if t.format == "ogbn_proteins" else {"sage"}
    bad = [h for h in t.heads if h not in allowed]
    if bad:
        raise UserError(f"{section} task {t.name!r}: unknown head {bad[0]!r} (choose from {sorted(allowed)})")
    if not t.heads:
        raise UserError(f"{section} task {t.name!r}: no heads")
    if "finetune" in t.heads and not cfg.finetune.enabled:
        raise UserError(f"{section} task {t.name!r} lists head 'finetune' but finetune.enabled is false")


def load_tasks(cfg: DownstreamConfig, log: Callable[[str], None] = print) -> tuple[list, list[str]]:
    """The enabled tasks whose data is present, and one line per skipped task."""
    from lcplm.eval.variants import METHODS

    sections = {"homology": cfg.homology, "function": cfg.function, "ppi": cfg.ppi, "interaction": cfg.interaction,
                "fitness": cfg.fitness}
    entries = [(section, t) for section, ts in sections.items() for t in ts if t.enabled]
    for section, t in entries:
        if section == "fitness":
            if t.method not in METHODS:
                raise UserError(f"fitness task {t.name!r}: unknown method {t.method!r} (choose from {list(METHODS)})")
        else:
            _check_heads(section, t, cfg)
    tasks, skipped = [], []
    for section, t in entries:
        try:
            task = BUILDERS[section](t)
        except Skip as e:
            line = f"{t.name}: {e}"
            log(f"skip {line}")
            skipped.append(line)
            continue
        log(f"task {task.name}: {task.info}")
        tasks.append(task)
    return tasks, skipped


# --------------------------------------------------------------------------------- runs


def datamodule(task: SequenceTask | PairTask | NodeTask, x: torch.Tensor, seed: int, batch_size: int):
    """The task's DataModule for one seed over its (N, D) features."""
    if isinstance(task, SequenceTask):
        return SequenceDataModule(task, seed, features=x, batch_size=batch_size)
    if isinstance(task, PairTask):
        return PairDataModule(task, seed, x, batch_size)
    return NodeDataModule(task, seed, x, batch_size)


def run_heads(task: SequenceTask | PairTask | NodeTask, source: ModelSource, x: torch.Tensor, seed: int,
              cfg: DownstreamConfig) -> list[dict[str, Any]]:
    """Every head of ``task`` trained and tested for one seed: result rows."""
    tc = cfg.train
    data = datamodule(task, x, seed, tc.batch_size)
    rows = []
    for head in task.heads:
        if head == "finetune":
            if source.factory is None:  # a featuriser (composition) has no encoder to fine-tune
                continue
            res = _finetune(task, source, seed, cfg)
        else:
            torch.manual_seed(seed)
            net = head_net(head, data, tc)
            model = DownstreamTask(net, data.kind, lr=tc.lr, weight_decay=tc.weight_decay, patience=tc.patience,
                                   hits_k=getattr(task, "hits_k", ()), f1_threshold=getattr(task, "f1_threshold", None),
                                   monitor=getattr(task, "monitor", None))
            res = fit_and_evaluate(model, data, tc.max_epochs, tc.accelerator, seed)
        rows += _rows(res, source.label, task.name, head, seed, data.test_splits)
    return rows


def _finetune(task: SequenceTask, source: ModelSource, seed: int, cfg: DownstreamConfig) -> dict[str, dict[str, float]]:
    """Encoder + residue-mean + MLP trained end to end on token batches."""
    ft, tc = cfg.finetune, cfg.train
    encoder = source.factory().train()  # loaded for inference (eval mode); Lightning keeps module modes
    torch.manual_seed(seed)
    net = finetune_net(encoder, task.n_outputs, tc)
    model = DownstreamTask(net, task.kind, lr=tc.lr, weight_decay=tc.weight_decay, encoder_lr=ft.lr, patience=tc.patience)
    data = SequenceDataModule(task, seed, max_tokens=ft.max_tokens, max_residues=cfg.embed.max_length, max_train=ft.max_train)
    return fit_and_evaluate(model, data, ft.max_epochs, tc.accelerator, seed)


def run_zero_shot_task(task: ZeroShotTask, source: ModelSource, cfg: DownstreamConfig) -> list[dict[str, Any]]:
    from lcplm.eval.variants import score_assay

    e = cfg.embed
    res = score_assay(source.factory(), task.assay, task.method, window=task.window, max_tokens=e.max_tokens,
                      device=e.device, half=e.half, progress=e.progress)
    return [{"model": source.label, "task": task.name, "split": "all", "head": task.method, "metric": m,
             "seed": cfg.seeds[0], "value": v} for m, v in res.metrics.items()]


def _rows(res: dict[str, dict[str, float]], model: str, task: str, head: str, seed: int,
          tests: list[str]) -> list[dict[str, Any]]:
    return [{"model": model, "task": task, "split": s, "head": head, "metric": m, "seed": seed, "value": v}
            for s in tests for m, v in res[s].items()]


# --------------------------------------------------------------------------------- driver


def evaluate(cfg: DownstreamConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every model on every available task over the seeds; write and return the report."""
    from lcplm.eval.report import markdown_table, summarize, write_report

    t_start, cpu_start = time.time(), time.process_time()
    if not cfg.seeds:
        raise UserError("seeds is empty: give at least one seed")
    sources = build_sources(cfg)
    tasks, skipped = load_tasks(cfg, log)
    if not tasks:
        raise UserError("no task has its data available (see the 'skip' lines above)")
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for source in sources:
        log(f"model {source.label}: {source.description}")
        if source.factory is None and any("finetune" in getattr(t, "heads", ()) for t in tasks):
            log(f"  {source.label} has no encoder to fine-tune: its 'finetune' heads are skipped")
        for task in tasks:
            t0 = time.time()
            if isinstance(task, ZeroShotTask):
                if source.factory is None:
                    log(f"  {task.name}: {source.label} has no masked LM to score variants with: skipped")
                    continue
                rows += run_zero_shot_task(task, source, cfg)
                timings[f"{source.label}/{task.name}"] = round(time.time() - t0, 1)
                log(f"  {task.name}: {len(task.assay)} variants scored in {time.time() - t0:.1f} s")
                continue
            x = features_for(source, task.names, task.sequences, cfg.embed, log)
            t_embed = time.time() - t0
            for seed in cfg.seeds:
                rows += run_heads(task, source, x, seed, cfg)
            timings[f"{source.label}/{task.name}"] = round(time.time() - t0, 1)
            log(f"  {task.name}: features {tuple(x.shape)} in {t_embed:.1f} s, heads x {len(cfg.seeds)} seeds "
                f"in {time.time() - t0 - t_embed:.1f} s")
    out_dir = Path(cfg.out_dir) / cfg.name
    meta = {
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "models": {s.label: s.description for s in sources},
        "tasks": {t.name: t.info for t in tasks},
        "skipped": skipped,
        "seconds": round(time.time() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # all threads of this process
        "timings": timings,
        "torch": torch.__version__,
    }
    paths = write_report(out_dir, rows, meta)
    table = markdown_table(summarize(rows))
    return {"rows": rows, "table": table, "paths": paths, "skipped": skipped, "seconds": meta["seconds"],
            "cpu_seconds": meta["cpu_seconds"]}

