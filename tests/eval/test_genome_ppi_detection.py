"""PPI detection from attention pair scores: metrics by hand and against scikit-learn, the
scored source's top-k rule, bad pair files, and `lcplm genome ...` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_data
from genome_fixtures import TINY_BASE, TINY_MODEL, genome_args, write_genbank
from lcplm.__main__ import main as lcplm_main
from lcplm.data.genomes import Genome, GenomeProtein, genome_windows
from lcplm.data.pair_sources import ScoredPairs
from lcplm.eval.genome_ppi_detection import detection_metrics, predicted_pairs

sk_metrics = pytest.importorskip("sklearn.metrics")


def _pair(a: str, b: str) -> frozenset:
    return frozenset((a, b))


def test_detection_metrics_by_hand_and_average_precision_equals_sklearn():
    scores = {_pair("a", "b"): 0.9, _pair("a", "c"): 0.5, _pair("b", "c"): 0.5, _pair("c", "d"): 0.1, _pair("a", "d"): 0.7}
    positives = {_pair("a", "b"), _pair("b", "c"), _pair("x", "y")}  # x-y is not scored: it does not count
    predicted = {_pair("a", "b"), _pair("a", "d"), _pair("q", "r")}  # q-r is not scored either
    m = detection_metrics(scores, predicted, positives)
    assert (m["scored_pairs"], m["positives"], m["predicted"], m["true_positives"]) == (5, 2, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5 and m["positive_rate"] == 0.4
    # tied scores (a-c and b-c at 0.5, one positive) count as one threshold, as in scikit-learn
    pairs = list(scores)
    y = np.array([e in positives for e in pairs], dtype=int)
    s = np.array([scores[e] for e in pairs])
    assert m["average_precision"] == pytest.approx(sk_metrics.average_precision_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx((1 / 1) * 0.5 + (2 / 4) * 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_sklearn_on_random_scores_with_ties(seed):
    g = np.random.default_rng(seed)
    s = np.round(g.random(300), 1)
    y = (g.random(300) < 0.2).astype(int)
    scores = {_pair(f"p{i}", f"q{i}"): float(v) for i, v in enumerate(s)}
    positives = {_pair(f"p{i}", f"q{i}") for i in np.nonzero(y)[0]}
    m = detection_metrics(scores, set(), positives)
    assert m["average_precision"] == pytest.approx(sk_metrics.average_precision_score(y, s), abs=1e-6)
    assert m["precision"] is None and m["recall"] == 0.0  # nothing predicted
    assert detection_metrics(scores, set(), set())["average_precision"] is None  # no positive: undefined


def test_predicted_pairs_are_the_scored_sources_top_k_union_per_window():
    proteins = [GenomeProtein(f"p{i}", "MKV" * (i + 1)) for i in range(6)]
    genomes = [Genome("G", proteins)]
    g = torch.Generator().manual_seed(0)
    scores = {_pair(f"p{i}", f"p{j}"): float(torch.rand(1, generator=g)) for i in range(6) for j in range(i + 1, 6)}
    for k in (1, 2):
        got = predicted_pairs(scores, genomes, 4096, top_k=k, threshold=None)
        (w,) = genome_windows(genomes[0], 4096)
        a = ScoredPairs(scores, k).allowed(w)
        want = {_pair(f"p{i}", f"p{j}") for i in range(6) for j in range(i + 1, 6) if a[i, j]}
        assert got == want
        # each protein's best partner is predicted
        for i in range(6):
            best = max((e for e in scores if f"p{i}" in e), key=scores.get)
            assert best in got
    assert predicted_pairs(scores, genomes, 4096, top_k=None, threshold=0.5) == {e for e, v in scores.items() if v >= 0.5}


def _gbk(tmp_path):
    lineage = ["Viruses"]
    return write_genbank(tmp_path / "g.gbk", [("G1", None, None, lineage), ("G2", None, None, lineage)], proteins_per_genome=5)


def test_ppi_detection_command_counts_absent_proteins_and_reads_a_score_file(tmp_path, capsys):
    gbk = _gbk(tmp_path)
    known = tmp_path / "known.txt"
    known.write_text(
        "G1_P1 G1_P2\n"
        "G1_P2 G1_P3 1\n"
        "G1_P4 G1_P5 0\n"  # a negative label: not a known interaction
        "G1_P1 G2_P1\n"  # two genomes: never in one window
        "G1_P1 MISSING_7\n"
        "ALSO_MISSING G2_P2\n"
    )
    scores = tmp_path / "scores.tsv"
    out = tmp_path / "out"
    assert lcplm_main(["genome", "pair-scores", *genome_args(gbk), "--out", str(scores)]) == 0
    lines = [x.split("\t") for x in scores.read_text().splitlines()[1:]]
    assert len(lines) > 0 and all(len(x) == 3 for x in lines)

    rc = lcplm_main(["genome", "ppi-detection", *genome_args(gbk), "--pairs", str(known), "--scores", str(scores),
                     "--top-k", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "genome_ppi_detection.json").read_text())
    (row,) = report["rows"]
    k = row["known"]
    assert (k["pairs_in_file"], k["pairs_with_absent_proteins"], k["absent_proteins"]) == (5, 2, 2)
    assert k["absent_protein_examples"] == ["ALSO_MISSING", "MISSING_7"]
    assert (k["matched_scored"], k["matched_unscored"]) == (2, 1)
    assert row["positives"] == 2 and row["scored_pairs"] == len(lines) and row["rule"] == "top-1 per protein"
    assert 0.0 <= row["average_precision"] <= 1.0 and row["precision"] is not None
    table = (out / "genome_ppi_detection.md").read_text()
    assert "2 of 5 known pairs name proteins absent from the genomes (e.g. ALSO_MISSING, MISSING_7): left out" in table
    assert "1 known pairs join proteins that share no scored window" in table
    assert table in capsys.readouterr().out

    # scoring in place of a file: same pairs, same rule, predicted count from the config's top_k
    rc = lcplm_main(["genome", "ppi-detection", *genome_args(gbk), "data.pair_source.top_k=2", "--pairs", str(known),
                     "--out", str(out)])
    assert rc == 0
    (row2,) = json.loads((out / "genome_ppi_detection.json").read_text())["rows"]
    assert row2["scored_pairs"] == row["scored_pairs"] and row2["rule"] == "top-2 per protein"
    assert row2["average_precision"] == pytest.approx(row["average_precision"], abs=1e-6)  # file rounds to 6 digits


def test_ppi_detection_bad_inputs_are_one_line(tmp_path, capsys):
    gbk = _gbk(tmp_path)
    known = tmp_path / "known.txt"
    known.write_text("X1 X2\nG1_P1 X3\n")
    rc = lcplm_main(["genome", "ppi-detection", *genome_args(gbk), "--pairs", str(known), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "known.txt: none of its 2 pairs joins two proteins of the genomes (3 protein ids are absent" in err

    known.write_text("G1_P1 G1_P2\n")
    scores = tmp_path / "s.tsv"
    scores.write_text("A B 0.5\n")
    rc = lcplm_main(["genome", "ppi-detection", *genome_args(gbk), "--pairs", str(known), "--scores", str(scores),
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "s.tsv: none of its 1 pairs joins two proteins sharing a window" in err

    rc = lcplm_main(["genome", "ppi-detection", *genome_args(gbk), "--pairs", str(tmp_path / "nope.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope.txt: edge list file not found" in err


def test_genome_command_dispatch(capsys):
    assert lcplm_main(["genome", "--help"]) == 0
    usage = capsys.readouterr().out
    assert all(s in usage for s in ("pair-scores", "probe", "taxonomy", "ppi-detection"))
    assert lcplm_main(["genome", "telepathy"]) == 2
    assert "invalid choice: 'telepathy'" in capsys.readouterr().err
    assert lcplm_main(["genome"]) == 2


@pytest.mark.needs_shared_data
def test_ppi_detection_and_probe_on_the_shared_phage_genomes(tmp_path):
    """Known pairs: pharokka's neighbouring same-strand genes of one genome (a putative operon
    set, not a gold standard), one pair with a made-up id; a random model scores them."""
    from lcplm.data.genomes import read_genbank
    from lcplm.data.pair_sources import neighbourhood_pairs

    gbk = shared_data("genomes", "pharokka_meta_phages.gbk")
    genome = next(g for g in read_genbank(gbk) if g.genome_id == "NC_004617.1")
    pairs = sorted(tuple(sorted(e)) for e in neighbourhood_pairs([genome], 20))
    known = tmp_path / "known.txt"
    known.write_text("".join(f"{a}\t{b}\n" for a, b in pairs) + "NOT_A_PROTEIN\tNC_004617.1_CDS_0001\n")
    args = [str(TINY_BASE), *TINY_MODEL, "data.max_tokens=1024", f"data.genbank=[{gbk}]", "data.fasta=[]"]
    out = tmp_path / "ppi"
    assert lcplm_main(["genome", "ppi-detection", *args, "--pairs", str(known), "--out", str(out)]) == 0
    (row,) = json.loads((out / "genome_ppi_detection.json").read_text())["rows"]
    assert row["known"]["pairs_in_file"] == len(pairs) + 1 and row["known"]["pairs_with_absent_proteins"] == 1
    assert row["positives"] > 0 and 0.0 < row["average_precision"] <= 1.0 and row["rule"] == "top-4 per protein"
    assert lcplm_main(["genome", "probe", *args, "--sources", "window", "--out", str(tmp_path / "probe")]) == 0
    assert (tmp_path / "probe" / "genome_probe.md").is_file()
