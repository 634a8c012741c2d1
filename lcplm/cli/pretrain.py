"""``lcplm pretrain [EXPERIMENT] [key=value ...] [--resume]``: train a model (:func:`lcplm.train.run.train`).

EXPERIMENT is a YAML file or the name of a shipped one (``tiny`` = ``experiments/pretrain/tiny.yaml``,
``graph/yeast_tiny``; :func:`lcplm.config.find_experiment`); default ``pretrain/tiny``. Prints the
held-out loss beside the unigram amino-acid baseline; exit status 1 when the loss is not finite.
"""

from __future__ import annotations

import argparse
import errno
import math

from lcplm.config import PretrainConfig, find_experiment, load_config, split_file_and_overrides
from lcplm.errors import UserError

DEFAULT_EXPERIMENT = "pretrain/tiny.yaml"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm pretrain",
        description="Train a model from an experiment YAML (default: the tiny CPU stage-1 run, pretrain/tiny).",
    )
    p.add_argument("args", nargs="*", metavar="[EXPERIMENT] [key=value ...]")
    p.add_argument("--resume", action="store_true", help="continue the run from its last.ckpt")
    ns = p.parse_intermixed_args(argv)  # `--resume optim.lr=...` after the experiment, as the NaN advice says
    experiment, overrides = split_file_and_overrides(ns.args)
    cfg = load_config(find_experiment(experiment or DEFAULT_EXPERIMENT, "pretrain"), overrides, schema=PretrainConfig)
    if ns.resume:
        cfg.run.resume = True
    from lcplm.train.run import train

    try:
        results = train(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # a full disk outside lcplm.files (TensorBoard events, Lightning's hparams.yaml)
        if e.errno == errno.ENOSPC:
            raise UserError(f"no space left on the device writing {e.filename or 'the run directory'}") from None
        raise
    if results["val_loss"] is None:
        print(
            f"trained {results['global_step']} steps without validation data (data.val_fraction=0, no held-out "
            "genome, or trainer.limit_val_batches=0): no held-out loss to report"
        )
        print(f"run directory: {results['run_dir']}")
        return 0
    if results.get("unigram_loss") is not None:
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
    return 0 if math.isfinite(results["val_loss"]) else 1
