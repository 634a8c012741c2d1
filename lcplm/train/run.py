"""Training: build data, model, task and Trainer from a config; own the run directory
(:func:`train`; the command is ``lcplm pretrain``, :mod:`lcplm.cli.pretrain`).

Run directory ``<run.out_dir>/<run.name>/`` (locking, resume rules, history: :mod:`lcplm.train.run_dir`):
  config.yaml            the resolved, validated config of the latest segment and the history of all
  checkpoints/last.ckpt  written atomically; ``--resume`` continues from it
  tb/                    TensorBoard events (loss, perplexity, masked accuracy, lr)
  results.json           final held-out masked-token loss, unigram baseline, timings (validation
                         numbers are null when the run has no validation data)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lcplm.config import PretrainConfig
from lcplm.errors import UserError
from lcplm.files import atomic_write_text

VAL_KEYS = {"val_loss": "val/loss", "val_perplexity": "val/perplexity", "val_masked_acc": "val/masked_acc",
            "val_mask_token_loss": "val/mask_token_loss"}


def run_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def _precision(cfg: PretrainConfig) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    return "bf16-mixed" if on_gpu else "32-true"


def _strategy(cfg: PretrainConfig):
    """Strategy and plugins for the Trainer (presets in experiments/trainer/)."""
    from lcplm.train.strategies import build_strategy

    return build_strategy(cfg.trainer, cfg.model)


def build_trainer(cfg: PretrainConfig, out: Path, extra_callbacks: list | None = None):
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar

    from lcplm.train.callbacks import build_callbacks

    t = cfg.trainer
    strategy, plugins = _strategy(cfg)
    callbacks = build_callbacks(cfg, out) + [LearningRateMonitor(logging_interval="step")]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks += extra_callbacks or []
    try:
        return _trainer(cfg, out, strategy, plugins, callbacks)
    except MisconfigurationException as e:  # e.g. accelerator=gpu where no GPU is visible
        raise UserError(f"trainer: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None


def _trainer(cfg: PretrainConfig, out: Path, strategy: Any, plugins: Any, callbacks: list):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg.trainer
    return L.Trainer(
        default_root_dir=str(out),
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        max_time={"minutes": t.max_time_minutes} if t.max_time_minutes else None,
        # Lightning counts training batches; the config counts optimizer steps
        val_check_interval=t.val_check_interval * t.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        plugins=plugins,
        precision=_precision(cfg),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else None,
        gradient_clip_algorithm="norm",
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # our batch samplers shard by rank themselves
        logger=TensorBoardLogger(save_dir=str(out), name="tb", version="", default_hp_metric=False),
        callbacks=callbacks,
    )


def unigram_baseline(datamodule, max_batches: int = 2000) -> dict[str, float]:
    """Cross entropy of amino-acid frequencies alone on the validation targets.

    Frequencies come from the training targets (add-one smoothed over residue ids). Returned
    for all targets and for the targets shown as ``<mask>`` (the 80% whose identity the model
    must infer from context): a model that uses context ends below both. None without
    validation targets.
    """
    from lcplm.data.tokenizer import MASK, PADDED_VOCAB_SIZE, RESIDUE_IDS

    counts = torch.zeros(PADDED_VOCAB_SIZE, dtype=torch.float64)
    for i, batch in enumerate(datamodule.train_dataloader()):
        y = batch["labels"][batch["labels"] >= 0]
        counts += torch.bincount(y, minlength=PADDED_VOCAB_SIZE).double()
        if i + 1 >= max_batches:
            break
    probs = torch.zeros_like(counts)
    probs[RESIDUE_IDS] = counts[RESIDUE_IDS] + 1.0
    probs /= probs.sum()
    total = total_mask = 0.0
    n = n_mask = 0
    for batch in datamodule.val_dataloader():
        target = batch["labels"] >= 0
        nll = -torch.log(probs[batch["labels"][target]])
        shown_mask = batch["input_ids"][target] == MASK
        total += float(nll.sum())
        n += int(nll.numel())
        total_mask += float(nll[shown_mask].sum())
        n_mask += int(shown_mask.sum())
    return {"unigram_loss": total / n if n else None, "unigram_mask_token_loss": total_mask / n_mask if n_mask else None}


def _check_resume(rd: Any, cfg: PretrainConfig, model: torch.nn.Module) -> None:
    """The checkpoint ``--resume`` continues from: readable, a training checkpoint, of this
    model and data (frozen settings unchanged), weights that fit; notes what changes."""
    from lcplm.train.checkpoint import check_weights_fit, model_state_dict, read_training_checkpoint, stored_config
    from lcplm.train.run_dir import resume_changes

    path = rd.resume_from
    ckpt = read_training_checkpoint(path)
    rd.changes = resume_changes(cfg, stored_config(ckpt, path), path)
    check_weights_fit(model, model_state_dict(ckpt), path)
    step = ckpt.get("global_step")
    rd.start_step = int(step) if isinstance(step, int) else 0


def _saved_step(path: Path) -> int | None:
    from lcplm.train.checkpoint import read_checkpoint

    if not path.is_file():
        return None
    try:
        return read_checkpoint(path, mmap=True).get("global_step")
    except UserError:
        return None


def train(cfg: PretrainConfig, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns (and writes to results.json) the final numbers."""
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_info

    from lcplm.config import to_dict
    from lcplm.data.datamodules import build_datamodule
    from lcplm.models import build_model, parameter_line
    from lcplm.tasks import task_class
    from lcplm.train.checkpoint import load_weights
    from lcplm.train.run_dir import launch_rank_from_env, open_run_dir

    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    out = run_dir(cfg)
    # The run directory is locked and checked before the Trainer exists (so a refusal is the only
    # line printed); the launcher's environment says which process will be global rank 0.
    with open_run_dir(cfg, out, is_writer=launch_rank_from_env() == 0) as rd:
        L.seed_everything(cfg.run.seed, workers=True, verbose=False)
        datamodule = build_datamodule(cfg.data, seed=cfg.run.seed)
        model = build_model(cfg.model)
        rank_zero_info(parameter_line(model, cfg.model))  # one line, to size equal-parameter comparisons
        if rd.resume_from is not None:
            _check_resume(rd, cfg, model)
        elif cfg.run.init_from:
            if not Path(cfg.run.init_from).exists():  # a run's .ckpt or a model directory (lcplm.models.io)
                raise UserError(
                    f"run.init_from: checkpoint {cfg.run.init_from} not found; run the training that writes it first "
                    "(stage 2's default, experiments/graph/yeast_tiny.yaml, starts from `make pretrain`)"
                )
            load_weights(model, cfg.run.init_from)
        task = task_class(cfg.task.name)(model, cfg.optim, config=to_dict(cfg))
        trainer = build_trainer(cfg, out, extra_callbacks)
        rd.set_writer(trainer.is_global_zero)
        rd.begin_segment(cfg)
        status = "failed"
        try:
            results = _fit_and_report(cfg, trainer, task, datamodule, model, out, rd.resume_from)
            status = "finished"
            return results
        except SystemExit as e:
            status = f"stopped by a signal (exit status {e.code}); resume with --resume"
            raise
        except BaseException as e:
            lines = str(e).strip().splitlines()
            status = f"failed: {type(e).__name__}: {lines[0][:300] if lines else ''}"
            raise
        finally:
            rd.end_segment(cfg, int(trainer.global_step), status)


def _fit_and_report(cfg, trainer, task, datamodule, model, out: Path, ckpt_path: Path | None) -> dict[str, Any]:
    t0 = time.time()
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    train_time = time.time() - t0
    if trainer.interrupted:
        raise UserError(f"training was interrupted; resume with --resume (run dir {out})")
    # A run stopped by max_steps or max_time between two periodic saves still leaves its final
    # weights in last.ckpt (stage 2 and eval-downstream read it); written atomically.
    last = out / "checkpoints" / "last.ckpt"
    if _saved_step(last) != trainer.global_step:
        trainer.save_checkpoint(str(last))
    validated = trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = validated[0] if validated else {}
    results: dict[str, Any] = {
        "run_dir": str(out),
        "global_step": int(trainer.global_step),
        "train_time_s": round(train_time, 1),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    # no validation data (data.val_fraction=0, no held-out genome, limit_val_batches=0): null, not NaN
    results.update({k: (float(metrics[m]) if m in metrics else None) for k, m in VAL_KEYS.items()})
    if trainer.is_global_zero:
        if results["val_loss"] is not None:
            results.update(unigram_baseline(datamodule))
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results
