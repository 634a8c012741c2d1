"""The BLAST v4 reader against databases written by an independent writer, and on the real
metastudent-data databases when `lcplm data prepare-swissprot` has extracted them."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
from blast_v4_writer import (
    NCBISTDAA,
    defline,
    gi_id,
    local_str_id,
    metastudent_record,
    ordinal_id,
    pdb_id,
    textseq_id,
    write_db,
)

from lcplm.data.blastdb import BlastProteinDb, DefLine, record_id
from lcplm.data.cache import swissprot_dir
from lcplm.errors import UserError

LONG_TITLE = "Q" * 300 + " a title longer than 255 bytes needs a two-byte BER length"


def _records(ind: bool):
    return [
        ([defline("P69905|GO:0005344,GO:0019825", [ordinal_id(0, ind)], taxid=0, ind=ind)], "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF"),
        ([defline("Hemoglobin subunit alpha", [textseq_id(7, "P69905", "HBA_HUMAN", 2, ind), gi_id(57013850, ind)], taxid=9606, ind=ind),
          defline("second def line of a merged record", [local_str_id("my_id", ind)], ind=ind)], NCBISTDAA[1:]),
        ([defline(LONG_TITLE, [pdb_id("1ABC", "A", ind), textseq_id(9, "NP_000549", None, 1, ind)], ind=ind)], "A"),
        ([defline(None, [ordinal_id(3, ind)], ind=ind)], "WXYZUO*J-K"),
    ]


@pytest.mark.parametrize("indefinite", [True, False], ids=["indefinite-lengths", "definite-lengths"])
def test_reader_returns_what_the_writer_wrote(tmp_path, indefinite):
    recs = _records(indefinite)
    db = BlastProteinDb(write_db(tmp_path / "db" / "x.fasta", recs, title="four records", indefinite=indefinite))
    assert len(db) == 4
    assert db.info.version == 4 and db.info.title == "four records"
    assert db.info.timestamp == "Jan 20, 2022  10:32 AM"  # the NUL padding is not part of it
    assert db.info.total_residues == sum(len(s) for _, s in recs)
    assert db.info.max_length == max(len(s) for _, s in recs)
    assert db.lengths.tolist() == [len(s) for _, s in recs]
    assert [r.sequence for r in db] == [s for _, s in recs]
    assert db.deflines(0) == (DefLine("P69905|GO:0005344,GO:0019825", ("gnl|BL_ORD_ID|0",), 0),)
    assert db.deflines(1) == (
        DefLine("Hemoglobin subunit alpha", ("sp|P69905.2|HBA_HUMAN", "gi|57013850"), 9606),
        DefLine("second def line of a merged record", ("lcl|my_id",), None),
    )
    assert db.deflines(2) == (DefLine(LONG_TITLE, ("pdb|1ABC|A", "ref|NP_000549.1"), None),)
    assert db.deflines(3) == (DefLine("", ("gnl|BL_ORD_ID|3",), None),)
    # the .pin may also be named directly
    assert len(BlastProteinDb(tmp_path / "db" / "x.fasta.pin")) == 4


def test_record_id_prefers_a_real_seq_id_over_the_ordinal():
    assert record_id(DefLine("B0RED7|GO:0046933 more words", ("gnl|BL_ORD_ID|0",), 0)) == ("B0RED7|GO:0046933", "more words")
    assert record_id(DefLine("Hemoglobin alpha", ("gnl|BL_ORD_ID|1", "sp|P69905.2|HBA_HUMAN"), None)) == (
        "sp|P69905.2|HBA_HUMAN", "Hemoglobin alpha")
    assert record_id(DefLine("", ("gnl|BL_ORD_ID|2",), None)) == ("", "")


def test_an_empty_database_reads_as_empty(tmp_path):
    db = BlastProteinDb(write_db(tmp_path / "e", []))
    assert len(db) == 0 and db.lengths.tolist() == [] and list(db) == []


def _corrupt(tmp_path, ext, change):
    prefix = write_db(tmp_path / "c", [metastudent_record(0, "P12345", ["GO:0000001"], "MKV"),
                                         metastudent_record(1, "P12346", ["GO:0000002"], "MKVL")])
    f = prefix.with_name(prefix.name + ext)
    f.write_bytes(change(f.read_bytes()))
    return prefix


@pytest.mark.parametrize(
    "ext, change, message",
    [
        (".pin", lambda b: struct.pack(">i", 5) + b[4:], "version-5 database"),
        (".pin", lambda b: struct.pack(">i", 3) + b[4:], "not a BLAST version-4 index"),
        (".pin", lambda b: b[:4] + struct.pack(">i", 0) + b[8:], "nucleotide database"),
        (".pin", lambda b: b[:-6], "truncated index|unexpected bytes"),
        (".psq", lambda b: b[:-2], "truncated or mismatched"),
        (".phr", lambda b: b[:-1], "truncated or mismatched"),
        (".psq", lambda b: b[:4] + b"\x07" + b[5:], "not NUL-terminated"),
    ],
    ids=["v5", "v3", "nucleotide", "short-pin", "short-psq", "short-phr", "separator"],
)
def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path, ext, change, message):
    prefix = _corrupt(tmp_path, ext, change)
    with pytest.raises(UserError, match=message) as e:
        BlastProteinDb(prefix)
    assert str(prefix) in str(e.value) and "\n" not in str(e.value)


def test_bad_header_and_bad_residue_name_the_record(tmp_path):
    # record 1's end-of-contents octets overwritten (same length, so the index still matches)
    prefix = _corrupt(tmp_path, ".phr", lambda b: b[:-2] + b"\x01\x05")
    db = BlastProteinDb(prefix)
    with pytest.raises(UserError, match=r"header of sequence 1 is not a valid Blast-def-line-set"):
        db.deflines(1)
    prefix = _corrupt(tmp_path, ".psq", lambda b: b[:1] + b"\x40" + b[2:])
    with pytest.raises(UserError, match=r"sequence 0 holds byte 64"):
        BlastProteinDb(prefix).sequence(0)


def test_missing_file_is_named(tmp_path):
    prefix = write_db(tmp_path / "m", [metastudent_record(0, "P12345", [], "MK")])
    prefix.with_name(prefix.name + ".phr").unlink()
    with pytest.raises(UserError, match=r"m\.phr: BLAST database file not found"):
        BlastProteinDb(prefix)


# ------------------------------------------------------------------------- the real package

ACCESSION = re.compile(r"[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){1,2}")


def real_database(ontology: str) -> BlastProteinDb:
    prefix = swissprot_dir() / "blastdb" / ontology / "goasp.fasta"
    if not prefix.with_name("goasp.fasta.pin").is_file():
        pytest.skip(f"metastudent-data not extracted at {prefix.parent} (run `lcplm data prepare-swissprot`)")
    return BlastProteinDb(prefix)


@pytest.mark.needs_shared_data
@pytest.mark.parametrize("ontology", ["MFO", "BPO", "CCO"])
def test_real_metastudent_database_reads_consistently(ontology):
    db = real_database(ontology)
    assert db.info.version == 4 and db.info.title == f"dataset_201401/{ontology}/goasp.fasta"
    assert 390_000 < len(db) < 490_000
    assert int(db.lengths.max()) == db.info.max_length == 35213  # the longest: a titin
    rng = np.random.default_rng(0)
    for i in sorted(rng.choice(len(db), 300, replace=False).tolist()) + [0, len(db) - 1]:
        (d,) = db.deflines(i)
        assert d.seq_ids == (f"gnl|BL_ORD_ID|{i}",)
        acc, _, go = record_id(d)[0].partition("|")
        assert ACCESSION.fullmatch(acc), acc
        assert re.fullmatch(r"GO:\d{7}(,GO:\d{7})*", go), go
        s = db.sequence(i)
        assert len(s) == db.lengths[i] and set(s) <= set(NCBISTDAA[1:])
