"""Downstream data readers on fixtures in the public formats (and on the shared data when present)."""

from __future__ import annotations

import gzip
import os
import pickle
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import shared_data
from downstream_fixtures import (
    scop_records, tape_records, write_astral, write_deepfri_table, write_ogbl_ppa, write_ogbn_proteins,
    write_string_links, write_tape_folder, write_tape_json, write_tape_lmdb,
)
from lcplm.data import benchmark_splits as bs
from lcplm.data import benchmarks as bm
from lcplm.errors import UserError

# ----------------------------------------------------------------------------- remote homology


def test_read_astral_parses_the_scop_lineage(tmp_path):
    recs = scop_records(classes="ab", folds=2, sfs=2, fams=2, domains=2)
    got = bm.read_astral(write_astral(tmp_path / "astral.fa", recs))
    assert len(got) == len(recs)
    r = got[5]
    rid, sccs, seq = recs[5]
    c, f, s, _ = sccs.split(".")
    assert (r.id, r.sequence, r.fold, r.superfamily, r.family) == (rid, seq, f"{c}.{f}", f"{c}.{f}.{s}", sccs)


def test_read_astral_rejects_a_header_without_sccs(tmp_path):
    p = tmp_path / "bad.fa"
    p.write_text(">d1abca_ a.1.1.1 (A:) ok\nACDE\n>d2xyza_ (A:) no lineage\nMKV\n")
    with pytest.raises(UserError, match=r"d2xyza_.*class.fold.superfamily.family"):
        bm.read_astral(p)


def _index(records):
    return {r.id: r for r in records}


def check_holdout_properties(splits):
    train = splits["train"]
    folds = {r.fold for r in train}
    sfs = {r.superfamily for r in train}
    fams = {r.family for r in train}
    ids = [r.id for rs in splits.values() for r in rs]
    assert len(ids) == len(set(ids)), "a domain is in two splits"
    for r in splits["test_fold_holdout"]:
        assert r.superfamily not in sfs and r.fold in folds
    for r in splits["test_superfamily_holdout"]:
        assert r.family not in fams and r.superfamily in sfs
    for r in splits["test_family_holdout"] + splits["valid"]:
        assert r.family in fams
    # every test set is a set of whole groups at its level: none of its superfamilies / families is split
    fold_test_sfs = {r.superfamily for r in splits["test_fold_holdout"]}
    sf_test_fams = {r.family for r in splits["test_superfamily_holdout"]}
    for name, rs in splits.items():
        if name != "test_fold_holdout":
            assert not fold_test_sfs & {r.superfamily for r in rs}
        if name != "test_superfamily_holdout":
            assert not sf_test_fams & {r.family for r in rs}


def test_astral_holdouts_have_tape_properties_and_follow_the_seed(tmp_path):
    recs = bm.read_astral(write_astral(tmp_path / "a.fa", scop_records(classes="abch", folds=5, sfs=3, fams=3, domains=3)))
    splits, report = bs.astral_holdout_splits(recs, seed=0, fold_test_frac=0.1, superfamily_test_frac=0.1,
                                              family_test_frac=0.1, valid_frac=0.05)
    check_holdout_properties(splits)
    assert all(len(v) > 0 for v in splits.values())
    assert report.n_excluded_classes == 5 * 3 * 3 * 3  # class h is left out, and counted
    assert sum(report.sizes.values()) + report.n_excluded_classes == len(recs)
    again, _ = bs.astral_holdout_splits(recs, seed=0, fold_test_frac=0.1, superfamily_test_frac=0.1,
                                        family_test_frac=0.1, valid_frac=0.05)
    other, _ = bs.astral_holdout_splits(recs, seed=1, fold_test_frac=0.1, superfamily_test_frac=0.1,
                                        family_test_frac=0.1, valid_frac=0.05)
    ids = lambda s: {k: [r.id for r in v] for k, v in s.items()}  # noqa: E731
    assert ids(again) == ids(splits)
    assert ids(other) != ids(splits)


def test_a_fold_with_one_superfamily_is_never_held_out_whole(tmp_path):
    recs = bm.read_astral(write_astral(tmp_path / "a.fa", scop_records(classes="a", folds=6, sfs=1, fams=1, domains=4)))
    splits, _ = bs.astral_holdout_splits(recs, seed=0, fold_test_frac=0.5, superfamily_test_frac=0.5)
    assert splits["test_fold_holdout"] == [] and splits["test_superfamily_holdout"] == []
    check_holdout_properties(splits)


@pytest.mark.needs_shared_data
def test_astral_shared_data_holdouts():
    recs = bm.read_astral(shared_data("homology", "astral-scope-2.07-40.fa"))
    assert len(recs) == 14323
    assert recs[0].id == "d1dlwa_" and recs[0].family == "a.1.1.1" and recs[0].sequence.startswith("SLFEQ")
    splits, report = bs.astral_holdout_splits(recs, seed=0)
    check_holdout_properties(splits)
    n = len(recs)
    assert abs(len(splits["test_fold_holdout"]) / n - 0.05) < 0.01
    assert abs(len(splits["test_superfamily_holdout"]) / n - 0.08) < 0.01


def test_tape_json_and_lmdb_read_the_same_records(tmp_path):
    recs = tape_records(7, seed=3)
    j = bm.read_tape_homology(write_tape_json(tmp_path / "remote_homology_train.json", recs))
    lm = bm.read_tape_homology(write_tape_lmdb(tmp_path / "remote_homology_train.lmdb", recs))
    assert j == lm
    assert [r.sequence for r in j] == [r["primary"] for r in recs]
    assert [r.fold for r in j] == [str(r["fold_label"]) for r in recs]
    assert j[0].superfamily == str(recs[0]["superfamily_label"]) and j[0].family == str(recs[0]["family_label"])


def test_tape_folder_reads_all_five_splits(tmp_path):
    splits = bm.read_tape_homology_splits(write_tape_folder(tmp_path / "remote_homology"))
    assert list(splits) == list(bm.TAPE_SPLITS)
    assert [len(v) for v in splits.values()] == [60, 12, 10, 10, 10]
    (tmp_path / "remote_homology" / "remote_homology_valid.json").unlink()
    with pytest.raises(UserError, match="remote_homology_valid"):
        bm.read_tape_homology_splits(tmp_path / "remote_homology")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_tape_lmdb_refuses_code_in_pickles(tmp_path):
    import lmdb

    env = lmdb.open(str(tmp_path / "x.lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"num_examples", pickle.dumps(1))
        txn.put(b"0", pickle.dumps({"primary": "MKV", "fold_label": 0, "superfamily_label": 0,
                                    "family_label": 0, "x": _Evil()}))
    env.close()
    with pytest.raises(UserError, match="record 0: cannot unpickle.*refusing"):
        bm.read_tape_homology(tmp_path / "x.lmdb")


def test_tape_bad_inputs(tmp_path):
    p = tmp_path / "remote_homology_train.json"
    p.write_text('[{"primary": "MKV", "fold_label": 1, "superfamily_label": 2}]')
    with pytest.raises(UserError, match="record 0 has no field 'family_label'"):
        bm.read_tape_homology(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        bm.read_tape_homology(p)
    with pytest.raises(UserError, match="not found"):
        bm.read_tape_homology(tmp_path / "missing.json")
    import lmdb

    env = lmdb.open(str(tmp_path / "e.lmdb"), map_size=1 << 20)
    env.close()
    with pytest.raises(UserError, match="no 'num_examples'"):
        bm.read_tape_homology(tmp_path / "e.lmdb")


# ----------------------------------------------------------------------------- function tables


def test_deepfri_ec_table(tmp_path):
    p = write_deepfri_table(tmp_path / "annot.tsv", ["1.1.1.1", "1.1.1.-", "2.7.7.7"],
                            [("1ABC-A", ["1.1.1.1", "1.1.1.-"]), ("2XYZ-B", ["2.7.7.7"])])
    t = bm.read_multilabel_table(p)
    assert t.column == "EC-numbers" and t.classes == ["1.1.1.1", "1.1.1.-", "2.7.7.7"]
    assert t.labels == {"1ABC-A": ["1.1.1.-", "1.1.1.1"], "2XYZ-B": ["2.7.7.7"]}
    assert t.matrix(["2XYZ-B", "1ABC-A"]).tolist() == [[0, 0, 1], [1, 1, 0]]


def test_deepfri_go_table_with_several_columns(tmp_path):
    p = tmp_path / "go.tsv"
    p.write_text(
        "### GO-terms (molecular_function)\nGO:1\tGO:2\n### GO-names (molecular_function)\nbinding\tcatalysis\n"
        "### GO-terms (biological_process)\nGO:7\n### GO-names (biological_process)\ngrowth\n"
        "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\n"
        "1ABC-A\tGO:2\tGO:7\n2DEF-A\t\tGO:7\n"
    )
    mf = bm.read_multilabel_table(p)
    assert mf.classes == ["GO:1", "GO:2"] and mf.labels == {"1ABC-A": ["GO:2"], "2DEF-A": []}
    bp = bm.read_multilabel_table(p, column="GO-terms (biological_process)")
    assert bp.classes == ["GO:7"] and bp.labels["2DEF-A"] == ["GO:7"]
    with pytest.raises(UserError, match="no label column 'CC'"):
        bm.read_multilabel_table(p, column="CC")


def test_plain_label_table_without_header(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("P1\tb,a\nP2\tc\n")
    t = bm.read_multilabel_table(p)
    assert t.classes == ["a", "b", "c"] and t.labels["P1"] == ["a", "b"]


@pytest.mark.parametrize("body, match", [
    ("### EC-numbers\n1.1.1.1\n### PDB-chain\tEC-numbers\nP1\t9.9.9.9\n", r":4: label '9.9.9.9' of 'P1' is not in"),
    ("### EC-numbers\n1.1.1.1\n### PDB-chain\tEC-numbers\nP1\t1.1.1.1\nP1\t1.1.1.1\n", r":5: protein 'P1' listed twice"),
    ("P1\ta\tb\n", r":1: expected 2 tab-separated fields, got 3"),
    ("### EC-numbers\n1.1.1.1\nP1\t1.1.1.1\n", "header block without"),
    ("### EC-numbers\n", "not followed by its line of items"),
    ("", "no labelled proteins"),
])
def test_label_table_errors(tmp_path, body, match):
    p = tmp_path / "t.tsv"
    p.write_text(body)
    with pytest.raises(UserError, match=match):
        bm.read_multilabel_table(p)


@pytest.mark.needs_shared_data
def test_deepfri_shared_data():
    t = bm.read_multilabel_table(shared_data("function", "deepfri_ec", "nrPDB-EC_2020.04_annot.tsv"))
    assert len(t.classes) == 538 and len(t.labels) == 19201
    seqs = bm.read_sequence_table(shared_data("function", "deepfri_ec", "nrPDB-EC_2020.04_test_sequences.fasta"))
    assert len(seqs) == 1920 and all(k in t.labels for k in seqs)
    assert t.labels["4PR3-A"] == sorted(["3.2.2.9", "3.2.2.-"])


# ----------------------------------------------------------------------------- OGB


def test_ogbn_proteins_folder(tmp_path):
    ref = write_ogbn_proteins(tmp_path / "ogbn_proteins")
    d = bm.read_ogbn_proteins(tmp_path / "ogbn_proteins")
    assert torch.equal(d.edge_index, torch.from_numpy(ref["edge"].T))
    assert torch.allclose(d.edge_attr, torch.from_numpy(ref["feat"]), atol=1e-6)
    assert torch.equal(d.y, torch.from_numpy(ref["y"]))
    assert torch.equal(d.species, torch.from_numpy(ref["species"]))
    for k in ("train", "valid", "test"):
        assert torch.equal(d.split[k], torch.from_numpy(np.sort(ref["split"][k])))
    assert d.protein_ids == ref["ids"]
    seqs = bm.sequences_for(d.protein_ids, ref["fasta"])
    assert len(seqs) == len(ref["ids"]) and all(seqs)


def test_ogbn_proteins_errors(tmp_path):
    write_ogbn_proteins(tmp_path / "o")
    (tmp_path / "o" / "raw" / "node-label.csv.gz").unlink()
    with pytest.raises(UserError, match="node-label.csv.gz: file not found"):
        bm.read_ogbn_proteins(tmp_path / "o")
    write_ogbn_proteins(tmp_path / "p")
    with gzip.open(tmp_path / "p" / "split" / "species" / "test.csv.gz", "wt") as f:
        f.write("0\n999\n")
    with pytest.raises(UserError, match="test.csv.gz: node index outside"):
        bm.read_ogbn_proteins(tmp_path / "p")
    with pytest.raises(UserError, match="no sequence for 1 of 2 proteins"):
        bm.sequences_for(["9999.UNRELATED", "nope"], tmp_path / "protein.sequences.fa.gz")


@pytest.mark.parametrize("as_numpy", [False, True])
def test_ogbl_ppa_folder(tmp_path, as_numpy):
    ref = write_ogbl_ppa(tmp_path / "ogbl_ppa", as_numpy=as_numpy)
    d = bm.read_ogbl_ppa(tmp_path / "ogbl_ppa")
    assert d.num_nodes == 40 and d.node_feat.shape == (40, 3)
    assert torch.equal(d.edge_index, torch.from_numpy(ref["train"].T))
    assert torch.equal(d.split_edge["valid"]["edge_neg"], torch.from_numpy(ref["neg_v"]))
    assert torch.equal(d.split_edge["test"]["edge"], torch.from_numpy(ref["test"]))
    assert d.protein_ids == ref["ids"]


def test_ogbl_ppa_errors(tmp_path):
    write_ogbl_ppa(tmp_path / "a")
    torch.save({"edge": torch.zeros(3, 2, dtype=torch.long)}, tmp_path / "a" / "split" / "throughput" / "test.pt")
    with pytest.raises(UserError, match="test.pt: no 'edge_neg'"):
        bm.read_ogbl_ppa(tmp_path / "a")
    (tmp_path / "a" / "split" / "throughput" / "valid.pt").write_bytes(pickle.dumps({"edge": _Evil()}))
    with pytest.raises(UserError, match="valid.pt: cannot read"):
        bm.read_ogbl_ppa(tmp_path / "a")


# ----------------------------------------------------------------------------- PPI pairs


def test_labelled_pairs_header_duplicates_and_conflicts(tmp_path):
    p = tmp_path / "pairs.tsv"
    p.write_text("protein1\tprotein2\tlabel\nA\tB\t1\nB\tA\t1.0\nA\tC\t0\nC\tD\t1\nD\tC\t0\n")
    with pytest.raises(UserError, match=r":6: pair D C appears earlier with label 1"):
        bm.read_labelled_pairs(p)
    pairs = bm.read_labelled_pairs(p, on_conflict="drop")
    assert pairs.n_duplicates == 1 and pairs.n_conflicts == 1
    got = {(pairs.names[a], pairs.names[b], y) for a, b, y in zip(pairs.a, pairs.b, pairs.y)}
    assert got == {("A", "B", 1.0), ("A", "C", 0.0)}


@pytest.mark.parametrize("body, match", [
    ("A B 1\nA C 0.5\n", r":2: label must be 0 or 1"),
    ("A B 1\nA C\n", r":2: expected 'id1 id2 label', got 2 fields"),
    ("A B 1\nA C yes\n", r":2: label 'yes' is not a number"),
    ("x y label\n", "no labelled pairs"),
])
def test_labelled_pairs_errors(tmp_path, body, match):
    p = tmp_path / "p.tsv"
    p.write_text(body)
    with pytest.raises(UserError, match=match):
        bm.read_labelled_pairs(p)


def test_string_pairs_positives_above_threshold_and_disjoint_negatives(tmp_path):
    ids = [f"4932.Y{i:03d}" for i in range(30)]
    rows = [(ids[i], ids[i + 1], 900) for i in range(0, 28)] + [(ids[0], ids[5], 150), (ids[2], "4932.NOSEQ", 999)]
    links = write_string_links(tmp_path / "links.txt.gz", rows)
    pairs = bs.string_pairs(links, ids, seed=0, min_score=700, negatives_per_positive=2.0)
    pos = {(pairs.names[a], pairs.names[b]) for a, b, y in zip(pairs.a, pairs.b, pairs.y) if y == 1}
    neg = {(pairs.names[a], pairs.names[b]) for a, b, y in zip(pairs.a, pairs.b, pairs.y) if y == 0}
    assert pos == {tuple(sorted((ids[i], ids[i + 1]))) for i in range(28)}
    assert len(neg) == 56 and not pos & neg and all(a != b for a, b in neg)
    assert (tuple(sorted((ids[0], ids[5]))) not in pos)  # below the threshold
    again = bs.string_pairs(links, ids, seed=0, min_score=700, negatives_per_positive=2.0)
    assert np.array_equal(again.a, pairs.a) and np.array_equal(again.b, pairs.b)


def _pairs(n_prot=60, n_pairs=400, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_prot, n_pairs)
    b = (a + rng.integers(1, n_prot, n_pairs)) % n_prot
    return bm.LabelledPairs("x", [f"p{i}" for i in range(n_prot)], a, b, rng.integers(0, 2, n_pairs).astype(np.float32))


def test_split_pairs_by_pair_is_a_seeded_partition():
    p = _pairs()
    s = bs.split_pairs(p, 0, 0.1, 0.2)
    allidx = np.sort(np.concatenate(list(s.values())))
    assert np.array_equal(allidx, np.arange(len(p)))
    assert len(s["test"]) == 80 and len(s["valid"]) == 40
    assert all(np.array_equal(s[k], bs.split_pairs(p, 0, 0.1, 0.2)[k]) for k in s)
    assert not np.array_equal(s["test"], bs.split_pairs(p, 1, 0.1, 0.2)["test"])


def test_split_pairs_by_protein_keeps_held_out_proteins_out_of_training():
    p = _pairs()
    s = bs.split_pairs(p, 0, 0.1, 0.2, by="protein")
    assert np.array_equal(np.sort(np.concatenate(list(s.values()))), np.arange(len(p)))  # nothing dropped
    train_prot = set(p.a[s["train"]]) | set(p.b[s["train"]])
    for k in ("valid", "test"):
        assert len(s[k]) > 0
        # every held-out pair has a protein that no training pair contains
        for i in s[k]:
            assert p.a[i] not in train_prot or p.b[i] not in train_prot
    held = (set(p.a[s["test"]]) | set(p.b[s["test"]])) - train_prot
    assert held and not held & train_prot
    with pytest.raises(UserError, match="pair split must be"):
        bs.split_pairs(p, 0, by="species")


@pytest.mark.needs_shared_data
def test_yeast_guo_and_dscript_shared_pairs():
    guo = bm.read_labelled_pairs(shared_data("ppi", "yeast_guo", "protein.actions.tsv"))
    assert len(guo) + guo.n_duplicates == 11188 and guo.n_duplicates == 24
    assert Counter(guo.y.tolist()) == Counter({1.0: int(guo.y.sum()), 0.0: len(guo) - int(guo.y.sum())})
    seqs = bm.read_sequence_table(shared_data("ppi", "yeast_guo", "protein.dictionary.tsv"))
    assert all(n in seqs for n in guo.names)
    with pytest.raises(UserError, match="appears earlier with label"):
        bm.read_labelled_pairs(shared_data("ppi", "dscript", "yeast_test.tsv"))
    ds = bm.read_labelled_pairs(shared_data("ppi", "dscript", "yeast_test.tsv"), on_conflict="drop")
    assert ds.n_conflicts == 4
