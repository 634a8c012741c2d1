"""One edge-list reader, one edge rule: pairs, STRING links and STRING actions, for every caller."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from lcplm.data.edge_lists import MODES, default_min_score, read_edges, read_string_actions
from lcplm.data.genomes import Genome, GenomeProtein, genome_windows
from lcplm.data.pair_sources import PairSourceConfig, build_pair_source
from lcplm.data.ppi_graph import load_ppi_graph
from lcplm.errors import UserError

HEADER = "item_id_a\titem_id_b\tmode\taction\tis_directional\ta_is_acting\tscore\n"
ACTIONS = HEADER + (
    "9606.A\t9606.B\tbinding\t\tf\tf\t900\n"
    "9606.B\t9606.A\tbinding\t\tf\tf\t900\n"  # STRING lists both directions
    "9606.A\t9606.B\tactivation\tactivation\tt\tt\t750\n"
    "9606.B\t9606.C\tinhibition\tinhibition\tt\tf\t650\n"  # below 700
    "9606.C\t9606.D\tptmod\t\tt\tt\t980\n"
    "9606.D\t9606.D\treaction\t\tf\tf\t990\n"  # self-loop
    "9606.D\t9606.E\texpression\t\tt\tt\t700\n"
)
SEQS = "".join(f">9606.{c}\nMKV{c}L\n" for c in "ABCDE")


@pytest.fixture
def files(tmp_path):
    actions = tmp_path / "9606.protein.actions.v11.0.txt.gz"
    with gzip.open(actions, "wt") as f:
        f.write(ACTIONS)
    seqs = tmp_path / "seqs.fa"
    seqs.write_text(SEQS)
    return actions, seqs


def _edges(graph) -> set[tuple[str, str]]:
    return {tuple(sorted((graph.ids[a], graph.ids[b]))) for a, b in graph.data.edge_index.t().tolist()}


def test_actions_graph_uses_the_edge_rule_and_the_modes_filter(files):
    actions, seqs = files
    g = load_ppi_graph(actions, seqs, "string_actions")  # min_score null: 700
    assert _edges(g) == {("9606.A", "9606.B"), ("9606.C", "9606.D"), ("9606.D", "9606.E")}
    assert g.report.n_lines == 7 and g.report.n_rejected == 1 and g.report.n_self_loops == 1
    g = load_ppi_graph(actions, seqs, "string_actions", min_score=0, modes=["binding", "inhibition"])
    assert _edges(g) == {("9606.A", "9606.B"), ("9606.B", "9606.C")}


def test_action_table_is_a_multi_label_mode_matrix(files):
    actions, _ = files
    t = read_string_actions(actions)
    assert t.modes == MODES and t.labels.shape == (len(t), 7) and t.labels.dtype == bool
    got = {pair: {m for m, on in zip(MODES, row) if on} for pair, row in zip(t.pair_ids(), t.labels)}
    assert got == {
        ("9606.A", "9606.B"): {"binding", "activation"},
        ("9606.B", "9606.C"): {"inhibition"},
        ("9606.C", "9606.D"): {"ptmod"},
        ("9606.D", "9606.E"): {"expression"},
    }
    assert (t.pairs[:, 0] < t.pairs[:, 1]).all() and t.n_self_loops == 1
    assert t.scores.tolist() == [900, 650, 980, 700] and t.mode_counts["binding"] == 1
    only = read_string_actions(actions, modes=["binding"], min_score=800)
    assert only.pair_ids() == [("9606.A", "9606.B")] and only.labels.tolist() == [[False, True] + [False] * 5]


@pytest.mark.parametrize(
    "text, fragment",
    [
        (HEADER + "A\tB\tbonding\t\tf\tf\t900\n", r":2: unknown mode 'bonding'; STRING's modes are \['activation'"),
        (HEADER + "A\tB\tbinding\tf\tf\t900\n", r":2: expected 7 tab-separated fields like the header, got 6"),
        (HEADER + "A\tB\tbinding\t\tf\tf\thigh\n", r":2: score 'high' is not a number"),
        ("A B binding x f f 900\n", r":1: expected STRING's tab-separated actions header"),
        ("# nothing\n", r"actions file is empty"),
        (HEADER, r"has no data lines"),
    ],
)
def test_actions_errors_are_one_line(tmp_path, text, fragment):
    p = tmp_path / "a.txt"
    p.write_text(text)
    for read in (lambda: read_string_actions(p), lambda: read_edges(p, "string_actions")):
        with pytest.raises(UserError, match=fragment) as e:
            read()
        assert "\n" not in str(e.value)


def test_unknown_mode_in_a_config_is_one_line():
    from lcplm.data.datamodules.ppi_walks import PPIWalkDataConfig

    with pytest.raises(UserError, match=r"data\.modes: unknown mode\(s\) \['bind'\]"):
        PPIWalkDataConfig(edge_format="string_actions", modes=["bind"])
    with pytest.raises(UserError, match=r"data\.modes only applies to edge_format string_actions"):
        PPIWalkDataConfig(edge_format="pairs", modes=["binding"])


def test_one_rule_for_stage2_and_the_genome_pair_source(tmp_path):
    """Before: a score of 0.5 was an edge for stage 2 (> 0) but not for the genome ppi source (>= 1)."""
    edges = tmp_path / "e.tsv"
    edges.write_text("p1 p2 0.5\np2 p3 0.49\np3 p4 1\np4 p5\np5 p6 0\n")
    seqs = tmp_path / "s.tsv"
    seqs.write_text("".join(f"p{i}\tMKV\n" for i in range(1, 7)))
    graph = load_ppi_graph(edges, seqs, "pairs")
    want = {("p1", "p2"), ("p3", "p4"), ("p4", "p5")}
    assert _edges(graph) == want
    genome = Genome("g", [GenomeProtein(f"p{i}", "MKV") for i in range(1, 7)])
    (w,) = genome_windows(genome, 100)
    allowed = build_pair_source(PairSourceConfig("ppi", edges=str(edges)), [genome]).allowed(w)
    pairs = {(f"p{i + 1}", f"p{j + 1}") for i, j in torch.nonzero(torch.triu(allowed, 1)).tolist()}
    assert pairs == want
    assert read_edges(edges).pair_set() == {frozenset(p) for p in want}
    assert default_min_score("pairs") == 0.5 and default_min_score("string") == default_min_score("string_actions") == 700


def test_pair_source_reads_string_actions_with_modes(files):
    actions, _ = files
    ids = [f"9606.{c}" for c in "ABCDE"]
    genome = Genome("g", [GenomeProtein(i, "MKV") for i in ids])
    (w,) = genome_windows(genome, 100)
    cfg = PairSourceConfig("ppi", edges=str(actions), edge_format="string_actions", modes=["ptmod"])
    allowed = build_pair_source(cfg, [genome]).allowed(w)
    assert torch.nonzero(torch.triu(allowed, 1)).tolist() == [[2, 3]]
    assert np.array_equal(allowed.numpy(), allowed.numpy().T)
