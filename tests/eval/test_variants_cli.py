"""``lcplm score-variants`` end to end: outputs, offsets, folders of assays, the published
reference beside ours, the shared BLAT_ECOLX assay, and bad input as one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lcplm.__main__ import main as cli
from conftest import shared_data

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKW"
ROWS = [("K2R", 0.5, 1), ("T3S", 0.1, 0), ("Y5F", -1.0, 0), ("Q9E", 0.9, 1), ("S13T", 0.2, 1),
        ("E25D", -0.3, 0), ("D42A", -2.0, 0), ("Q45K", 1.1, 1), ("W76Y", -0.5, 0), ("K2R:Q45K", 1.3, 1),
        ("A4G:I6V:E25D", -1.5, 0), ("M1L", 0.0, 0)]


def mutate(mutant: str) -> str:
    s = list(WT)
    for part in mutant.split(":"):
        s[int(part[1:-1]) - 1] = part[-1]
    return "".join(s)


def write_table(path: Path, rows=ROWS) -> Path:
    lines = ["mutant,mutated_sequence,DMS_score,DMS_score_bin"]
    for m, score, b in rows:
        lines.append(f"{m},{mutate(m)},{score},{b}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.io import save_pretrained

    torch.manual_seed(0)
    model = BiMambaLM(BiMambaConfig(d_model=32, n_layer=2, scan_backend="chunked"))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # scores well away from zero
    return save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")


def run_ok(argv, capsys) -> str:
    assert cli(["score-variants", *argv]) == 0
    return capsys.readouterr().out


def cli_error(argv, capsys) -> str:
    assert cli(["score-variants", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_outputs_metrics_and_scores(tmp_path, checkpoint, capsys):
    table = write_table(tmp_path / "TOY_Assay.csv")
    out = tmp_path / "out"
    text = run_ok(["--checkpoint", str(checkpoint), "--dms", str(table), "--out", str(out), "--device", "cpu"], capsys)
    assert "TOY_Assay: 12 mutants at 12 sites" in text
    rec = json.loads((out / "TOY_Assay.json").read_text())
    assert rec["n_mutants"] == 12 and rec["method"] == "masked-marginal" and rec["window"] is None
    assert set(rec["metrics"]) == {"spearman", "auc", "mcc", "ndcg", "top10_recall"}
    lines = (out / "TOY_Assay.scores.csv").read_text().splitlines()
    assert lines[0] == "mutant,DMS_score,DMS_score_bin,masked-marginal" and len(lines) == 13
    scores = np.array([float(line.split(",")[-1]) for line in lines[1:]])
    assert scores[9] == pytest.approx(scores[0] + scores[7], abs=1e-5)  # K2R:Q45K = K2R + Q45K
    from lcplm.tasks.metrics import spearman

    assert rec["metrics"]["spearman"] == pytest.approx(spearman(scores, [r[1] for r in ROWS]), abs=1e-6)
    assert "| TOY_Assay |" in (out / "summary.md").read_text()


def test_offset_and_wild_type_fasta_give_the_same_scores(tmp_path, checkpoint, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    base = write_table(tmp_path / "a" / "A.csv")
    # the same variants numbered from 24 (residue 1 is 24), columns reordered, no mutated_sequence
    shifted = tmp_path / "b" / "A.csv"
    shifted.write_text("DMS_score_bin,mutant,DMS_score\n" + "".join(
        f"{b},{':'.join(f'{p[0]}{int(p[1:-1]) + 23}{p[-1]}' for p in m.split(':'))},{y}\n" for m, y, b in ROWS))
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(f">wt\n{WT[:40]}\n{WT[40:]}\n")
    common = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    run_ok([*common, "--dms", str(base), "--out", str(tmp_path / "o1")], capsys)
    run_ok([*common, "--dms", str(shifted), "--wild-type", str(fasta), "--offset", "24", "--out", str(tmp_path / "o2")], capsys)
    s1 = [line.split(",")[-1] for line in (tmp_path / "o1" / "A.scores.csv").read_text().splitlines()[1:]]
    s2 = [line.split(",")[-1] for line in (tmp_path / "o2" / "A.scores.csv").read_text().splitlines()[1:]]
    assert s1 == s2
    err = cli_error([*common, "--dms", str(shifted), "--wild-type", str(fasta), "--out", str(tmp_path / "o3")], capsys)
    assert "position 25 is past the end" in err or "wild-type letter" in err  # forgetting --offset is caught


def test_a_folder_of_assays_gives_a_summary_with_the_mean(tmp_path, checkpoint, capsys):
    folder = tmp_path / "dms"
    folder.mkdir()
    write_table(folder / "ONE.csv")
    write_table(folder / "TWO.csv", rows=ROWS[:8])
    out = tmp_path / "out"
    run_ok(["--checkpoint", str(checkpoint), "--dms", str(folder), "--out", str(out), "--device", "cpu",
            "--method", "wt-marginal"], capsys)
    summary = json.loads((out / "summary.json").read_text())
    assert [a["assay"] for a in summary["assays"]] == ["ONE", "TWO"]
    md = (out / "summary.md").read_text()
    mean = np.mean([a["metrics"]["spearman"] for a in summary["assays"]])
    assert f"| mean of 2 assays | | | 20 | {mean:.3f} |" in md


def test_reference_number_is_printed_beside_ours(tmp_path, checkpoint, capsys):
    table = write_table(tmp_path / "TOY_Assay.csv")
    ref = tmp_path / "ref.csv"
    ref.write_text("DMS_id,ESM2 (8M),ESM2 (650M)\nTOY_Assay,0.399,0.731\n")
    out = run_ok(["--checkpoint", str(checkpoint), "--dms", str(table), "--out", str(tmp_path / "o"), "--device", "cpu",
                  "--reference", str(ref), "--reference-model", "ESM2 (650M)"], capsys)
    line = next(x for x in out.splitlines() if "ProteinGym" in x)
    assert "Spearman ours" in line and "ProteinGym ESM2 (650M) 0.731" in line
    rec = json.loads((tmp_path / "o" / "TOY_Assay.json").read_text())
    assert rec["reference"]["spearman"] == 0.731
    err = cli_error(["--checkpoint", str(checkpoint), "--dms", str(table), "--out", str(tmp_path / "o"),
                     "--reference", str(ref), "--reference-model", "ESM2 (3B)"], capsys)
    assert "no column 'ESM2 (3B)'" in err and "ESM2 (650M)" in err


@pytest.mark.needs_shared_data
def test_shared_blat_assay_trained_vs_random_init(tmp_path, checkpoint, capsys):
    dms = shared_data("fitness", "BLAT_ECOLX_Stiffler_2015.csv")
    fasta = shared_data("fitness", "BLAT_ECOLX.fasta")
    ref = shared_data("fitness", "proteingym_reference_spearman.csv")
    out = run_ok(["--checkpoint", str(checkpoint), "--dms", str(dms), "--wild-type", str(fasta), "--out", str(tmp_path / "o"),
                  "--device", "cpu", "--reference", str(ref), "--reference-model", "ESM2 (650M)"], capsys)
    assert "BLAT_ECOLX_Stiffler_2015: 4996 mutants at 263 sites" in out
    assert "ProteinGym ESM2 (650M) 0.731" in out
    rec = json.loads((tmp_path / "o" / "BLAT_ECOLX_Stiffler_2015.json").read_text())
    assert rec["forward_rows"] == 263 and rec["wild_type_length"] == 286
    assert -1 <= rec["metrics"]["spearman"] <= 1 and 0 <= rec["metrics"]["auc"] <= 1


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("rows, match", [
    ([("K2R", 0.5, 1), ("A3S", 0.1, 0)], r"line 3 \(mutant 'A3S'\): wild-type letter A at position 3, but the wild type has T"),
    ([("K2R", 0.5, 1), ("W90Y", 0.1, 0)], r"line 3 \(mutant 'W90Y'\): position 90 is past the end of the 76-residue wild type"),
    ([("K2R", 0.5, 1), ("K2J", 0.1, 0)], r"line 3 \(mutant 'K2J'\): unknown amino acid 'J'"),
    ([("K2R", 0.5, 1), ("K2", 0.1, 0)], r"line 3 \(mutant 'K2'\): malformed mutant 'K2'"),
    ([("K2R", 0.5, 1), ("K2R:K2A", 0.1, 0)], r"line 3 \(mutant 'K2R:K2A'\): position 2 is substituted twice"),
])
def test_bad_mutants_name_the_line(tmp_path, checkpoint, capsys, rows, match):
    import re

    table = tmp_path / "bad.csv"
    lines = ["mutant,DMS_score"] + [f"{m},{s}" for m, s, _ in rows]
    table.write_text("\n".join(lines) + "\n")
    fasta = tmp_path / "wt.fasta"
    fasta.write_text(f">wt\n{WT}\n")
    err = cli_error(["--checkpoint", str(checkpoint), "--dms", str(table), "--wild-type", str(fasta),
                     "--out", str(tmp_path / "o")], capsys)
    assert re.search(match, err), err
    assert str(table) in err


def test_wrong_wild_type_letter_in_the_first_row_is_blamed_on_that_row(tmp_path, checkpoint, capsys):
    table = tmp_path / "t.csv"
    table.write_text("mutant,mutated_sequence,DMS_score\n"
                     f"A2R,{mutate('K2R')},0.1\nT3S,{mutate('T3S')},0.2\nK2A,{mutate('K2A')},0.3\n")
    err = cli_error(["--checkpoint", str(checkpoint), "--dms", str(table), "--out", str(tmp_path / "o")], capsys)
    assert "line 2 (mutant 'A2R'): wild-type letter A at position 2, but the wild type has K" in err


@pytest.mark.parametrize("content, match", [
    ("", "empty file"),
    ("mutant,mutated_sequence,DMS_score\n", "no variants"),
    (f"mutant,mutated_sequence\nK2R,{mutate('K2R')}\n", "no 'DMS_score' column (columns: mutant, mutated_sequence)"),
    ("variant,DMS_score\nK2R,0.1\n", "no 'mutant' column"),
    (f"mutant,mutated_sequence,DMS_score\nK2R,{mutate('K2R')},0.1,7\n", "line 2 has 4 fields, the header has 3"),
    (f"mutant,mutated_sequence,DMS_score\nK2R,{mutate('K2R')},high\n", "line 2 (mutant 'K2R'): DMS_score 'high' is not a number"),
    (f"mutant,mutated_sequence,DMS_score\nK2R,{mutate('K2R')},\n", "DMS_score '' is not a number"),
    (f"mutant,mutated_sequence,DMS_score\nK2R,{mutate('K2R')},0.1\nY5F,{mutate('Y5F')},0.2\nT3S,{mutate('K2R')},0.2\n",
     "line 4 (mutant 'T3S'): mutated_sequence is not the wild type with T3S applied (first difference at residue 2: R vs K)"),
    ("mutant,DMS_score\nK2R,0.1\n", "no 'mutated_sequence' column to recover the wild type from"),
    (f'mutant,mutated_sequence,DMS_score\n"K2R,{mutate("K2R")},0.1\n', "line 2 has 1 fields, the header has 3"),  # an unclosed quote swallows the row
])
def test_bad_tables_are_one_line(tmp_path, checkpoint, capsys, content, match):
    table = tmp_path / "t.csv"
    table.write_text(content)
    err = cli_error(["--checkpoint", str(checkpoint), "--dms", str(table), "--out", str(tmp_path / "o")], capsys)
    assert match in err and str(table) in err, err


def test_bad_options_and_files_are_one_line(tmp_path, checkpoint, capsys):
    table = write_table(tmp_path / "A.csv")
    base = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
    assert "not found" in cli_error([*base, "--dms", str(tmp_path / "missing.csv")], capsys)
    two = tmp_path / "two.fasta"
    two.write_text(">a\nMK\n>b\nMK\n")
    assert "must hold exactly one" in cli_error([*base, "--dms", str(table), "--wild-type", str(two)], capsys)
    assert "checkpoint not found" in cli_error(["--checkpoint", str(tmp_path / "x.ckpt"), "--dms", str(table),
                                                "--out", str(tmp_path / "o")], capsys)
    genome = tmp_path / "g.fasta"
    genome.write_text(f">target\n{WT}\n")
    err = cli_error([*base, "--dms", str(table), "--genome", str(genome), "--protein", "target"], capsys)
    assert "needs a genome transformer" in err and "'bimamba'" in err
    assert "go together" in cli_error([*base, "--dms", str(table), "--genome", str(genome)], capsys)
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    assert "no .csv DMS tables" in cli_error([*base, "--dms", str(empty_dir)], capsys)


def test_genome_context_and_pseudo_ll_through_the_cli(tmp_path, capsys):
    from lcplm.models.io import save_pretrained
    from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

    torch.manual_seed(0)
    model = SparseGenomeLM(SparseTransformerConfig(hidden=32, heads=4, ffn=64, attention_backend="dense", init_std=0.3))
    ckpt = save_pretrained(model, tmp_path / "genome")
    genome = tmp_path / "phage.faa"  # one genome (the whole file), proteins in file order
    genome.write_text(f">p0\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n>target\n{WT}\n>p2\nMADEEKLPPGWEKRMSRSSGRVYYFNHITNASQWERPSG\n")
    table = write_table(tmp_path / "A.csv", rows=ROWS[:4])
    common = ["--checkpoint", str(ckpt), "--dms", str(table), "--device", "cpu"]
    run_ok([*common, "--out", str(tmp_path / "alone")], capsys)
    run_ok([*common, "--out", str(tmp_path / "genome"), "--genome", str(genome), "--protein", "target"], capsys)
    alone = json.loads((tmp_path / "alone" / "A.json").read_text())
    inside = json.loads((tmp_path / "genome" / "A.json").read_text())
    assert alone["context"] == "single protein" and alone["window"] == 1024
    assert inside["context"].startswith("inside genome phage (window of 3 proteins") and inside["window"] == 1024
    assert inside["options"]["pair_source"] == "dense"
    s_alone = (tmp_path / "alone" / "A.scores.csv").read_text()
    assert s_alone != (tmp_path / "genome" / "A.scores.csv").read_text()  # the genome is seen
    run_ok([*common, "--out", str(tmp_path / "pll"), "--method", "pseudo-ll", "--genome", str(genome), "--protein", "target"], capsys)
    pll = json.loads((tmp_path / "pll" / "A.json").read_text())
    assert pll["method"] == "pseudo-ll" and pll["forward_rows"] == 5 * len(WT)  # wild type + 4 mutants, every residue
    err = cli_error([*common, "--out", str(tmp_path / "x"), "--genome", str(genome), "--protein", "p0"], capsys)
    assert "protein 'p0' (27 residues) is not the assay's wild type" in err
