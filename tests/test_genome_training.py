"""Genome MLM end to end on CPU: training through `lcplm pretrain`, the scored pair source's
two steps, and the PHROG genome-context probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import shared_data
from lcplm.config import PretrainConfig, load_config
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO / "experiments" / "genome"

# a few-second version of the shipped tiny arms: small windows and model, high learning rate
FAST = [
    "model.num_layers=2",
    "model.hidden=32",
    "model.heads=2",
    "model.ffn=64",
    "data.max_tokens=512",
    "data.batch_size=2",
    "optim.lr=0.01",
    "optim.warmup_steps=5",
    "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=4",
    "trainer.max_time_minutes=null",
    "trainer.num_threads=1",
    "trainer.progress_bar=false",
]


class _Losses(Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


@pytest.mark.needs_shared_data
def test_genome_mlm_training_loss_falls(tmp_path):
    from lcplm.train.run import train

    shared_data("genomes", "pharokka_meta_phages.gbk")
    cfg = load_config(
        GENOME / "tiny_window.yaml",
        FAST + ["trainer.max_steps=60", f"run.out_dir={tmp_path}", "data.fasta=[]"],
        schema=PretrainConfig,
    )
    losses = _Losses()
    results = train(cfg, extra_callbacks=[losses])
    assert len(losses.losses) == 60
    first, last = losses.losses[0], sum(losses.losses[-10:]) / 10
    # from ~ln(40) = 3.7 nats at init towards the residue-frequency entropy (~2.9)
    assert first > 3.5 and last < first - 0.5, (first, last)
    assert results["val_loss"] < 3.3
    run = tmp_path / "genome_tiny_window"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "results.json").is_file()


@pytest.mark.needs_shared_data
def test_shipped_arm_runs_through_the_cli(tmp_path):
    from lcplm.__main__ import main

    shared_data("genomes", "pharokka_meta_phages.gbk")
    rc = main(["pretrain", str(GENOME / "tiny_single_protein.yaml"), *FAST, "trainer.max_steps=3", f"run.out_dir={tmp_path}"])
    assert rc == 0
    saved = load_config(tmp_path / "genome_tiny_single_protein" / "config.yaml")
    assert saved.data.pair_source.name == "single_protein" and saved.model.name == "sparse_transformer"


@pytest.mark.needs_shared_data
def test_scored_pair_source_two_steps_and_probe(tmp_path, capsys):
    """Step 1: pair scores from a model's attention; step 2: the scored source reads them.
    Then the probe compares pair sources on held-out genomes and writes JSON + a table."""
    from lcplm.cli.genome import main as genome_main
    from lcplm.data.datamodules.genome import GenomeDataModule

    shared_data("genomes", "pharokka_meta_phages.gbk")
    scores = tmp_path / "scores.tsv"
    small = ["model.num_layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "data.max_tokens=1024", "data.fasta=[]"]
    assert genome_main(["pair-scores", str(GENOME / "tiny_dense.yaml"), *small, "--out", str(scores)]) == 0
    lines = [line.split("\t") for line in scores.read_text().splitlines()[1:]]
    assert lines and all(len(x) == 3 and 0.0 <= float(x[2]) <= 1.0 for x in lines)

    cfg = load_config(GENOME / "tiny_scored.yaml", small + [f"data.pair_source.scores={scores}", "data.pair_source.top_k=1"])
    dm = GenomeDataModule(cfg.data)
    dm.setup()
    for w, a in zip(dm.train_set.windows, dm.train_set.allowed):
        n = len(w.proteins)
        assert torch.equal(a, a.T) and a.diagonal().all()
        if n > 1:
            assert (a.sum(1) >= 2).all()  # every protein keeps its top partner

    out = tmp_path / "probe"
    rc = genome_main(["probe", str(GENOME / "tiny_window.yaml"), *small, "--sources", "single_protein,window", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "genome_probe.json").read_text())
    rows = {r["source"]: r for r in report["rows"]}
    assert set(rows) == {"single_protein", "window"}
    for r in rows.values():
        assert r["model"] == "random-init" and r["n_proteins"] == 228  # labelled, non-"unknown" proteins
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["majority_accuracy"] <= 1.0
        assert set(r["folds"]) == {g for g in report["meta"]["genomes"]}
    table = (out / "genome_probe.md").read_text()
    assert "| random-init | window |" in table and table in capsys.readouterr().out


def test_probe_logistic_regression_learns_a_separable_problem():
    from lcplm.eval.genome_probe import fit_logistic, macro_f1, predict_logistic

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 5, generator=g) + 4 * torch.nn.functional.one_hot(y, 5).float()
    pred = predict_logistic(x, *fit_logistic(x, y, 3))
    assert (pred == y).float().mean() > 0.97
    assert macro_f1(y, y, 3) == 1.0 and macro_f1(y, (y + 1) % 3, 3) == 0.0


def test_probe_and_scores_refuse_non_genome_configs(tmp_path):
    from lcplm.cli.genome import main as genome_main

    exp = tmp_path / "e.yaml"
    exp.write_text("model:\n  name: bimamba\n")
    with pytest.raises(UserError, match="genome experiment"):
        genome_main(["probe", str(exp), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="genome experiment"):
        genome_main(["pair-scores", str(exp), "--out", str(tmp_path / "s.tsv")])
    with pytest.raises(UserError, match="unknown pair source"):
        genome_main(["probe", str(GENOME / "tiny_dense.yaml"), "--sources", "telepathy", "--out", str(tmp_path / "o")])
