"""Genome taxonomy evaluation: metrics against scikit-learn, stratified folds, per-rank skips,
and `lcplm genome taxonomy` end to end on written GenBank / TSV / vConTACT fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import shared_data
from genome_fixtures import TINY_BASE, TINY_MODEL, genome_args, write_genbank
from lcplm.__main__ import main as lcplm_main
from lcplm.eval.genome_taxonomy import evaluate_rank, genome_embeddings, stratified_folds
from lcplm.tasks.metrics import cosine_silhouette, weighted_f1

sk_metrics = pytest.importorskip("sklearn.metrics")

# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_f1_equals_sklearn(seed):
    g = np.random.default_rng(seed)
    y = g.integers(0, 5, 97)
    pred = np.where(g.random(97) < 0.6, y, g.integers(0, 7, 97))  # classes 5, 6 only predicted
    ref = sk_metrics.f1_score(y, pred, average="weighted", zero_division=0)
    assert weighted_f1(y, pred) == pytest.approx(ref, abs=1e-12)
    assert weighted_f1(y, y) == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_cosine_silhouette_equals_sklearn_with_a_singleton_cluster(seed):
    g = np.random.default_rng(seed)
    labels = np.array([0] * 7 + [1] * 5 + [2] * 4 + [3])  # cluster 3 has one member: s = 0 there
    x = g.normal(size=(labels.size, 6)) + 2 * np.eye(6)[labels]
    ref = sk_metrics.silhouette_score(x, labels, metric="cosine")
    assert cosine_silhouette(x, labels) == pytest.approx(ref, abs=1e-10)
    # float32 input, labels that are not 0..k-1
    assert cosine_silhouette(torch.tensor(x, dtype=torch.float32), labels + 10) == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ValueError, match="clusters"):
        cosine_silhouette(x, np.zeros(labels.size, dtype=int))
    with pytest.raises(ValueError, match="clusters"):
        cosine_silhouette(x, np.arange(labels.size))


def test_stratified_folds_spread_every_class_and_are_seeded():
    y = [0] * 11 + [1] * 5 + [2] * 3 + [3] * 7
    fold = stratified_folds(y, 3, seed=4)
    assert fold.shape == (26,) and set(fold.tolist()) == {0, 1, 2}
    yt = torch.tensor(y)
    for c in range(4):
        counts = torch.bincount(fold[yt == c], minlength=3)
        assert int(counts.max() - counts.min()) <= 1, (c, counts)
    sizes = torch.bincount(fold, minlength=3)
    assert int(sizes.max() - sizes.min()) <= 1
    assert torch.equal(fold, stratified_folds(y, 3, seed=4))
    assert not torch.equal(fold, stratified_folds(y, 3, seed=5))


# ----------------------------------------------------------------------------- one rank


def _clustered(labels: list[str], seed: int = 0, spread: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = {c: torch.randn(8, generator=g) * 3 for c in sorted(set(labels))}
    return {f"g{i}": centres[c] + spread * torch.randn(8, generator=g) for i, c in enumerate(labels)}


def test_rank_with_separable_classes_scores_one_and_shuffled_labels_do_not():
    labels = ["A"] * 6 + ["B"] * 6 + ["C"] * 6
    emb = _clustered(labels)
    tax = {f"g{i}": {"family": c} for i, c in enumerate(labels)}
    row = evaluate_rank(emb, tax, "family", folds=3, seed=0, l2=1e-2)
    assert row["classification_skip"] is None and row["silhouette_skip"] is None
    assert row["weighted_f1"] == 1.0 and row["n_evaluated"] == 18 and row["n_classes_evaluated"] == 3
    assert row["majority_weighted_f1"] < 0.5
    assert row["silhouette"] > 0.5
    shuffled = {f"g{i}": {"family": labels[(5 * i + 1) % 18]} for i in range(18)}
    bad = evaluate_rank(emb, shuffled, "family", folds=3, seed=0, l2=1e-2)
    assert bad["weighted_f1"] < 0.7 and bad["silhouette"] < row["silhouette"]


def test_rank_skips_are_rows_with_reasons():
    labels = ["A"] * 5 + ["B"] * 5 + ["C"] * 2
    emb = _clustered(labels)
    tax = {f"g{i}": {"family": c, "class": "Caudoviricetes", "species": f"s{i}"} for i, c in enumerate(labels)}
    tax["g0"].pop("class")

    single = evaluate_rank(emb, tax, "class", folds=3, seed=0, l2=1e-2)
    assert single["classification_skip"] == "a single class ('Caudoviricetes', 11 genomes)"
    assert single["weighted_f1"] is None and single["n_evaluated"] == 0
    assert single["silhouette"] is None and single["silhouette_skip"] == "1 class"

    small = evaluate_rank(emb, tax, "family", folds=3, seed=0, l2=1e-2)  # C has 2 < 3 genomes: left out
    assert small["classification_skip"] is None
    assert (small["classes_left_out"], small["genomes_left_out"], small["n_evaluated"]) == (1, 2, 10)
    assert small["silhouette"] is not None  # the silhouette keeps every labelled genome

    too_few = evaluate_rank(emb, tax, "family", folds=6, seed=0, l2=1e-2)
    assert too_few["classification_skip"] == "0 of 3 classes have at least 6 genomes (the number of folds)"

    own = evaluate_rank(emb, tax, "species", folds=3, seed=0, l2=1e-2)
    assert own["classification_skip"].startswith("0 of 12 classes")
    assert own["silhouette_skip"] == "every genome its own class (12)"

    none = evaluate_rank(emb, tax, "genus", folds=3, seed=0, l2=1e-2)
    assert none["classification_skip"] == "no labelled genome" and none["n_genomes"] == 0


def test_genome_embedding_is_the_mean_of_its_proteins():
    from lcplm.data.genomes import Genome, GenomeProtein

    genomes = [Genome("G", [GenomeProtein("a", "MA"), GenomeProtein("b", "MK"), GenomeProtein("c", "MQ")])]
    prot = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 3.0]), "c": torch.tensor([2.0, 0.0])}
    assert torch.equal(genome_embeddings(prot, genomes)["G"], torch.tensor([1.0, 1.0]))


# ----------------------------------------------------------------------------- the command

FAMILIES = {  # 6 genomes, 2 families of 3, one class; G7 has no taxonomy at all
    "G1": "Straboviridae", "G2": "Straboviridae", "G3": "Straboviridae",
    "G4": "Autographiviridae", "G5": "Autographiviridae", "G6": "Autographiviridae",
}


def _genbank(tmp_path):
    records = [
        (g, f"phage {g}", str(100 + i), ["Viruses", "Duplodnaviria", "Uroviricota", "Caudoviricetes", fam])
        for i, (g, fam) in enumerate(FAMILIES.items())
    ]
    return write_genbank(tmp_path / "phages.gbk", records + [("G7", None, None, [])])


def test_taxonomy_command_from_genbank_lineages(tmp_path, capsys):
    gbk = _genbank(tmp_path)
    out = tmp_path / "out"
    rc = lcplm_main(["genome", "taxonomy", *genome_args(gbk), "--taxonomy", str(gbk), "--folds", "3",
                     "--sources", "single_protein,dense", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "genome_taxonomy.json").read_text())
    cov = report["meta"]["coverage"]
    assert (cov["genomes"], cov["labelled"], cov["missing_from_table"], cov["no_label_in_table"]) == (7, 6, 0, 1)
    assert report["meta"]["ranks"] == ["superkingdom", "realm", "phylum", "class", "family", "species"]
    rows = {(r["source"], r["rank"]): r for r in report["rows"]}
    assert len(rows) == 12
    for source in ("single_protein", "dense"):
        fam = rows[(source, "family")]
        assert fam["classification_skip"] is None and fam["n_evaluated"] == 6
        assert 0.0 <= fam["weighted_f1"] <= 1.0 and -1.0 <= fam["silhouette"] <= 1.0
        assert rows[(source, "class")]["classification_skip"].startswith("a single class ('Caudoviricetes'")
        assert rows[(source, "species")]["silhouette_skip"] == "every genome its own class (6)"
    # the pair source reaches the embeddings: proteins alone vs in their genome context
    assert rows[("single_protein", "family")]["silhouette"] != rows[("dense", "family")]["silhouette"]
    table = (out / "genome_taxonomy.md").read_text()
    assert "| random-init | dense | class | 6 | 1 | 0 (0) | – | – | – | classification skipped: a single class" in table
    printed = capsys.readouterr().out
    assert table in printed and "genomes with taxonomy labels: 6 of 7" in printed


def test_taxonomy_command_reports_missing_genomes_and_refuses_a_table_without_any(tmp_path, capsys):
    gbk = _genbank(tmp_path)
    tsv = tmp_path / "t.tsv"
    tsv.write_text("G1\tgroup=x\nG2\tgroup=x\nG4\tgroup=y\nG5\tgroup=y\nNOT_A_GENOME\tgroup=y\n")
    out = tmp_path / "out"
    assert lcplm_main(["genome", "taxonomy", *genome_args(gbk), "--taxonomy", str(tsv), "--folds", "2", "--out", str(out)]) == 0
    cov = json.loads((out / "genome_taxonomy.json").read_text())["meta"]["coverage"]
    assert (cov["labelled"], cov["missing_from_table"], cov["table_entries_without_genome"]) == (4, 3, 1)
    assert cov["missing_examples"] == ["G3", "G6", "G7"]
    assert "not in the table: 3 (e.g. G3, G6, G7); table entries naming no genome: 1" in capsys.readouterr().out

    tsv.write_text("OTHER1\tgroup=x\nOTHER2\tgroup=y\n")
    rc = lcplm_main(["genome", "taxonomy", *genome_args(gbk), "--taxonomy", str(tsv), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no genome has a taxonomy label: 7 of 7 genomes are not in" in err

    tsv.write_text("G1\tgroup x\n")
    rc = lcplm_main(["genome", "taxonomy", *genome_args(gbk), "--taxonomy", str(tsv), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "t.tsv:1: 'group x' is not rank=label" in err


def test_taxonomy_command_on_vcontact_inputs(tmp_path):
    faa = tmp_path / "p.faa"
    g2g = tmp_path / "g2g.csv"
    ref = tmp_path / "ref.csv"
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    names = {f"Phage~{i}": ("Straboviridae" if i < 4 else "Autographiviridae") for i in range(8)}
    fasta, rows = [], ["protein_id,contig_id,keywords"]
    for gid in names:
        for k in range(3):
            pid = f"{gid.replace('~', '_')}_{k}"
            fasta.append(f">{pid}\nM{''.join(rng.choice(aa, 40))}")
            rows.append(f"{pid},{gid},None_provided")
    faa.write_text("\n".join(fasta) + "\n")
    g2g.write_text("\n".join(rows) + "\n")
    ref.write_text("Organism/Name,Kingdom,Phylum,Class,Order,Family,Genus\n" + "".join(
        f"{gid.replace('~', ' ')},Heunggongvirae,Uroviricota,Caudoviricetes,Unassigned,{fam},Unassigned\n"
        for gid, fam in list(names.items())[:7]))  # the last genome has no reference row
    out = tmp_path / "out"
    rc = lcplm_main(["genome", "taxonomy", str(TINY_BASE), *TINY_MODEL, "--taxonomy", str(ref),
                     "--gene-to-genome", str(g2g), "--proteins", str(faa), "--folds", "3", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "genome_taxonomy.json").read_text())
    cov = report["meta"]["coverage"]
    assert (cov["genomes"], cov["labelled"], cov["no_label_in_table"]) == (8, 7, 1)
    assert report["meta"]["ranks"] == ["kingdom", "phylum", "class", "family"]
    fam = next(r for r in report["rows"] if r["rank"] == "family")
    assert fam["n_genomes"] == 7 and fam["n_evaluated"] == 7 and fam["weighted_f1"] is not None


@pytest.mark.needs_shared_data
def test_taxonomy_command_on_the_shared_phage_genomes(tmp_path):
    """The shared genomes carry no taxonomy: label the three whose DEFINITION names a host by the
    host's phylum. Two Bacillota and one Actinomycetota are too few for 2 folds: a documented skip."""
    gbk = shared_data("genomes", "pharokka_meta_phages.gbk")
    tsv = tmp_path / "t.tsv"
    tsv.write_text(
        "NC_004617.1\thost_phylum=Bacillota\n"  # Staphylococcus prophage phi 13
        "NC_007458.1\thost_phylum=Bacillota\n"  # Bacillus phage Gamma
        "NC_051700.1\thost_phylum=Actinomycetota\n"  # Mycobacterium phage Polka14
    )
    out = tmp_path / "out"
    args = [str(TINY_BASE), *TINY_MODEL, "data.max_tokens=1024", f"data.genbank=[{gbk}]", "data.fasta=[]"]
    assert lcplm_main(["genome", "taxonomy", *args, "--taxonomy", str(tsv), "--folds", "2", "--out", str(out)]) == 0
    report = json.loads((out / "genome_taxonomy.json").read_text())
    assert report["meta"]["coverage"]["missing_examples"] == ["MW460250_1", "SR-VP_4-6_scaffold_141_1259094"]
    (row,) = report["rows"]
    assert row["classification_skip"] == "1 of 2 classes have at least 2 genomes (the number of folds)"
    assert -1.0 <= row["silhouette"] <= 1.0
    assert "classification skipped: 1 of 2 classes" in (out / "genome_taxonomy.md").read_text()
