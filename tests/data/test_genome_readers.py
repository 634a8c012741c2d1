"""Genome readers: GenBank translation rules, truncation and skip counts; ViralEmbed's format."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from conftest import shared_data
from lcplm.data.genomes import check_unique_protein_ids, read_genbank
from lcplm.errors import UserError

# The GenBank regression tests import only what existed before the fix, so they also ran (and
# failed) against that code; newer names are imported inside the tests that use them.


def genbank(name: str, seq: str, features: list[tuple[str, dict]], locus_len: int | None = None) -> str:
    """A GenBank record: ``features`` are (location, qualifiers); ``seq`` in ORIGIN blocks."""
    lines = [
        f"LOCUS       {name:<16} {locus_len or len(seq):>11} bp    DNA     linear   PHG 01-JAN-2020",
        "DEFINITION  test genome.",
        f"ACCESSION   {name}",
        f"VERSION     {name}",
        "FEATURES             Location/Qualifiers",
    ]
    for loc, quals in features:
        lines.append(f"     CDS             {loc}")
        for k, v in quals.items():
            lines.append(f"                     /{k}" if v is None else f'                     /{k}="{v}"' if not str(v).isdigit() else f"                     /{k}={v}")
    lines.append("ORIGIN")
    for i in range(0, len(seq), 60):
        chunk = seq[i : i + 60]
        lines.append(f"{i + 1:>9} " + " ".join(chunk[j : j + 10] for j in range(0, len(chunk), 10)))
    lines.append("//")
    return "\n".join(lines) + "\n"


# 1-based positions:       1   4   7   10  13  16  19  22 24  27  30  33  36  39  42  45  48  51
SEQ = ("gtgaaatggtaa"        # 1..12   GTG start, KW, stop: cds=True gives MKW
       "atgaaatggta"         # 13..23  11 bp: not a multiple of 3
       "catgaaatgg"          # 24..33  partial at the start, codon_start=2: MKW
       "atgtagaaataa"        # 34..45  internal stop
       "atgccccccccctaa"     # 46..60  pseudo, no translation
       "atgcgttaa")          # 61..69  complete: MR
FEATURES = [
    ("1..12", {"locus_tag": "ALT_START"}),
    ("13..23", {"locus_tag": "CUT_SHORT"}),
    ("<24..33", {"locus_tag": "PARTIAL", "codon_start": 2}),
    ("34..45", {"locus_tag": "INNER_STOP"}),
    ("46..60", {"locus_tag": "PSEUDO", "pseudo": None}),
    ("61..69", {"locus_tag": "PLAIN"}),
    ("complement(61..69)", {"locus_tag": "GIVEN", "translation": "MKV*"}),
]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_cds_translation_rules_and_partial_flags(tmp_path):
    p = _write(tmp_path, "g.gbk", genbank("GEN1", SEQ, FEATURES))
    (g,) = read_genbank(p)
    got = {q.protein_id: (q.sequence, getattr(q, "partial", None)) for q in g.proteins}
    assert got == {
        "ALT_START": ("MKW", False),  # GTG start codon gives M (before: 'VKW')
        "PARTIAL": ("MKW", True),  # flagged, read from /codon_start
        "PLAIN": ("MR", False),
        "GIVEN": ("MKV", False),  # /translation wins; terminal '*' dropped
    }


def test_skipped_cds_are_counted_with_their_reason(tmp_path, caplog):
    from lcplm.data.genomes import GenomeReadSummary

    p = _write(tmp_path, "g.gbk", genbank("GEN1", SEQ, FEATURES))
    summary = GenomeReadSummary()
    read_genbank(p, summary)
    # before: CUT_SHORT became a silently shorter 'MKW', INNER_STOP 'M*K' and PSEUDO vanished uncounted
    assert dict(summary.skipped) == {
        "length not a multiple of 3": 1, "internal stop codon": 1, "pseudo without /translation": 1,
    }
    line = summary.line()
    assert "4 proteins" in line and "1 from partial CDS (flagged)" in line and "3 CDS skipped" in line
    assert "1 length not a multiple of 3" in line and "\n" not in line
    with caplog.at_level(logging.WARNING, logger="lcplm.data.genomes"):
        read_genbank(p)  # without a summary object the reader logs its own line
    assert any("3 CDS skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda t: t[: t.index("       61 ")], "record 'GEN1' is truncated"),  # file ends inside ORIGIN
        (lambda t: t.replace("//\n", ""), "record 'GEN1' is truncated"),  # no terminating //
        (lambda t: t.replace(f"{len(SEQ):>11} bp", f"{len(SEQ) + 30:>11} bp"), "record 'GEN1' is truncated"),
        (lambda t: t.replace("61..69)", "61..90)"), "'GIVEN'"),  # a CDS past the sequence end
    ],
)
def test_truncated_records_are_errors_naming_the_record(tmp_path, mutate, fragment):
    """Before: Biopython warned 'Premature end of file' / 'Expected sequence length' and the
    reader accepted the shortened record."""
    p = _write(tmp_path, "g.gbk", mutate(genbank("GEN1", SEQ, FEATURES)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reader must not merely warn
        with pytest.raises(UserError) as e:
            read_genbank(p)
    assert fragment in str(e.value) and "g.gbk" in str(e.value) and "\n" not in str(e.value)


def test_cds_past_the_end_without_translation_is_an_error(tmp_path):
    feats = [("1..12", {"locus_tag": "A"}), ("61..75", {"locus_tag": "LONG"})]
    p = _write(tmp_path, "g.gbk", genbank("GEN2", SEQ, feats))
    with pytest.raises(UserError, match=r"record 'GEN2', CDS 'LONG': location ends at 75, beyond the record's 69 bp"):
        read_genbank(p)


@pytest.mark.needs_shared_data
def test_pharokka_genomes_read_without_skips():
    from lcplm.data.genomes import GenomeReadSummary

    summary = GenomeReadSummary()
    genomes = read_genbank(shared_data("genomes", "pharokka_meta_phages.gbk"), summary)
    assert summary.proteins == 559 and not summary.skipped and summary.partial == 0
    assert all(p.sequence[0] == "M" for g in genomes for p in g.proteins[:3])


# ----------------------------------------------------------------------------- ViralEmbed


@pytest.mark.parametrize(
    "header, n, name, lengths",
    [
        ("ENA_X_1_30_prots_3_4_", 7, "ENA_X_1_30", [3, 4]),
        ("Some.virus_5_2", 7, "Some.virus", [5, 2]),
        ("Sewage.virus-34_5_2", 7, "Sewage.virus-34", [5, 2]),
        ("Wenling.virus.7_2_5", 7, "Wenling.virus.7", [2, 5]),
        ("Virus_2_5_2", 7, "Virus_2", [5, 2]),  # the name ends in a number: only 5+2 sum to 7
        ("Virus_3_4_", 7, "Virus", [3, 4]),
    ],
)
def test_viralembed_header_lengths(header, n, name, lengths):
    from lcplm.data.genomes import viralembed_lengths

    assert viralembed_lengths(header, n) == (name, lengths)


@pytest.mark.parametrize(
    "header, n, fragment",
    [
        ("X_prots_3_4_", 8, "sum to 7, but the sequence has 8"),
        ("X_prots_3_a_", 7, "expected 'NAME_prots_"),
        ("X_prots_3_0_4_", 7, "lengths >= 1"),
        ("Virus_3_3", 7, "no trailing"),
        ("7", 7, "no trailing"),  # a bare number leaves no name
    ],
)
def test_viralembed_header_errors(header, n, fragment):
    from lcplm.data.genomes import viralembed_lengths

    with pytest.raises(ValueError, match=fragment):
        viralembed_lengths(header, n)


def test_viralembed_reader_splits_proteins_and_names_bad_records(tmp_path):
    from lcplm.data.genomes import read_viralembed

    p = _write(tmp_path, "v.faa", ">G1_prots_3_2_\nMKV\nLA\n>Phage.9_1_2_2\nMWWKK*\n")
    g1, g2 = read_viralembed(p)
    assert (g1.genome_id, [(q.protein_id, q.sequence) for q in g1.proteins]) == (
        "G1", [("G1_p1", "MKV"), ("G1_p2", "LA")])
    assert (g2.genome_id, [q.sequence for q in g2.proteins]) == ("Phage.9", ["M", "WW", "KK"])
    bad = _write(tmp_path, "bad.faa", ">G1_prots_3_2_\nMKVLA\n>G2_prots_3_3_\nMKVLA\n")
    with pytest.raises(UserError, match=r"bad\.faa: record 'G2_prots_3_3_' \(#2\): its 2 protein lengths sum to 6"):
        read_viralembed(bad)


@pytest.mark.needs_shared_data
@pytest.mark.parametrize(
    "name, genomes, proteins, residues",
    [("viralembed_pol_rnr_fragments.fasta", 307, 10_649, 2_350_000), ("viralembed_100_genomes.faa", 100, 880, 295_000)],
)
def test_viralembed_shared_files(name, genomes, proteins, residues):
    from lcplm.data.genomes import GenomeReadSummary, read_viralembed

    summary = GenomeReadSummary()
    gs = read_viralembed(shared_data("genomes", name), summary)
    assert len(gs) == genomes and summary.proteins == proteins
    assert abs(sum(g.num_residues for g in gs) - residues) < 0.01 * residues  # the README's rounded total
    check_unique_protein_ids(gs)


@pytest.mark.needs_shared_data
def test_genome_datamodule_reads_viralembed(tmp_path):
    from lcplm.data.datamodules.genome import GenomeDataConfig, GenomeDataModule

    shared_data("genomes", "viralembed_100_genomes.faa")
    cfg = GenomeDataConfig(viralembed=["shared:genomes/viralembed_100_genomes.faa"], max_tokens=4096, val_fraction=0.1)
    dm = GenomeDataModule(cfg, seed=0)
    dm.setup()
    ids = {w.genome_id for w in dm.train_set.windows} | {w.genome_id for w in dm.val_set.windows}
    assert len(ids) == 100
