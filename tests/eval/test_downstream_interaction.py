"""The ``interaction`` task of ``eval-downstream``: STRING interaction types (multi-label over the
modes of ``protein.actions``) between interacting proteins, with GNN-PPI's random / BFS / DFS
splits and micro-F1. Fixtures are written here: no STRING actions file is shared."""

from __future__ import annotations

import math

import numpy as np
import pytest

from downstream_fixtures import actions_fixture
from lcplm.__main__ import main as lcplm_main
from lcplm.config import load_config
from lcplm.data.downstream_tasks import InteractionTask, interaction_task
from lcplm.data.edge_lists import MODES
from lcplm.eval.downstream import DownstreamConfig, evaluate

FAST_TRAIN = ["train.max_epochs=3", "train.patience=0", "train.hidden=16", "train.gnn_hidden=8", "train.batch_size=64"]


def test_interaction_types_with_random_bfs_and_dfs_splits(tmp_path):
    actions, seqs = actions_fixture(tmp_path)
    entries = "".join(f"""
  - name: types_{split}
    actions: {actions}
    sequences: {seqs}
    split: {split}
""" for split in ("random", "bfs", "dfs"))
    (tmp_path / "eval.yaml").write_text(f"""
name: types
out_dir: {tmp_path / 'runs'}
baselines: [composition]
seeds: [0, 1]
interaction:{entries}""")
    cfg = load_config(tmp_path / "eval.yaml", FAST_TRAIN, schema=DownstreamConfig)
    log: list[str] = []
    result = evaluate(cfg, log=log.append)
    rows = result["rows"]
    for split in ("random", "bfs", "dfs"):
        got = {(r["head"], r["metric"]) for r in rows if r["task"] == f"types_{split}" and r["split"] == "test"}
        assert {(h, m) for h in ("pair_mlp", "sage_pair") for m in ("micro_f1", "rocauc", "aupr", "fmax")} <= got
    f1 = [r["value"] for r in rows if r["metric"] == "micro_f1"]
    assert len(f1) == 3 * 2 * 2 and all(0.0 <= v <= 1.0 for v in f1)  # 3 splits x 2 heads x 2 seeds
    (info,) = [line for line in log if line.startswith("task types_bfs: ")]
    assert "150 interacting pairs (activation " in info and info.endswith(", bfs split")


def test_interaction_labels_follow_the_actions_file_and_the_modes_filter(tmp_path):
    actions, seqs = actions_fixture(tmp_path)
    task = interaction_task(InteractionTask(actions=str(actions), sequences=str(seqs)))
    assert task.kind == "multilabel" and task.n_outputs == len(MODES) and task.monitor == "micro_f1"
    a, b, y = task.split_fn(0)["train"]
    names = task.names
    lines = [line.split("\t") for line in actions.read_text().splitlines()[1:]]
    expected = {}
    for pa, pb, mode, *_ in lines:
        expected.setdefault(frozenset((pa, pb)), set()).add(mode)
    for i, j, row in zip(a.tolist(), b.tolist(), y):
        assert {MODES[m] for m in np.flatnonzero(row)} == expected[frozenset((names[i], names[j]))]
    two = interaction_task(InteractionTask(actions=str(actions), sequences=str(seqs), modes=["catalysis", "activation"]))
    assert two.n_outputs == 2
    _, _, y2 = two.split_fn(0)["train"]
    assert y2.shape[1] == 2 and y2[:, 0].sum() > 0 and y2[:, 1].sum() > 0  # STRING's order: activation, catalysis


def test_interaction_task_without_files_is_skipped_with_a_line(tmp_path, capsys):
    # the defaults name GNN-PPI's SHS27k files under the shared data, which does not hold them
    (tmp_path / "eval.yaml").write_text(f"baselines: [composition]\nout_dir: {tmp_path}\ninteraction:\n  - split: dfs\n")
    assert lcplm_main(["eval-downstream", str(tmp_path / "eval.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("skip shs27k: STRING actions file") and "not found; no STRING actions file is shared" in err[0]
    assert "no task has its data available" in err[-1]


@pytest.mark.parametrize("entry, message", [
    ("split: species", "split must be one of ['random', 'bfs', 'dfs']"),
    ("modes: [bind]", "unknown mode(s) ['bind']"),
    ("heads: [linear]", "unknown head 'linear'"),
])
def test_interaction_config_errors_are_one_line(tmp_path, capsys, entry, message):
    actions, seqs = actions_fixture(tmp_path)
    (tmp_path / "eval.yaml").write_text(f"baselines: [composition]\nout_dir: {tmp_path}\n"
                                        f"interaction:\n  - actions: {actions}\n    sequences: {seqs}\n    {entry}\n")
    assert lcplm_main(["eval-downstream", str(tmp_path / "eval.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_interaction_task_given_on_the_command_line(tmp_path):
    actions, seqs = actions_fixture(tmp_path, n_prot=30, n_pairs=80)
    cfg = load_config(None, ["baselines=[composition]", f"out_dir={tmp_path}", "seeds=[3]", *FAST_TRAIN,
                             f"interaction=[{{actions: {actions}, sequences: {seqs}, split: dfs, heads: [pair_mlp]}}]"],
                      schema=DownstreamConfig)
    rows = evaluate(cfg, log=lambda s: None)["rows"]
    assert [r["seed"] for r in rows if r["metric"] == "micro_f1"] == [3]
    assert all(not math.isnan(r["value"]) for r in rows if r["metric"] in ("micro_f1", "rocauc"))
