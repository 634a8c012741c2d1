"""``lcplm pretrain``: build data, model, task and Trainer from a config; own the run directory.

Run directory ``<run.out_dir>/<run.name>/``:
  config.yaml            the resolved, validated config of the run
  checkpoints/last.ckpt  written atomically; ``--resume`` continues from it
  tb/                    TensorBoard events (loss, perplexity, masked accuracy, lr)
  results.json           final held-out masked-token loss, unigram baseline, timings
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from lcplm.config import PretrainConfig, load_config, split_file_and_overrides, to_dict, to_yaml
from lcplm.errors import UserError
from lcplm.files import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EXPERIMENT = REPO_ROOT / "experiments" / "pretrain" / "tiny.yaml"


def run_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def _prepare_run_dir(cfg: PretrainConfig) -> tuple[Path, Path | None]:
    """Create the run directory; return it and the checkpoint to resume from (or None)."""
    out = run_dir(cfg)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.run.resume:
        if not last.is_file():
            raise UserError(f"--resume: no checkpoint at {last} (start the run without --resume)")
        saved = out / "config.yaml"
        if saved.is_file():
            from omegaconf import OmegaConf

            old_model = OmegaConf.to_container(OmegaConf.load(saved)).get("model")
            if old_model != to_dict(cfg)["model"]:
                raise UserError(
                    f"--resume: the model section differs from the run's saved {saved}; "
                    "resume with the same experiment, or start a new run.name"
                )
        return out, last
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()) and not cfg.run.overwrite:
        raise UserError(
            f"run directory {out} already has checkpoints: pass --resume to continue it, "
            "run.name=<new name> for a new run, or run.overwrite=true to start it again"
        )
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    return out, None


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
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from lcplm.train.callbacks import build_callbacks

    t = cfg.trainer
    strategy, plugins = _strategy(cfg)
    callbacks = build_callbacks(cfg, out) + [LearningRateMonitor(logging_interval="step")]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks += extra_callbacks or []
    return L.Trainer(
        default_root_dir=str(out),
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        max_time={"minutes": t.max_time_minutes} if t.max_time_minutes else None,
        val_check_interval=t.val_check_interval,
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
    must infer from context): a model that uses context ends below both.
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
    nan = float("nan")
    return {"unigram_loss": total / n if n else nan, "unigram_mask_token_loss": total_mask / n_mask if n_mask else nan}


def train(cfg: PretrainConfig, extra_callbacks: list | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns (and writes to results.json) the final numbers."""
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_info

    from lcplm.data.datamodules import build_datamodule
    from lcplm.models import build_model, parameter_line
    from lcplm.tasks.mlm import MLMTask
    from lcplm.train.checkpoint import load_weights

    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    out, ckpt_path = _prepare_run_dir(cfg)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, seed=cfg.run.seed)
    model = build_model(cfg.model)
    rank_zero_info(parameter_line(model, cfg.model))  # one line, to size equal-parameter comparisons
    if cfg.run.init_from and ckpt_path is None:
        if not Path(cfg.run.init_from).is_file():
            raise UserError(
                f"run.init_from: checkpoint {cfg.run.init_from} not found; run the training that writes it first "
                "(stage 2's default, experiments/graph/yeast_tiny.yaml, starts from `make pretrain`)"
            )
        load_weights(model, cfg.run.init_from)
    task = MLMTask(model, cfg.optim, config=to_dict(cfg))
    trainer = build_trainer(cfg, out, extra_callbacks)
    if trainer.is_global_zero:
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    t0 = time.time()
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    train_time = time.time() - t0
    if trainer.interrupted:
        raise UserError(f"training was interrupted; resume with --resume (run dir {out})")
    # A run stopped by max_steps or max_time between two periodic saves still leaves its final
    # weights in last.ckpt (stage 2 and eval-downstream read it); written atomically.
    last = out / "checkpoints" / "last.ckpt"
    saved_step = None
    if last.is_file():
        saved_step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    if saved_step != trainer.global_step:
        trainer.save_checkpoint(str(last))
    metrics = trainer.validate(task, datamodule=datamodule, verbose=False)[0]
    results: dict[str, Any] = {
        "run_dir": str(out),
        "global_step": int(trainer.global_step),
        "train_time_s": round(train_time, 1),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "val_loss": float(metrics.get("val/loss", float("nan"))),
        "val_perplexity": float(metrics.get("val/perplexity", float("nan"))),
        "val_masked_acc": float(metrics.get("val/masked_acc", float("nan"))),
        "val_mask_token_loss": float(metrics.get("val/mask_token_loss", float("nan"))),
    }
    if trainer.is_global_zero:
        results.update(unigram_baseline(datamodule))
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm pretrain",
        description="Train a model from an experiment YAML (default: the tiny CPU stage-1 run).",
    )
    p.add_argument("args", nargs="*", metavar="[EXPERIMENT.yaml] [key=value ...]")
    p.add_argument("--resume", action="store_true", help="continue the run from its last.ckpt")
    ns = p.parse_args(argv)
    experiment, overrides = split_file_and_overrides(ns.args)
    if experiment is None:
        experiment = str(DEFAULT_EXPERIMENT)
    cfg = load_config(experiment, overrides, schema=PretrainConfig)
    if ns.resume:
        cfg.run.resume = True
    try:
        results = train(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    if "unigram_loss" in results:
        r = results
        gap = r["unigram_mask_token_loss"] - r["val_mask_token_loss"]
        print(
            f"held-out loss at <mask> positions {r['val_mask_token_loss']:.4f} nats vs unigram amino-acid "
            f"baseline {r['unigram_mask_token_loss']:.4f} nats: {'below' if gap > 0 else 'NOT below'} it by {abs(gap):.4f}"
        )
        print(
            f"held-out loss over all MLM targets {r['val_loss']:.4f} nats (perplexity {r['val_perplexity']:.2f}, "
            f"accuracy {r['val_masked_acc']:.3f}) vs unigram {r['unigram_loss']:.4f} nats"
        )
        print(f"run directory: {r['run_dir']}")
    return 0 if math.isfinite(results.get("val_loss", float("nan"))) else 1
