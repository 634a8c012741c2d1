"""Small data sets written in the exact public formats the downstream readers take.

Everything is synthetic but laid out byte for byte like the real files: ASTRAL FASTA headers,
TAPE JSON / LMDB (pickled dicts with numpy fields), DeepFRI annotation tables, OGB raw
csv.gz folders and split files, STRING links, labelled pair tables.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import torch

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_protein(rng: np.random.Generator, n: int, bias: int = 0) -> str:
    # a per-class preference for some residues makes the fixtures learnable
    p = np.ones(20)
    p[(bias * 3) % 20 : (bias * 3) % 20 + 3] += 6
    return "".join(rng.choice(list(AA), n, p=p / p.sum()))


def scop_records(seed: int = 0, classes: str = "abc", folds: int = 4, sfs: int = 3, fams: int = 3,
                 domains: int = 3) -> list[tuple[str, str, str]]:
    """(id, sccs, sequence) for a full SCOP-like hierarchy."""
    rng = np.random.default_rng(seed)
    out = []
    k = 0
    for c in classes:
        for f in range(1, folds + 1):
            for s in range(1, sfs + 1):
                for fa in range(1, fams + 1):
                    for _ in range(domains):
                        out.append((f"d{k:04d}a_", f"{c}.{f}.{s}.{fa}", random_protein(rng, int(rng.integers(20, 60)), f)))
                        k += 1
    return out


def write_astral(path: Path, records: list[tuple[str, str, str]]) -> Path:
    with open(path, "w") as f:
        for rid, sccs, seq in records:
            f.write(f">{rid} {sccs} (A:) Some protein {{Organism [TaxId: 1]}}\n")
            low = seq.lower()
            for i in range(0, len(low), 60):
                f.write(low[i : i + 60] + "\n")
    return path


def tape_records(n: int, seed: int, fold_offset: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        fold = int(rng.integers(0, 3)) + fold_offset
        seq = random_protein(rng, int(rng.integers(15, 40)), fold)
        recs.append({
            "id": f"d{seed}{i:03d}",
            "primary": seq,
            "protein_length": len(seq),
            "class_label": 0,
            "fold_label": fold,
            "superfamily_label": fold * 10 + int(rng.integers(0, 2)),
            "family_label": fold * 100 + int(rng.integers(0, 2)),
            "secondary_structure": rng.integers(0, 3, len(seq)),
            "solvent_accessibility": rng.integers(0, 2, len(seq)),
            "evolutionary": rng.random((len(seq), 30)).astype(np.float32),
        })
    return recs


def write_tape_json(path: Path, records: list[dict]) -> Path:
    # TAPE's JSON files hold lists, not numpy arrays
    plain = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in records]
    path.write_text(json.dumps(plain))
    return path


def write_tape_lmdb(path: Path, records: list[dict]) -> Path:
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"num_examples", pickle.dumps(len(records)))
        for i, r in enumerate(records):
            txn.put(str(i).encode(), pickle.dumps(r))
    env.close()
    return path


def write_tape_folder(root: Path, sizes=(60, 12, 10, 10, 10)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    splits = ("train", "valid", "test_fold_holdout", "test_superfamily_holdout", "test_family_holdout")
    for k, (split, n) in enumerate(zip(splits, sizes)):
        recs = tape_records(n, seed=k)
        if k % 2:
            write_tape_json(root / f"remote_homology_{split}.json", recs)
        else:
            write_tape_lmdb(root / f"remote_homology_{split}.lmdb", recs)
    return root


def write_deepfri_table(path: Path, classes: list[str], rows: list[tuple[str, list[str]]]) -> Path:
    with open(path, "w") as f:
        f.write("### EC-numbers\n")
        f.write("\t".join(classes) + "\n")
        f.write("### PDB-chain\tEC-numbers\n")
        for pid, labs in rows:
            f.write(f"{pid}\t{','.join(labs)}\n")
    return path


def function_fixture(root: Path, n: int = 90, seed: int = 0) -> tuple[Path, Path]:
    """DeepFRI-style EC table (4 classes) + FASTA; label k makes residues of class k likelier."""
    rng = np.random.default_rng(seed)
    classes = ["1.1.1.1", "1.1.1.-", "2.7.11.1", "3.4.21.-"]
    rows, fasta = [], []
    for i in range(n):
        k = int(rng.integers(0, 4))
        labs = [classes[k]] + ([classes[1]] if k == 0 else [])
        rows.append((f"{i:03d}X-A", labs))
        fasta.append((f"{i:03d}X-A", random_protein(rng, int(rng.integers(20, 50)), k)))
    table = write_deepfri_table(root / "annot.tsv", classes, rows)
    fa = root / "seqs.fasta"
    fa.write_text("".join(f">{pid} nrPDB\n{seq}\n" for pid, seq in fasta))
    return table, fa


def ppi_fixture(root: Path, n_prot: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Guo-style ``acc<TAB>seq`` dictionary and ``a<TAB>b<TAB>label`` pairs; proteins of the same
    group interact."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n_prot)
    ids = [f"P{i:05d}" for i in range(n_prot)]
    (root / "dict.tsv").write_text("".join(f"{p}\t{random_protein(rng, 30, int(g))}\n" for p, g in zip(ids, group)))
    lines = set()
    while len(lines) < 160:
        a, b = (int(x) for x in rng.integers(0, n_prot, 2))
        if a != b and (b, a) not in {(x, y) for x, y, _ in lines}:
            lines.add((a, b, int(group[a] == group[b])))
    (root / "actions.tsv").write_text("".join(f"{ids[a]}\t{ids[b]}\t{y}\n" for a, b, y in sorted(lines)))
    return root / "actions.tsv", root / "dict.tsv"


def _csv_gz(path: Path, arr: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, np.atleast_2d(arr) if arr.ndim > 1 else arr[:, None], delimiter=",", fmt=fmt)


def write_ogbn_proteins(root: Path, n: int = 30, e: int = 60, tasks: int = 5, seed: int = 0) -> dict:
    """An ``ogbn_proteins`` folder with OGB's layout and a STRING-style FASTA for its proteins."""
    rng = np.random.default_rng(seed)
    edge = rng.integers(0, n, (e, 2))
    edge = edge[edge[:, 0] != edge[:, 1]]
    feat = rng.random((len(edge), 8)).astype(np.float32)
    y = (rng.random((n, tasks)) < 0.4).astype(np.int64)
    species = rng.choice([3702, 4932, 9606], n)
    raw = root / "raw"
    _csv_gz(raw / "edge.csv.gz", edge, "%d")
    _csv_gz(raw / "edge-feat.csv.gz", feat, "%.6f")
    _csv_gz(raw / "node-label.csv.gz", y, "%d")
    _csv_gz(raw / "node_species.csv.gz", species, "%d")
    _csv_gz(raw / "num-node-list.csv.gz", np.array([n]), "%d")
    _csv_gz(raw / "num-edge-list.csv.gz", np.array([len(edge)]), "%d")
    perm = rng.permutation(n)
    split = {"train": perm[: n // 2], "valid": perm[n // 2 : 3 * n // 4], "test": perm[3 * n // 4 :]}
    for k, v in split.items():
        _csv_gz(root / "split" / "species" / f"{k}.csv.gz", np.sort(v), "%d")
    ids = [f"{species[i]}.PROT{i:04d}" for i in range(n)]
    (root / "mapping").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "mapping" / "nodeidx2proteinid.csv.gz", "wt") as f:
        f.write("node idx,protein id\n")
        f.writelines(f"{i},{p}\n" for i, p in enumerate(ids))
    fasta = root.parent / "protein.sequences.fa.gz"
    with gzip.open(fasta, "wt") as f:
        f.write(">9999.UNRELATED\nMKV\n")  # proteins not in the graph are skipped
        f.writelines(f">{p}\n{random_protein(rng, 25, int(y[i].argmax()))}\n" for i, p in enumerate(ids))
    return {"edge": edge, "feat": feat, "y": y, "species": species, "split": split, "ids": ids, "fasta": fasta}


def write_ogbl_ppa(root: Path, n: int = 40, seed: int = 0, as_numpy: bool = False) -> dict:
    """An ``ogbl_ppa`` folder: raw csv.gz graph + node features, split/throughput/*.pt, mapping."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)

    def edges(k):
        out = []
        while len(out) < k:
            a, b = (int(x) for x in rng.integers(0, n, 2))
            if a != b and group[a] == group[b]:
                out.append((a, b))
        return np.asarray(out, np.int64)

    train, valid, test = edges(80), edges(15), edges(15)
    neg_v = rng.integers(0, n, (50, 2))
    neg_t = rng.integers(0, n, (50, 2))
    raw = root / "raw"
    _csv_gz(raw / "edge.csv.gz", train, "%d")
    _csv_gz(raw / "node-feat.csv.gz", np.eye(3)[group].astype(np.float32), "%.1f")
    _csv_gz(raw / "num-node-list.csv.gz", np.array([n]), "%d")
    _csv_gz(raw / "num-edge-list.csv.gz", np.array([len(train)]), "%d")
    sd = root / "split" / "throughput"
    sd.mkdir(parents=True, exist_ok=True)
    conv = (lambda a: a) if as_numpy else torch.from_numpy
    torch.save({"edge": conv(train)}, sd / "train.pt")
    torch.save({"edge": conv(valid), "edge_neg": conv(neg_v)}, sd / "valid.pt")
    torch.save({"edge": conv(test), "edge_neg": conv(neg_t)}, sd / "test.pt")
    ids = [f"ppa{i:04d}" for i in range(n)]
    (root / "mapping").mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "mapping" / "nodeidx2proteinid.csv.gz", "wt") as f:
        f.write("node idx,protein id\n")
        f.writelines(f"{i},{p}\n" for i, p in enumerate(ids))
    fasta = root.parent / "ppa.fasta"
    fasta.write_text("".join(f">{p}\n{random_protein(rng, 25, int(g))}\n" for p, g in zip(ids, group)))
    return {"train": train, "valid": valid, "test": test, "neg_v": neg_v, "neg_t": neg_t, "ids": ids, "fasta": fasta}


def write_string_links(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("protein1 protein2 combined_score\n")
        f.writelines(f"{a} {b} {s}\n" for a, b, s in rows)
    return path


def write_string_actions(path: Path, rows: list[tuple[str, str, str, str, str, str, int]]) -> Path:
    """A STRING ``protein.actions`` file: tab-separated, STRING's header, one line per action."""
    with open(path, "w") as f:
        f.write("item_id_a\titem_id_b\tmode\taction\tis_directional\ta_is_acting\tscore\n")
        f.writelines("\t".join(map(str, r)) + "\n" for r in rows)
    return path


def actions_fixture(root: Path, n_prot: int = 48, n_pairs: int = 150, seed: int = 0) -> tuple[Path, Path]:
    """STRING-style actions between proteins of 4 groups (SHS27k layout: actions file + ``id<TAB>seq``
    dictionary). Every pair binds; same-group pairs also catalyse, pairs with a group-0 member
    also activate (listed in both directions, as STRING lists directional actions)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 4, n_prot)
    ids = [f"9606.ENSP{i:05d}" for i in range(n_prot)]
    (root / "actions_dict.tsv").write_text("".join(f"{p}\t{random_protein(rng, 30, int(g))}\n" for p, g in zip(ids, group)))
    seen, rows = set(), []
    while len(seen) < n_pairs:
        a, b = (int(x) for x in rng.integers(0, n_prot, 2))
        if a == b or (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        score = int(rng.integers(150, 999))
        rows.append((ids[a], ids[b], "binding", "", "f", "f", score))
        if group[a] == group[b]:
            rows.append((ids[a], ids[b], "catalysis", "", "f", "f", score))
        if 0 in (group[a], group[b]):
            rows.append((ids[a], ids[b], "activation", "activation", "t", "t", score))
            rows.append((ids[b], ids[a], "activation", "activation", "t", "f", score))
    return write_string_actions(root / "actions.txt", rows), root / "actions_dict.tsv"
