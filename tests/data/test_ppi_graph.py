"""PPI graphs: STRING links, actions and pair lists under the one edge rule, sequences by id,
reports, strict mode, errors."""

from __future__ import annotations

import gzip
import logging

import pytest
import torch

from lcplm.data.edge_lists import read_edges, read_string_links
from lcplm.data.ppi_graph import build_graph, load_ppi_graph, read_sequence_table, split_nodes
from lcplm.errors import UserError
from conftest import shared_data

SEQS = {
    "9606.P1": "MKTAYIAKQR",
    "9606.P2": "MSSHEGGKKK",
    "9606.P3": "MADEQLLKKW",
    "9606.P4": "MGLSDGEWQL",
    "9606.P5": "MVLSPADKTN",
}


def _edge_set(graph) -> set[tuple[str, str]]:
    ei = graph.data.edge_index
    return {(graph.ids[a], graph.ids[b]) for a, b in ei.t().tolist()}


def _write_fasta(path, seqs, width=4):
    with open(path, "w") as f:
        for k, s in seqs.items():
            f.write(f">{k} some description\n")
            for i in range(0, len(s), width):  # wrapped lines, as FASTA files have them
                f.write(s[i : i + width] + "\n")
    return path


@pytest.fixture
def string_files(tmp_path):
    links = tmp_path / "9606.protein.links.v12.0.txt.gz"
    with gzip.open(links, "wt") as f:
        f.write("protein1 protein2 combined_score\n")
        f.write("9606.P1 9606.P2 900\n")
        f.write("9606.P2 9606.P1 900\n")  # STRING lists each edge in both directions
        f.write("9606.P2 9606.P3 700\n")  # exactly at the threshold: kept
        f.write("9606.P3 9606.P4 699\n")  # below: dropped
        f.write("9606.P4 9606.P4 999\n")  # self-loop
        f.write("9606.P1 9606.P9 950\n")  # P9 has no sequence
        f.write("9606.P4 9606.P5 800\n")
    fasta = _write_fasta(tmp_path / "9606.protein.sequences.v12.0.fa", SEQS)
    return links, fasta


def test_string_links_threshold_dedupe_undirected(string_files):
    links, fasta = string_files
    g = load_ppi_graph(links, fasta, "string", min_score=700)
    assert _edge_set(g) == {
        ("9606.P1", "9606.P2"), ("9606.P2", "9606.P1"),
        ("9606.P2", "9606.P3"), ("9606.P3", "9606.P2"),
        ("9606.P4", "9606.P5"), ("9606.P5", "9606.P4"),
    }
    assert g.ids == sorted(g.ids) == ["9606.P1", "9606.P2", "9606.P3", "9606.P4", "9606.P5"]
    assert g.sequences == [SEQS[i] for i in g.ids]  # FASTA lines joined back together
    assert g.num_edges == 3 and g.num_nodes == 5
    r = g.report
    assert (r.n_lines, r.n_rejected, r.n_self_loops, r.n_duplicates) == (7, 1, 1, 1)
    assert (r.n_missing_proteins, r.missing_examples, r.n_missing_edges) == (1, ["9606.P9"], 1)
    ei = g.data.edge_index
    keys = (ei[0] * g.num_nodes + ei[1]).tolist()
    assert keys == sorted(keys)  # sorted by (row, col), as the CSR walker expects


def test_string_threshold_is_configurable(string_files):
    links, fasta = string_files
    g = load_ppi_graph(links, fasta, "string", min_score=850)
    assert {tuple(sorted(e)) for e in _edge_set(g)} == {("9606.P1", "9606.P2")}


def test_string_detailed_format_finds_combined_score_by_name(tmp_path):
    links = tmp_path / "links.detailed.txt"  # plain text this time
    links.write_text(
        "protein1 protein2 neighborhood fusion cooccurence coexpression experimental database textmining combined_score\n"
        "9606.P1 9606.P2 0 0 0 0 999 0 0 400\n"
        "9606.P2 9606.P3 0 0 0 0 0 0 0 990\n"
    )
    fasta = _write_fasta(tmp_path / "s.fa", SEQS)
    g = load_ppi_graph(links, fasta, "string")
    assert {tuple(sorted(e)) for e in _edge_set(g)} == {("9606.P2", "9606.P3")}


def test_missing_sequences_reported_and_dropped(string_files, caplog):
    links, fasta = string_files
    with caplog.at_level(logging.WARNING, logger="lcplm.data.ppi_graph"):
        load_ppi_graph(links, fasta, "string")
    assert "1 proteins without a sequence" in caplog.text and "9606.P9" in caplog.text


def test_strict_mode_makes_missing_sequences_an_error(string_files):
    links, fasta = string_files
    with pytest.raises(UserError, match=r"1 proteins have no sequence.*9606\.P9"):
        load_ppi_graph(links, fasta, "string", strict=True)


def test_pair_list_keeps_unscored_lines_and_scores_at_or_above_min_score(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "protein_a\tprotein_b\tlabel\nA\tB\t1\nB\tC\t0\nC\tD\t0.7\nD\tA\t-1\n\n# a comment\nA\tC\nB\tD\t0.5\nA\tD\t0.49\n"
    )
    table = tmp_path / "seqs.tsv"
    table.write_text("A\tMKV\nB\tMSS\nC\tMAD\nD\tMGL\n")
    g = load_ppi_graph(pairs, table, "pairs")  # min_score null: 0.5 for pairs
    assert {tuple(sorted(e)) for e in _edge_set(g)} == {("A", "B"), ("C", "D"), ("A", "C"), ("B", "D")}
    assert g.report.n_lines == 7 and g.report.n_rejected == 3
    assert g.sequences == ["MKV", "MSS", "MAD", "MGL"]
    g = load_ppi_graph(pairs, table, "pairs", min_score=0.7)
    assert {tuple(sorted(e)) for e in _edge_set(g)} == {("A", "B"), ("C", "D"), ("A", "C")}


def test_keep_isolated_adds_sequences_without_edges(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("A B\n")
    table = tmp_path / "seqs.tsv"
    table.write_text("A\tMKV\nB\tMSS\nZ\tMAD\n")
    assert load_ppi_graph(pairs, table).ids == ["A", "B"]
    g = load_ppi_graph(pairs, table, keep_isolated=True)
    assert g.ids == ["A", "B", "Z"] and g.report.n_isolated == 1 and g.num_edges == 1


def test_ids_map_once_regardless_of_line_order(tmp_path):
    table = tmp_path / "seqs.tsv"
    table.write_text("A\tMKV\nB\tMSS\nC\tMAD\n")
    (tmp_path / "p1").write_text("A B\nB C\n")
    (tmp_path / "p2").write_text("C B\nB A\nA B\n")
    g1, g2 = load_ppi_graph(tmp_path / "p1", table), load_ppi_graph(tmp_path / "p2", table)
    assert g1.ids == g2.ids and torch.equal(g1.data.edge_index, g2.data.edge_index)


@pytest.mark.parametrize(
    "content, match",
    [
        ("A B 1\nA\n", r"pairs\.tsv:2: expected 'id1 id2 \[label or score\]', got 1 fields"),
        ("A B 1\nA B C D\n", r"pairs\.tsv:2: .*got 4 fields"),
        ("A B 1\nA C yes\n", r"pairs\.tsv:2: label or score 'yes' is not a number"),
        ("A B 0\nB C 0\n", r"pairs\.tsv: the graph has no edges"),
        ("A A 1\n", r"the graph has no edges"),
        ("", r"pairs\.tsv: empty file"),
        ("# nothing\n", r"pairs\.tsv: edge list has no data lines"),
        ("A B nan\n", r"pairs\.tsv:1: label or score is NaN"),
    ],
)
def test_pair_list_errors(tmp_path, content, match):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(content)
    table = tmp_path / "seqs.tsv"
    table.write_text("A\tMKV\nB\tMSS\nC\tMAD\n")
    with pytest.raises(UserError, match=match):
        load_ppi_graph(pairs, table)


@pytest.mark.parametrize(
    "content, match",
    [
        ("9606.P1 9606.P2 900\n", r"links\.txt:1: expected STRING's header line naming 'combined_score'"),
        ("protein1 protein2 combined_score\n9606.P1 9606.P2\n", r"links\.txt:2: expected 3 fields"),
        ("protein1 protein2 combined_score\n9606.P1 9606.P2 high\n", r"links\.txt:2: combined_score 'high' is not a number"),
        ("", r"links\.txt: empty file"),
        ("# c\n", r"links\.txt: links file is empty"),
        ("protein1 protein2 combined_score\n9606.P1 9606.P2 100\n", r"links\.txt: the graph has no edges"),
    ],
)
def test_string_links_errors(tmp_path, content, match):
    links = tmp_path / "links.txt"
    links.write_text(content)
    fasta = _write_fasta(tmp_path / "s.fa", SEQS)
    with pytest.raises(UserError, match=match):
        load_ppi_graph(links, fasta, "string")


def test_unknown_ids_only_graph_is_an_error(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("X Y 1\n")
    table = tmp_path / "seqs.tsv"
    table.write_text("A\tMKV\n")
    with pytest.raises(UserError, match="the graph has no edges.*1 touching proteins without a sequence"):
        load_ppi_graph(pairs, table)
    with pytest.raises(UserError, match=r"2 proteins have no sequence.*\(e\.g\. X, Y\)"):
        load_ppi_graph(pairs, table, strict=True)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("s.fa", ">A\nMKV\n>B\n>C\nMAD\n", r"s\.fa: record 'B' \(line 3\) has no sequence"),
        ("s.fa", ">A\nMKV\n>A\nMAD\n", r"s\.fa:3: duplicate sequence id 'A'"),
        ("s.fa", ">\nMKV\n", r"s\.fa: line 1: header line has no id"),
        ("s.fa", ">A\nMK\x1cV\n", r"s\.fa: record 'A', line 2: byte 0x1c is not a residue"),
        ("s.tsv", "A\tMKV\nB\tMS S\n", r"s\.tsv:2: expected 'id<TAB>sequence' \(2 fields\), got 3"),
        ("s.tsv", "A\tMKV\nB\tMS\xa0S\n", r"s\.tsv:2: record 'B': byte 0xc2 at residue 3 is not a residue"),
        ("s.tsv", "\n\n", r"s\.tsv: no sequences found"),
    ],
)
def test_sequence_table_errors(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(UserError, match=match):
        read_sequence_table(p)


def test_missing_files_and_bad_format(tmp_path):
    with pytest.raises(UserError, match=r"nope\.tsv: edge list file not found"):
        read_edges(tmp_path / "nope.tsv")
    with pytest.raises(UserError, match=r"nope\.fa: sequence table file not found"):
        read_sequence_table(tmp_path / "nope.fa")
    (tmp_path / "p").write_text("A B\n")
    with pytest.raises(UserError, match="edge_format must be one of"):
        load_ppi_graph(tmp_path / "p", tmp_path / "p", edge_format="csv")


def test_gzip_sequence_table_and_truncated_gzip(tmp_path):
    p = tmp_path / "s.fa.gz"
    with gzip.open(p, "wt") as f:
        f.write(">A\nMKV\n>B\nMSS\n")
    assert read_sequence_table(p) == {"A": "MKV", "B": "MSS"}
    links = tmp_path / "links.txt.gz"
    with gzip.open(links, "wt") as f:
        f.write("protein1 protein2 combined_score\n" + "A B 900\n" * 2000)
    links.write_bytes(links.read_bytes()[:-20])
    with pytest.raises(UserError, match=r"links\.txt\.gz: corrupt or truncated gzip data"):
        read_string_links(links)


def _ring_with_chords(n: int) -> torch.Tensor:
    src = torch.arange(n)
    a = torch.cat([src, src])
    b = torch.cat([(src + 1) % n, (src + 7) % n])
    return torch.cat([torch.stack([a, b]), torch.stack([b, a])], 1)


def test_split_nodes_is_a_seeded_partition_with_connected_holdout():
    n = 200
    ei = _ring_with_chords(n)
    tr, va = split_nodes(ei, n, 0.1, torch.Generator().manual_seed(3))
    tr2, va2 = split_nodes(ei, n, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert va.numel() == 20 and torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(n))
    inside = torch.zeros(n, dtype=torch.bool)
    inside[va] = True
    held_edges = int((inside[ei[0]] & inside[ei[1]]).sum()) // 2
    # 20 nodes grown breadth-first keep at least a spanning tree's worth of edges; 20 random
    # nodes of this 400-edge graph would keep about 400 * (20/200)^2 = 4
    assert held_edges >= 19


def test_split_nodes_handles_isolated_nodes_and_tiny_graphs():
    ei = torch.tensor([[0, 1], [1, 0]])
    tr, va = split_nodes(ei, 5, 0.5, torch.Generator().manual_seed(0))
    assert va.numel() == 2 and tr.numel() == 3
    tr, va = split_nodes(ei, 2, 0.01, torch.Generator().manual_seed(0))
    assert va.numel() == 1 and tr.numel() == 1


def test_build_graph_direct_from_edge_list(tmp_path):
    (tmp_path / "p").write_text("B A 1\n")
    g = build_graph(read_edges(tmp_path / "p"), {"A": "MK", "B": "MS"})
    assert g.ids == ["A", "B"] and g.data.edge_index.tolist() == [[0, 1], [1, 0]]


@pytest.mark.needs_shared_data
def test_shared_yeast_guo_graph():
    g = load_ppi_graph(
        shared_data("ppi", "yeast_guo", "protein.actions.tsv"),
        shared_data("ppi", "yeast_guo", "protein.dictionary.tsv"),
    )
    r = g.report
    assert r.n_lines == 11188 and r.n_rejected == 5594  # the 5,594 non-interacting pairs
    assert r.n_missing_proteins == 0
    assert g.num_edges == 5594 - r.n_duplicates - r.n_self_loops
    assert 2000 < g.num_nodes <= 2497
    ei = g.data.edge_index
    assert (ei[0] != ei[1]).all()
    assert all(len(s) > 0 for s in g.sequences)


@pytest.mark.needs_shared_data
def test_shared_dscript_yeast_string_ids():
    g = load_ppi_graph(
        shared_data("ppi", "dscript", "yeast_test.tsv"),
        shared_data("ppi", "dscript", "yeast.fasta"),
    )
    assert g.report.n_rejected == 50000 and g.num_edges == 5000 - g.report.n_duplicates - g.report.n_self_loops
    assert all(i.startswith("4932.") for i in g.ids)
