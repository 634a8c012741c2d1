"""``lcplm eval-downstream`` end to end on fixture data sets in their public formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from downstream_fixtures import function_fixture, ppi_fixture, scop_records, write_astral, write_ogbl_ppa, write_ogbn_proteins, write_tape_folder
from lcplm.__main__ import main as lcplm_main
from lcplm.config import load_config
from lcplm.eval.downstream import DownstreamConfig, evaluate

REPO = Path(__file__).resolve().parents[2]

FAST_TRAIN = ["train.max_epochs=3", "train.patience=0", "train.hidden=16", "train.batch_size=64"]


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "eval.yaml"
    p.write_text(body)
    return p


def _fixture_config(tmp_path: Path) -> Path:
    astral = write_astral(tmp_path / "astral.fa", scop_records(classes="ab", folds=3, sfs=3, fams=2, domains=3))
    labels, seqs = function_fixture(tmp_path)
    pairs, dictionary = ppi_fixture(tmp_path)
    return _config(tmp_path, f"""
name: fixture
out_dir: {tmp_path / 'runs'}
baselines: [composition]
seeds: [0, 1]
homology:
  - name: homology
    path: {astral}
    fold_test_frac: 0.15
    superfamily_test_frac: 0.15
    max_sequences: 50
function:
  - name: ec
    labels: {labels}
    sequences: {seqs}
ppi:
  - name: ppi
    pairs: {pairs}
    sequences: {dictionary}
  - name: ppi_by_protein
    pairs: {pairs}
    sequences: {dictionary}
    split_by: protein
  - name: absent
    pairs: {tmp_path / 'nope.tsv'}
    sequences: {dictionary}
""")


def test_eval_downstream_end_to_end_with_a_baseline(tmp_path, capsys):
    cfg = _fixture_config(tmp_path)
    assert lcplm_main(["eval-downstream", str(cfg), *FAST_TRAIN]) == 0
    out, err = capsys.readouterr()
    assert "skip absent: pair table" in err and "nope.tsv not found" in err
    run = tmp_path / "runs" / "fixture"
    data = json.loads((run / "results.json").read_text())
    tasks = {(r["task"], r["split"], r["head"], r["metric"]) for r in data["rows"]}
    for split in ("test_fold_holdout", "test_superfamily_holdout", "test_family_holdout"):
        assert ("homology", split, "mlp", "accuracy") in tasks
    assert {("ec", "test", "linear", m) for m in ("rocauc", "aupr", "fmax")} <= tasks
    assert {("ppi_by_protein", "test", h, m) for h in ("pair_mlp", "sage_pair") for m in ("auroc", "ap")} <= tasks
    assert {r["seed"] for r in data["rows"]} == {0, 1}
    assert data["meta"]["skipped"] and data["meta"]["tasks"]["ppi"].startswith("40 proteins")
    assert data["meta"]["tasks"]["homology"].startswith("a random subset (seed 0) of 50 domains")
    assert "| homology | test_fold_holdout | linear | accuracy |" in out  # the table is printed
    assert (run / "results.png").stat().st_size > 0 and "composition" in (run / "results.md").read_text()


def test_public_formats_tape_ogbn_proteins_ogbl_ppa(tmp_path):
    tape = write_tape_folder(tmp_path / "remote_homology")
    write_ogbn_proteins(tmp_path / "ogb" / "ogbn_proteins")
    ppa = write_ogbl_ppa(tmp_path / "ogbl" / "ogbl_ppa")
    cfg = load_config(_config(tmp_path, f"""
name: public
out_dir: {tmp_path / 'runs'}
baselines: [composition]
seeds: [0]
homology:
  - name: tape
    format: tape
    path: {tape}
function:
  - name: proteins
    format: ogbn_proteins
    root: {tmp_path / 'ogb' / 'ogbn_proteins'}
    sequences: {tmp_path / 'ogb' / 'protein.sequences.fa.gz'}
    heads: [linear, sage]
ppi:
  - name: ppa
    format: ogbl_ppa
    root: {tmp_path / 'ogbl' / 'ogbl_ppa'}
    sequences: {ppa['fasta']}
    hits_k: [10]
    heads: [pair_mlp]
"""), FAST_TRAIN, schema=DownstreamConfig)
    result = evaluate(cfg, log=lambda s: None)
    got = {(r["task"], r["split"], r["head"], r["metric"]) for r in result["rows"]}
    assert ("tape", "test_fold_holdout", "linear", "accuracy") in got
    assert ("proteins", "test", "sage", "rocauc") in got
    assert ("ppa", "test", "pair_mlp", "hits@10") in got


def test_missing_checkpoint_says_run_make_pretrain(tmp_path, capsys):
    cfg = _fixture_config(tmp_path)
    rc = lcplm_main(["eval-downstream", str(cfg), f"checkpoints=[{tmp_path / 'runs/tiny/checkpoints/last.ckpt'}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not found: run `make pretrain` first" in err[0]


@pytest.mark.parametrize("override, message", [
    ("train.epochs=3", "epochs"),
    ("seeds=[]", "seeds is empty"),
    ("baselines=[blosum]", "unknown baseline 'blosum'"),
    ("baselines=[random_init]", "random_init needs a checkpoint"),
    ("homology.0.path=x.fa", "cannot apply overrides homology.0.path=x.fa"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    cfg = _fixture_config(tmp_path)
    assert lcplm_main(["eval-downstream", str(cfg), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_all_tasks_skipped_is_an_error(tmp_path, capsys):
    cfg = _config(tmp_path, f"baselines: [composition]\nout_dir: {tmp_path}\nhomology:\n  - path: {tmp_path / 'no.fa'}\n")
    assert lcplm_main(["eval-downstream", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("skip remote_homology: ASTRAL FASTA") and "no task has its data available" in err[-1]


def test_full_config_keeps_every_task_and_lifts_the_cpu_limits():
    cfg = load_config(REPO / "experiments" / "downstream" / "full.yaml", [], schema=DownstreamConfig)
    assert cfg.embed.max_length == 2048 and cfg.homology[0].max_sequences is None
    assert [t.format for t in cfg.homology] == ["astral", "tape"]
    assert [t.format for t in cfg.function] == ["table", "ogbn_proteins"]
    assert {t.format for t in cfg.ppi} == {"pairs", "string", "ogbl_ppa"}
    assert [t.split for t in cfg.interaction] == ["random", "bfs", "dfs"]


def test_default_config_loads_and_points_at_make_pretrain():
    cfg = load_config(REPO / "experiments" / "downstream" / "default.yaml", [], schema=DownstreamConfig)
    assert cfg.checkpoints == ["runs/tiny/checkpoints/last.ckpt"]
    assert cfg.baselines == ["composition", "random_init"] and len(cfg.seeds) >= 3
    assert [t.name for t in cfg.ppi] == ["yeast_guo", "yeast_guo_by_protein"]


def test_baseline_features_see_the_same_crop_as_the_encoders():
    from lcplm.eval.baselines import composition_features
    from lcplm.eval.model_sources import build_sources, features_for

    cfg = load_config(None, ["baselines=[composition]", "embed.max_length=3", "embed.long_policy=crop"],
                      schema=DownstreamConfig)
    (source,) = build_sources(cfg)
    x = features_for(source, ["a", "b"], ["ACDWWWW", "MK"], cfg.embed)
    assert torch.equal(x, composition_features(["ACD", "MK"]))


@pytest.mark.parametrize("heads, extra, message", [
    ("[linear, svm]", "", "unknown head 'svm'"),
    ("[]", "", "no heads"),
    ("[finetune]", "", "lists head 'finetune' but finetune.enabled is false"),
    ("[sage]", "", "unknown head 'sage'"),  # a GNN head needs a graph: ogbn_proteins only
])
def test_head_names_are_checked_before_any_work(tmp_path, capsys, heads, extra, message):
    cfg = _config(tmp_path, f"baselines: [composition]\nout_dir: {tmp_path}\nfunction:\n  - heads: {heads}\n{extra}")
    assert lcplm_main(["eval-downstream", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
