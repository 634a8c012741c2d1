"""FASTA reader formats and errors; FastaIndex random access equals streaming, and is reused."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from lcplm.data.fasta import FastaIndex, FastaRecord, id_hash, iter_fasta
from lcplm.errors import UserError

RECORDS = [
    FastaRecord("sp|P1|A", "first protein OS=Test", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"),
    FastaRecord("P2", "", "mkv*"),
    FastaRecord("P3", "wrapped over lines", "ACDEFGHIKLMNPQRSTVWY" * 7 + "XBZ"),
    FastaRecord("P4", "a\ttab", "M"),
]


def fasta_text(records=RECORDS, width: int = 60, newline: str = "\n", blank_lines: bool = False) -> str:
    out = []
    for r in records:
        out.append(f">{r.id}" + (f" {r.description}" if r.description else ""))
        out += [r.sequence[i : i + width] for i in range(0, len(r.sequence), width)]
        if blank_lines:
            out.append("")
    return newline.join(out) + newline


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def bgzip(src: bytes, dest: Path, block: int = 37) -> Path:
    """A BGZF file with deliberately tiny blocks, so records straddle block boundaries."""
    from Bio import bgzf

    w = bgzf.BgzfWriter(str(dest), "wb")
    for i in range(0, len(src), block):
        w.write(src[i : i + block])
        w.flush()  # ends the block
    w.close()
    return dest


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPLM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "variant",
    ["plain", "one_line", "crlf", "blank_lines", "gzip", "bgzf"],
)
def test_reader_formats(tmp_path: Path, variant: str):
    if variant == "plain":
        p = write(tmp_path / "x.fa", fasta_text())
    elif variant == "one_line":
        p = write(tmp_path / "x.fa", fasta_text(width=10_000))
    elif variant == "crlf":
        p = write(tmp_path / "x.fa", fasta_text(newline="\r\n"))
    elif variant == "blank_lines":
        p = write(tmp_path / "x.fa", "\n\n" + fasta_text(blank_lines=True) + "\n\n")
    elif variant == "gzip":
        p = write(tmp_path / "x.fa.gz", gzip.compress(fasta_text().encode()))
    else:
        p = bgzip(fasta_text().encode(), tmp_path / "x.fa.gz")
    assert list(iter_fasta(p)) == RECORDS


def test_last_line_without_newline_and_description_whitespace(tmp_path: Path):
    p = write(tmp_path / "x.fa", ">a  desc  with   spaces \nMK\nVL")
    assert list(iter_fasta(p)) == [FastaRecord("a", "desc  with   spaces", "MKVL")]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty file"),
        (b"\n\n  \n", "empty file"),
        (b"MKVL\n>a\nMK\n", "line 1: sequence data before the first '>'"),
        (b"\n\nMKVL\n>a\nMK\n", "line 3: sequence data before the first '>'"),
        (b">a\nMK\n>b desc\n>c\nMK\n", "record 'b' (line 3) has no sequence"),
        (b">a\nMK\n>b\n\n", "record 'b' (line 3) has no sequence"),
        (b">a\nMK\n>b\n*\n", "record 'b' (line 3) has no sequence"),
        (b">a\nMK\n>\nMK\n", "line 3: header line has no id"),
        (b"id1\tMKVL\nid2\tMKK\n", "line 1: sequence data before the first '>'"),  # a TSV, not FASTA
    ],
)
def test_reader_errors_name_file_and_place(tmp_path: Path, content: bytes, fragment: str):
    p = write(tmp_path / "bad.fa", content)
    for read in (lambda: list(iter_fasta(p)), lambda: FastaIndex(p)):
        with pytest.raises(UserError) as e:
            read()
        assert fragment in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        list(iter_fasta(tmp_path / "absent.fa"))
    with pytest.raises(UserError, match="not found"):
        FastaIndex(tmp_path / "absent.fa")
    with pytest.raises(UserError, match="directory"):
        list(iter_fasta(tmp_path))


def test_truncated_gzip(tmp_path: Path):
    data = gzip.compress(fasta_text(RECORDS * 50).encode())
    p = write(tmp_path / "x.fa.gz", data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        list(iter_fasta(p))
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        FastaIndex(p)


@pytest.mark.parametrize("kind", ["plain", "gzip", "bgzf"])
def test_index_random_access_equals_streaming(tmp_path: Path, kind: str):
    rng = np.random.default_rng(0)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWYacdX"))
    records = [
        FastaRecord(f"r{i}", f"protein {i}", "".join(rng.choice(aa, int(rng.integers(1, 300)))) + ("*" if i % 5 == 0 else ""))
        for i in range(300)
    ]
    text = fasta_text(records, width=int(rng.integers(20, 80)))
    if kind == "plain":
        p = write(tmp_path / "x.fa", text)
    elif kind == "gzip":
        p = write(tmp_path / "x.fa.gz", gzip.compress(text.encode()))
    else:
        p = bgzip(text.encode(), tmp_path / "x.fa.gz", block=501)
    idx = FastaIndex(p)
    assert idx.kind == kind and len(idx) == 300
    streamed = list(iter_fasta(p))
    assert streamed == records
    order = rng.permutation(300)
    assert [idx[int(i)] for i in order] == [records[i] for i in order]
    assert idx[-1] == records[-1]
    assert list(idx.ids) == [r.id for r in records]
    assert idx.lengths.tolist() == [len(r.sequence.rstrip("*")) for r in records]
    assert idx.id_hashes.tolist() == [id_hash(r.id) for r in records]
    with pytest.raises(IndexError):
        idx[300]
    clone = pickle.loads(pickle.dumps(idx))  # what a spawned DataLoader worker receives
    assert clone[7] == records[7] and len(clone) == 300


def test_index_lives_in_the_cache_and_is_reused(tmp_path: Path):
    src = tmp_path / "ro"
    src.mkdir()
    p = write(src / "x.fa", fasta_text())
    os.chmod(src, 0o555)  # the input folder is read-only, like ../shared/data
    try:
        idx = FastaIndex(p, cache_dir=tmp_path / "c")
        assert idx.dir.is_relative_to(tmp_path / "c") and sorted(os.listdir(src)) == ["x.fa"]
        stamp = (idx.dir / "meta.json").stat().st_mtime_ns
        again = FastaIndex(p, cache_dir=tmp_path / "c")
        assert (again.dir / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    finally:
        os.chmod(src, 0o755)
    # a changed input (size / mtime) is re-indexed
    write(p, fasta_text(RECORDS[:2]))
    assert len(FastaIndex(p, cache_dir=tmp_path / "c")) == 2


def test_plain_gzip_is_decompressed_once_with_an_info_line(tmp_path: Path, capsys):
    p = write(tmp_path / "x.fa.gz", gzip.compress(fasta_text().encode()))
    FastaIndex(p)
    assert "decompressing it once" in capsys.readouterr().err
    FastaIndex(p)
    assert capsys.readouterr().err == ""


@pytest.mark.needs_shared_data
def test_shared_dscript_fasta(tmp_path: Path):
    p = shared_data("ppi", "dscript", "yeast.fasta")
    idx = FastaIndex(p, cache_dir=tmp_path)
    assert len(idx) == 5664 and idx.ids[0].startswith("4932.")
    for i, rec in enumerate(iter_fasta(p)):
        if i % 97 == 0:
            assert idx[i] == rec and idx.lengths[i] == len(rec.sequence.rstrip("*"))


def _index_len(args) -> tuple[int, str]:
    path, cache = args
    idx = FastaIndex(path, cache_dir=cache)
    return len(idx), idx[len(idx) // 2].sequence


def test_concurrent_builders_agree(tmp_path: Path):
    """Ranks that index the same file at once (no prepare_data barrier) all get a valid index."""
    import multiprocessing as mp

    p = write(tmp_path / "x.fa", fasta_text(RECORDS * 3000))
    with mp.get_context("fork").Pool(3) as pool:
        results = pool.map(_index_len, [(p, tmp_path / "c")] * 3)
    assert results == [(len(RECORDS) * 3000, RECORDS[0].sequence)] * 3


# ---- one definition of a residue (lcplm.data.tokenizer) shared by the index and the tokenizer


@pytest.mark.parametrize("bad", [b"\x1c", b"\x1d", b"\x1e", b"\x1f", b"\x85", b"\xa0", b"\x00", b"@"])
def test_bytes_that_are_not_residues_are_errors_naming_record_and_line(tmp_path: Path, bad: bytes):
    """Before: 0x1C-0x1F, 0x85 and 0xA0 counted as residues in the index while the tokenizer
    dropped them (str.split() whitespace), so lengths disagreed; a record made only of them
    indexed fine and stopped training mid-run."""
    for content, line in [(b">a\nMKV\n>b desc\nMK" + bad + b"V\nLL\n", 4), (b">a\nMKV\n>b\n" + bad * 3 + b"\n", 4)]:
        p = write(tmp_path / "bad.fa", content)
        for read in (lambda: list(iter_fasta(p)), lambda: FastaIndex(p)):
            with pytest.raises(UserError) as e:
                read()
            msg = str(e.value)
            assert f"record 'b', line {line}" in msg and "is not a residue" in msg and "\n" not in msg


def test_index_lengths_equal_tokenizer_lengths_and_unk_is_counted(tmp_path: Path):
    from lcplm.data.tokenizer import UNK, encode_residues

    recs = [("a", "MK*V*"), ("b", "mk1v2"), ("c", "M K\tV\x0bW\x0c"), ("d", "MJ-.X"), ("e", "ACD**")]
    p = write(tmp_path / "x.fa", "".join(f">{i}\n{s}\n" for i, s in recs))
    idx = FastaIndex(p)
    want = [len(encode_residues(s)) for _, s in recs]
    assert idx.lengths.tolist() == want == [4, 5, 4, 5, 4]
    n_unk = sum(int((encode_residues(s) == UNK).sum()) for _, s in recs)
    c = idx.counts
    assert (c.records, c.residues, c.unk, c.unk_records, c.unk_example) == (5, sum(want), n_unk, 4, "a") and n_unk == 5
    assert "5 characters read as <unk>" in c.unk_note() and "in 4 records" in c.unk_note()


def test_truncated_bgzf_is_one_line(tmp_path: Path):
    """Before: a BGZF file cut inside a block header raised struct.error from Bio.bgzf."""
    data = bgzip(fasta_text(RECORDS * 40).encode(), tmp_path / "full.fa.gz", block=501).read_bytes()
    for cut in (20, 30, len(data) // 2, len(data) - 40):
        p = write(tmp_path / f"cut{cut}.fa.gz", data[:cut])
        for read in (lambda: list(iter_fasta(p)), lambda: FastaIndex(p)):
            with pytest.raises(UserError, match="corrupt or truncated") as e:
                read()
            assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_bgzf_cut_at_a_block_boundary_is_not_silently_shorter(tmp_path: Path):
    from Bio import bgzf

    data = bgzip(fasta_text(RECORDS * 40).encode(), tmp_path / "full.fa.gz", block=501).read_bytes()
    with open(tmp_path / "full.fa.gz", "rb") as fh:
        starts = [start for start, *_ in bgzf.BgzfBlocks(fh)]
    p = write(tmp_path / "cut.fa.gz", data[: starts[len(starts) // 2]])  # whole blocks, records lost
    for read in (lambda: list(iter_fasta(p)), lambda: FastaIndex(p)):
        with pytest.raises(UserError, match="no end-of-file marker"):
            read()
