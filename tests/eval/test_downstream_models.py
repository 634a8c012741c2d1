"""eval-downstream with lcplm encoders: checkpoints, the random-init baseline, fine-tuning."""

from __future__ import annotations

import json

import torch

from downstream_fixtures import function_fixture, ppi_fixture, scop_records, write_astral
from lcplm.config import load_config
from lcplm.eval.downstream import DownstreamConfig, evaluate
from lcplm.eval.model_sources import build_sources
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

from conftest import write_run_checkpoint


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    write_run_checkpoint(BiMambaLM(BiMambaConfig(d_model=16, n_layer=1, d_state=4)), path)
    return path


def test_two_checkpoints_random_init_and_finetuning_in_one_table(tmp_path, capsys):
    a = _checkpoint(tmp_path / "runs" / "alpha" / "checkpoints" / "last.ckpt", 0)
    b = _checkpoint(tmp_path / "other.ckpt", 1)
    astral = write_astral(tmp_path / "astral.fa", scop_records(classes="ab", folds=3, sfs=3, fams=2, domains=2))
    labels, seqs = function_fixture(tmp_path, n=40)
    pairs, dictionary = ppi_fixture(tmp_path, n_prot=20)
    (tmp_path / "eval.yaml").write_text(f"""
name: models
out_dir: {tmp_path / 'out'}
checkpoints: [{a}, beta={b}]
baselines: [random_init]
seeds: [0]
embed: {{max_length: 40, long_policy: crop, max_tokens: 512, cache_dir: {tmp_path / 'cache'}}}
train: {{max_epochs: 2, patience: 0, hidden: 8, gnn_hidden: 8, batch_size: 32}}
finetune: {{enabled: true, max_epochs: 1, max_tokens: 256, max_train: 12}}
homology:
  - path: {astral}
    fold_test_frac: 0.15
    superfamily_test_frac: 0.15
    heads: [linear, finetune]
function:
  - labels: {labels}
    sequences: {seqs}
    heads: [mlp]
ppi:
  - pairs: {pairs}
    sequences: {dictionary}
    heads: [sage_pair]
""")
    cfg = load_config(tmp_path / "eval.yaml", [], schema=DownstreamConfig)
    labels_seen = [s.label for s in build_sources(cfg)]
    assert labels_seen == ["alpha", "beta", "random_init"]  # run name from runs/<name>/checkpoints/
    log = []
    result = evaluate(cfg, log=log.append)
    rows = result["rows"]
    assert {r["model"] for r in rows} == {"alpha", "beta", "random_init"}
    heads = {(r["model"], r["task"], r["head"]) for r in rows}
    assert ("alpha", "remote_homology", "finetune") in heads and ("random_init", "remote_homology", "finetune") in heads
    assert ("beta", "ppi", "sage_pair") in heads and ("alpha", "ec", "mlp") in heads
    assert all(r["value"] == r["value"] for r in rows if r["metric"] in ("accuracy", "auroc", "ap"))  # no NaN
    assert any("cropped to 40 residues" in line for line in log)
    header = result["table"].splitlines()[0]
    assert header == "| task | split | head | metric | alpha | beta | random_init |"
    # a second run reads every embedding from the cache
    log2 = []
    evaluate(cfg, log=log2.append)
    assert not any("embedded" in line for line in log2)
    meta = json.loads((tmp_path / "out" / "models" / "results.json").read_text())["meta"]
    assert meta["cpu_seconds"] > 0 and set(meta["models"]) == {"alpha", "beta", "random_init"}
