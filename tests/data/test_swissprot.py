"""`lcplm data prepare-swissprot` on a small fake metastudent-data package: merge, split,
idempotence, restart after an interruption, and the one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from blast_v4_writer import metastudent_record, write_db, write_deb

from lcplm.__main__ import main as cli
from lcplm.data import swissprot
from lcplm.data.cache import resolve_named_fasta, swissprot_dir
from lcplm.data.fasta import FastaIndex, id_hash, iter_fasta
from lcplm.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"


def _seq(rng, n):
    return "".join(rng.choice(list(AA), n))


def build_package(tmp_path, n=60, seed=0):
    """Three databases: accession Pxxxxx in MFO for all proteins, BPO repeats every other one
    (same sequence, other GO terms), CCO repeats every third and adds new ones; one conflict."""
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.choice([50, 200, 300, 700, 1500, 3000, 5000], n)]
    proteins = {f"P{10000 + i}": _seq(rng, L) for i, L in enumerate(lengths)}
    accs = list(proteins)
    mfo = [(a, [f"GO:{1000000 + i:07d}"], proteins[a]) for i, a in enumerate(accs)]
    bpo = [(a, [f"GO:{2000000 + i:07d}", f"GO:{2000000 + i:07d}"], proteins[a]) for i, a in enumerate(accs) if i % 2 == 0]
    extra = {f"Q{20000 + i}": _seq(rng, 120) for i in range(5)}
    cco = [(a, ["GO:0005575"], proteins[a]) for a in accs[::3]] + [(a, ["GO:0005575"], s) for a, s in extra.items()]
    cco[1] = (cco[1][0], cco[1][1], "M" + cco[1][2][1:] if cco[1][2][0] != "M" else "K" + cco[1][2][1:])  # conflict
    files = {}
    for onto, recs in (("MFO", mfo), ("BPO", bpo), ("CCO", cco)):
        prefix = write_db(tmp_path / "src" / onto / "goasp.fasta",
                          [metastudent_record(i, a, go, s) for i, (a, go, s) in enumerate(recs)],
                          title=f"dataset_201401/{onto}/goasp.fasta")
        for ext in (".pin", ".phr", ".psq"):
            files[f"{swissprot.DB_DIR}/{onto}/goasp.fasta{ext}"] = prefix.with_name(prefix.name + ext).read_bytes()
    files["usr/share/doc/metastudent-data/copyright"] = b"not a database\n"
    deb = write_deb(tmp_path / "metastudent-data_test_all.deb", files)
    truth = dict(proteins, **extra)
    return deb, truth, {"mfo": mfo, "bpo": bpo, "cco": cco, "conflict": cco[1][0]}


def _prepare(tmp_path, deb, **kw):
    lines = []
    m = swissprot.prepare_swissprot(str(tmp_path / "cache"), str(deb), log=lines.append, **kw)
    return m, "\n".join(lines)


def test_merges_by_accession_and_splits_by_length(tmp_path):
    deb, truth, parts = build_package(tmp_path)
    m, log = _prepare(tmp_path, deb, per_bin=3, max_fraction=0.5)
    d = swissprot_dir(tmp_path / "cache")
    records = {r.id: r for r in iter_fasta(d / "swissprot.fasta")}
    assert list(records) == sorted(truth)  # one record per accession, sorted
    assert {a: r.sequence for a, r in records.items()} == truth  # the conflict kept MFO's sequence
    assert m["merge"]["conflicts"] == 1 and m["merge"]["conflict_examples"] == [f"{parts['conflict']}: MFO vs CCO"]
    assert m["merge"]["merged_duplicates"] == len(parts["bpo"]) + len(parts["cco"]) - 5 - 1
    assert m["merge"]["records"] == {"MFO": 60, "BPO": len(parts["bpo"]), "CCO": len(parts["cco"])}
    # GO terms of every database, unique and sorted
    a0 = parts["mfo"][0][0]
    assert records[a0].description == "GO:0005575,GO:1000000,GO:2000000"
    # the split: train + heldout = all, disjoint, the per-bin rule on the id hash
    train = {r.id for r in iter_fasta(d / "train.fasta")}
    held = {r.id for r in iter_fasta(d / "heldout.fasta")}
    assert train | held == set(truth) and not train & held
    lengths = {a: len(s) for a, s in truth.items()}
    bins = {a: int(swissprot.length_bins(np.array([L]))[0]) for a, L in lengths.items()}
    for b in range(len(swissprot.LENGTH_BIN_EDGES) + 1):
        members = sorted((a for a in truth if bins[a] == b), key=lambda a: (id_hash(swissprot.HELDOUT_SALT + a), a))
        k = min(3, int(0.5 * len(members)))
        assert {a for a in members if a in held} == set(members[:k]), b
        assert m["length_bins"]["heldout"][b] == k and m["length_bins"]["proteins"][b] == len(members)
    assert any(lengths[a] > 4096 for a in held)  # long proteins are held out for extrapolation
    rows = [line.split("\t") for line in (d / "split.tsv").read_text().splitlines()[1:]]
    assert {r[0]: (int(r[1]), r[3]) for r in rows} == {a: (lengths[a], "heldout" if a in held else "train") for a in truth}
    # outputs are checksummed and indexed; named paths resolve to them
    for key, name in swissprot.OUTPUTS.items():
        assert m["outputs"][key]["sha256"] == swissprot.sha256_file(d / name)
    assert len(FastaIndex(d / "heldout.fasta", tmp_path / "cache")) == len(held)
    assert resolve_named_fasta("swissprot:heldout", tmp_path / "cache") == d / "heldout.fasta"
    assert "held out" in log and "timings:" in log


def test_a_second_run_is_a_no_op_and_damaged_outputs_are_rebuilt(tmp_path):
    deb, _, _ = build_package(tmp_path)
    m1, _ = _prepare(tmp_path, deb, per_bin=2)
    d = swissprot_dir(tmp_path / "cache")
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()}
    m2, log = _prepare(tmp_path, deb, per_bin=2)
    assert "already prepared" in log
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir() if p.is_file()} == before
    # a damaged output (same size, other bytes) is detected by its checksum and rebuilt
    f = d / "train.fasta"
    data = bytearray(f.read_bytes())
    data[-2] = ord("W") if data[-2] != ord("W") else ord("A")
    f.write_bytes(bytes(data))
    m3, log = _prepare(tmp_path, deb, per_bin=2)
    assert "already prepared" not in log and "already extracted" in log
    assert m3["outputs"] == m1["outputs"]
    # other split parameters make another split
    m4, _ = _prepare(tmp_path, deb, per_bin=1)
    assert m4["outputs"]["heldout"]["records"] < m1["outputs"]["heldout"]["records"]


def test_an_interrupted_run_restarts_cleanly_and_ends_identical(tmp_path, monkeypatch):
    deb, _, _ = build_package(tmp_path)
    clean, _ = _prepare(tmp_path / "clean", deb, per_bin=2)
    real = swissprot._fasta_line
    calls = {"n": 0}

    def dies_midway(*a):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt  # what Ctrl-C (or a kill between two writes) leaves behind
        return real(*a)

    monkeypatch.setattr(swissprot, "_fasta_line", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, deb, per_bin=2)
    d = swissprot_dir(tmp_path / "cache")
    assert not (d / "manifest.json").exists() and not (d / "swissprot.fasta").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="not prepared"):
        resolve_named_fasta("swissprot:train", tmp_path / "cache")
    # a killed process also leaves scratch folders and temp files: the next run removes them
    (d / ".extract-123").mkdir()
    (d / ".swissprot.fasta.999999.dead.tmp").write_text("partial")
    monkeypatch.setattr(swissprot, "_fasta_line", real)
    again, log = _prepare(tmp_path, deb, per_bin=2)
    assert "already extracted" in log
    assert again["outputs"] == clean["outputs"]
    assert not (d / ".extract-123").exists() and not (d / ".swissprot.fasta.999999.dead.tmp").exists()


def test_without_apt_the_cli_prints_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc = cli(["data", "prepare-swissprot", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "apt-get is not available" in err and "--deb" in err


def test_unknown_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(swissprot, "PACKAGE", "no-such-package-lcplm-test")
    if shutil.which("apt-cache") is None:
        pytest.skip("apt-cache not installed")
    with pytest.raises(UserError, match="apt knows no package 'no-such-package-lcplm-test'"):
        swissprot.apt_candidate("no-such-package-lcplm-test")


def test_a_deb_without_the_databases_is_named(tmp_path):
    deb = write_deb(tmp_path / "other.deb", {"usr/share/doc/x/copyright": b"x"})
    with pytest.raises(UserError, match=r"other\.deb: the package has no .*MFO/goasp\.fasta\.pin"):
        _prepare(tmp_path, deb)
    (tmp_path / "junk.deb").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a Debian package"):
        _prepare(tmp_path, tmp_path / "junk.deb")


@pytest.mark.needs_shared_data
def test_prepared_real_swissprot_is_consistent():
    d = swissprot_dir()
    if not (d / "manifest.json").is_file():
        pytest.skip(f"Swiss-Prot not prepared under {d} (run `lcplm data prepare-swissprot`)")
    m = json.loads((d / "manifest.json").read_text())
    assert m["deb"]["sha256"] == swissprot.KNOWN_DEBS["2.0.1-8"]
    assert m["outputs"]["all"]["records"] == 516_371 and m["merge"]["conflicts"] == 0
    assert m["outputs"]["train"]["records"] + m["outputs"]["heldout"]["records"] == 516_371
    held = FastaIndex(d / "heldout.fasta")
    assert len(held) == m["outputs"]["heldout"]["records"]
    assert int((np.asarray(held.lengths) > 2048).sum()) == sum(m["length_bins"]["heldout"][-2:]) > 1000
    assert os.path.getsize(d / "swissprot.fasta") == m["outputs"]["all"]["bytes"]
    # the held-out choice is independent of the training split's validation hash (it is salted)
    from lcplm.data.split import split_indices

    _, val = split_indices(np.asarray(FastaIndex(d / "train.fasta").id_hashes), 0.002)
    assert 800 < len(val) < 1250
