"""Taxonomy readers: GenBank lineage/organism/taxon, rank=label TSV, vConTACT reference CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from genome_fixtures import write_genbank
from lcplm.data.genomes import read_genbank
from lcplm.data.taxonomy import (
    is_label,
    lineage_ranks,
    rank_order,
    read_genbank_taxonomy,
    read_gene_to_genome,
    read_rank_table,
    read_vcontact_taxonomy,
    vcontact_genomes,
)
from lcplm.errors import UserError

T4_LINEAGE = [
    "Viruses", "Duplodnaviria", "Heunggongvirae", "Uroviricota", "Caudoviricetes",
    "Straboviridae", "Tevenvirinae", "Tequatrovirus",
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_lineage_names_are_placed_by_ictv_suffix():
    assert lineage_ranks(T4_LINEAGE) == {
        "superkingdom": "Viruses",
        "realm": "Duplodnaviria",
        "kingdom": "Heunggongvirae",
        "phylum": "Uroviricota",
        "class": "Caudoviricetes",
        "family": "Straboviridae",
        "subfamily": "Tevenvirinae",
        "genus": "Tequatrovirus",
    }
    # sub-ranks whose suffix ends a rank's suffix; group names and "unclassified" are not placed
    got = lineage_ranks(["Viruses", "Riboviria", "Orthornavirae", "Pisuviricota", "Pisoniviricetes",
                         "Nidovirales", "Cornidovirineae", "unclassified Nidovirales", "environmental samples"])
    assert got == {"superkingdom": "Viruses", "realm": "Riboviria", "kingdom": "Orthornavirae",
                   "phylum": "Pisuviricota", "class": "Pisoniviricetes", "order": "Nidovirales",
                   "suborder": "Cornidovirineae"}
    assert lineage_ranks(["Bacteria", "Pseudomonadota", "Gammaproteobacteria", "Enterobacterales",
                          "Enterobacteriaceae", "Escherichia"]) == {
        "superkingdom": "Bacteria", "order": "Enterobacterales", "family": "Enterobacteriaceae"}


def test_no_label_spellings_and_rank_order():
    for text in ("", " ", "Unassigned", "unclassified Caudoviricetes", "N/A", "NA", "None", "unknown", "-", ".", None):
        assert not is_label(text), text
    assert is_label("Caudoviricetes") and is_label("Unassigned-like virus 3")
    assert rank_order(["species", "host", "class", "genus", "cluster"]) == ["class", "genus", "species", "cluster", "host"]


def test_genbank_taxonomy_reads_organism_taxon_and_lineage_with_read_genbanks_ids(tmp_path):
    gbk = write_genbank(tmp_path / "t.gbk", [
        ("T4", "Escherichia phage T4", "10665", T4_LINEAGE),
        ("BARE", None, None, []),
        ("HALF", "Some phage", None, ["Viruses", "unclassified bacterial viruses"]),
    ])
    tax = read_genbank_taxonomy(gbk)
    assert list(tax) == [g.genome_id for g in read_genbank(gbk)]  # same genome ids as the genome reader
    assert tax["T4"] == {**lineage_ranks(T4_LINEAGE), "species": "Escherichia phage T4", "taxid": "10665"}
    assert tax["BARE"] == {}
    assert tax["HALF"] == {"superkingdom": "Viruses", "species": "Some phage"}


def test_genbank_taxonomy_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_genbank_taxonomy(tmp_path / "missing.gbk")
    with pytest.raises(UserError, match="is empty"):
        read_genbank_taxonomy(_write(tmp_path, "empty.gbk", ""))
    with pytest.raises(UserError, match="no GenBank records|malformed GenBank"):
        read_genbank_taxonomy(_write(tmp_path, "x.gbk", "this is not genbank\n"))


def test_rank_table_reads_labels_with_spaces_and_drops_unassigned(tmp_path):
    p = _write(tmp_path, "t.tsv", (
        "# genome\tranks\n"
        "G1\tClass=Caudoviricetes\tgenus=Tequatrovirus\tspecies=Escherichia phage T4\n"
        "\n"
        "G2\tclass=Caudoviricetes\tgenus=Unassigned\t\n"
        "G3\thost=Escherichia coli\n"
    ))
    assert read_rank_table(p) == {
        "G1": {"class": "Caudoviricetes", "genus": "Tequatrovirus", "species": "Escherichia phage T4"},
        "G2": {"class": "Caudoviricetes"},
        "G3": {"host": "Escherichia coli"},
    }


@pytest.mark.parametrize(
    "text, match",
    [
        ("G1\n", r"t.tsv:1: expected 'genome<TAB>rank=label"),
        ("G1\tclass=A\nG1\tclass=B\n", r"t.tsv:2: genome 'G1' listed twice"),
        ("G1\tclass Caudoviricetes\n", r"t.tsv:1: 'class Caudoviricetes' is not rank=label"),
        ("G1\tclass=A\tclass=B\n", r"t.tsv:1: rank 'class' given twice"),
        ("# only a comment\n", r"t.tsv: taxonomy table has no rows"),
    ],
)
def test_rank_table_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        read_rank_table(_write(tmp_path, "t.tsv", text))


REFERENCE = (
    "Organism/Name,Kingdom,Phylum,Class,Order,Family,Genus\n"
    "Escherichia phage T4,Heunggongvirae,Uroviricota,Caudoviricetes,Unassigned,Straboviridae,Tequatrovirus\n"
    "Bacillus phage Gamma,Heunggongvirae,Uroviricota,Caudoviricetes,Unassigned,Unassigned,Unassigned\n"
    "Absent phage,Heunggongvirae,Uroviricota,Caudoviricetes,Unassigned,Unassigned,Unassigned\n"
)
G2G = (
    "protein_id,contig_id,keywords\n"
    "p1,Escherichia~phage~T4,None_provided\n"
    "p2,Escherichia~phage~T4,None_provided\n"
    "p3,Bacillus phage Gamma,None_provided\n"
    "p4,Unknown~contig,None_provided\n"
    "p9,Absent~phage,None_provided\n"
)
PROTEINS = ">p2\nMKLVA\n>p1\nMAGW\n>p3\nMQQR\n>p4\nMPPP\n"


def test_vcontact_taxonomy_matches_names_with_tildes_and_skips_absent_genomes(tmp_path):
    ref = _write(tmp_path, "ref.csv", REFERENCE)
    g2g = _write(tmp_path, "g2g.csv", G2G)
    faa = _write(tmp_path, "p.faa", PROTEINS)
    tax = read_vcontact_taxonomy(ref, g2g, faa)
    assert tax == {
        "Escherichia~phage~T4": {"kingdom": "Heunggongvirae", "phylum": "Uroviricota", "class": "Caudoviricetes",
                                 "family": "Straboviridae", "genus": "Tequatrovirus"},
        "Bacillus phage Gamma": {"kingdom": "Heunggongvirae", "phylum": "Uroviricota", "class": "Caudoviricetes"},
        "Unknown~contig": {},  # no reference row: present, unlabelled (the evaluation counts it)
    }
    genomes = {g.genome_id: [p.protein_id for p in g.proteins] for g in vcontact_genomes(faa, g2g)}
    assert genomes == {"Escherichia~phage~T4": ["p2", "p1"], "Bacillus phage Gamma": ["p3"], "Unknown~contig": ["p4"]}


def test_vcontact_bad_inputs(tmp_path):
    g2g = _write(tmp_path, "g2g.csv", G2G)
    with pytest.raises(UserError, match=r"p.faa: record 'p7' is not in the gene-to-genome CSV"):
        vcontact_genomes(_write(tmp_path, "p.faa", PROTEINS + ">p7\nMA\n"), g2g)
    with pytest.raises(UserError, match=r"g.csv:1: expected a header with 'protein_id' and 'contig_id'"):
        read_gene_to_genome(_write(tmp_path, "g.csv", "p1,G1\n"))
    with pytest.raises(UserError, match=r"g.csv:3: protein 'p1' assigned to 'A' and to 'B'"):
        read_gene_to_genome(_write(tmp_path, "g.csv", "protein_id,contig_id\np1,A\np1,B\n"))
    faa = _write(tmp_path, "ok.faa", PROTEINS)
    with pytest.raises(UserError, match=r"r.csv:1: expected an 'Organism/Name' column"):
        read_vcontact_taxonomy(_write(tmp_path, "r.csv", "Kingdom,Genus\nA,B\n"), g2g, faa)
    with pytest.raises(UserError, match=r"r.csv:2: 3 columns, the header has 7"):
        read_vcontact_taxonomy(_write(tmp_path, "r.csv", REFERENCE.splitlines()[0] + "\nA,B,C\n"), g2g, faa)
    with pytest.raises(UserError, match="reference CSV not found"):
        read_vcontact_taxonomy(tmp_path / "nope.csv", g2g, faa)
