"""Readers for the downstream data sets, in their public formats (their seeded splits are in
:mod:`lcplm.data.benchmark_splits`).

Remote homology (fold classification):

* TAPE's files ``remote_homology_{split}.json`` (a JSON list of records) or ``.lmdb`` (an LMDB
  folder: key ``num_examples`` -> pickled int, keys ``"0"``, ``"1"``, ... -> pickled record
  dicts), with the fields ``primary``, ``fold_label``, ``superfamily_label``, ``family_label``;
  splits ``train``, ``valid``, ``test_fold_holdout``, ``test_superfamily_holdout``,
  ``test_family_holdout``. Pickles are read with an allow-list (plain containers and numpy
  arrays only), so a file cannot run code.
* SCOPe/ASTRAL FASTA (``>d1dlwa_ a.1.1.1 (A:) description``), from which
  :func:`lcplm.data.benchmark_splits.astral_holdout_splits` builds TAPE-style hold-outs.

Function (multi-label): a table ``id<TAB>label1,label2`` optionally preceded by DeepFRI's
header block (``### EC-numbers`` then a line listing every class; GO files list one block
per ontology and name the label columns in ``### PDB-chain<TAB>...``), and OGB's
ogbn-proteins folder (``raw/``, ``split/species/``, ``mapping/nodeidx2proteinid.csv.gz``).

PPI links: labelled pair tables (``id1 id2 label`` with labels 0/1) and OGB's ogbl-ppa folder
(``raw/``, ``split/throughput/{train,valid,test}.pt``). STRING links and actions are read by
:mod:`lcplm.data.edge_lists`.

Bad input is a :class:`~lcplm.errors.UserError` naming the file and the record or line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lcplm.data.fasta import iter_fasta
from lcplm.data.edge_lists import table_lines
from lcplm.data.ppi_graph import read_sequence_table
from lcplm.errors import UserError

TAPE_SPLITS = ("train", "valid", "test_fold_holdout", "test_superfamily_holdout", "test_family_holdout")
HOLDOUT_SPLITS = TAPE_SPLITS[2:]

# ---------------------------------------------------------------------------------------------
# Remote homology
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HomologyRecord:
    """One domain with its SCOP(e) lineage; labels are strings (``"a.1"`` or TAPE's ``"12"``)."""

    id: str
    sequence: str
    fold: str
    superfamily: str
    family: str


def _numpy_multiarray():
    try:
        return np._core.multiarray  # numpy >= 2
    except AttributeError:
        return np.core.multiarray


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and numpy arrays only (TAPE's records), nothing executable."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)  # pickles from numpy 1 name numpy.core
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)")


def _safe_unpickle(raw: bytes):
    return _AllowListUnpickler(io.BytesIO(raw)).load()


def _read_tape_lmdb(path: Path) -> list[dict]:
    import lmdb

    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                        subdir=path.is_dir(), max_readers=1)
    except lmdb.Error as e:
        raise UserError(f"{path}: not an LMDB database ({e})") from None
    try:
        with env.begin(write=False) as txn:
            raw = txn.get(b"num_examples")
            if raw is None:
                raise UserError(f"{path}: LMDB has no 'num_examples' key (not a TAPE file?)")
            n = int(_safe_unpickle(raw))
            records = []
            for i in range(n):
                raw = txn.get(str(i).encode())
                if raw is None:
                    raise UserError(f"{path}: record {i} of {n} is missing")
                try:
                    records.append(_safe_unpickle(raw))
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
                    raise UserError(f"{path}: record {i}: cannot unpickle ({e})") from None
        return records
    finally:
        env.close()


def read_tape_homology(path: str | Path) -> list[HomologyRecord]:
    """Records of one TAPE remote-homology file (``.json`` file or ``.lmdb`` folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: TAPE remote-homology file not found")
    if path.suffix == ".lmdb" or path.is_dir():
        raw = _read_tape_lmdb(path)
    else:
        try:
            raw = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, list):
            raise UserError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise UserError(f"{path}: record {i} is not a mapping")
        missing = [k for k in ("primary", "fold_label", "superfamily_label", "family_label") if k not in r]
        if missing:
            raise UserError(f"{path}: record {i} has no field {missing[0]!r}")
        seq = str(r["primary"]).strip()
        if not seq:
            raise UserError(f"{path}: record {i} has an empty 'primary' sequence")
        rid = str(r.get("id", f"{path.stem}:{i}"))
        out.append(HomologyRecord(rid, seq, str(int(r["fold_label"])), str(int(r["superfamily_label"])),
                                  str(int(r["family_label"]))))
    if not out:
        raise UserError(f"{path}: no records")
    return out


def find_tape_homology(directory: str | Path) -> dict[str, Path]:
    """The five split files of a TAPE remote-homology folder (``.lmdb`` preferred over ``.json``)."""
    directory = Path(directory)
    found = {}
    for split in TAPE_SPLITS:
        for ext in (".lmdb", ".json"):
            p = directory / f"remote_homology_{split}{ext}"
            if p.exists():
                found[split] = p
                break
        else:
            raise UserError(f"{directory}: no remote_homology_{split}.lmdb or .json")
    return found


def read_tape_homology_splits(directory: str | Path) -> dict[str, list[HomologyRecord]]:
    return {split: read_tape_homology(p) for split, p in find_tape_homology(directory).items()}


_SCCS = re.compile(r"^([a-l])\.(\d+)\.(\d+)\.(\d+)$")


def read_astral(path: str | Path) -> list[HomologyRecord]:
    """Domains of a SCOPe/ASTRAL FASTA; the header's second word is the sccs (``a.1.1.1``)."""
    out = []
    for rec in iter_fasta(path):
        sccs = rec.description.split(None, 1)[0] if rec.description else ""
        m = _SCCS.match(sccs)
        if not m:
            raise UserError(
                f"{path}: record {rec.id!r}: expected a SCOP class.fold.superfamily.family "
                f"(like 'a.1.1.1') after the id, got {sccs!r}"
            )
        c, f, s, _ = m.groups()
        out.append(HomologyRecord(rec.id, rec.sequence.upper(), f"{c}.{f}", f"{c}.{f}.{s}", sccs))
    return out


# ---------------------------------------------------------------------------------------------
# Function: multi-label tables and ogbn-proteins
# ---------------------------------------------------------------------------------------------


@dataclass
class MultiLabelTable:
    """Proteins with label sets over a fixed class list (the header's, else the labels seen)."""

    path: str
    column: str  # the label column read ('' for a table without a header)
    classes: list[str]
    labels: dict[str, list[str]]  # protein id -> its labels

    def matrix(self, ids: list[str]) -> torch.Tensor:
        """(len(ids), C) float {0, 1} label matrix in the order of ``ids``."""
        col = {c: j for j, c in enumerate(self.classes)}
        y = torch.zeros(len(ids), len(self.classes))
        for i, pid in enumerate(ids):
            for lab in self.labels[pid]:
                y[i, col[lab]] = 1.0
        return y


def read_multilabel_table(path: str | Path, column: Optional[str] = None) -> MultiLabelTable:
    """Read ``id<TAB>label,label,...`` rows, with or without DeepFRI's header block.

    Header block: ``### <title>`` lines each followed by one tab-separated line of items; a
    ``### <id name><TAB><column>...`` line (it has a tab) names the data columns. A column's
    classes are the items of the block whose title equals the column name (``EC-numbers``,
    ``GO-terms (molecular_function)``). ``column`` picks a label column by name (default: the
    first). Without a header the classes are the sorted labels seen. A label outside the
    class list, a repeated id or a row with the wrong number of fields is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label table not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    blocks: dict[str, list[str]] = {}
    columns: Optional[list[str]] = None
    i = 0
    while i < len(lines) and lines[i].startswith("###"):
        title = lines[i][3:].strip()
        if "\t" in title:
            columns = [c.strip() for c in title.split("\t")[1:]]
            i += 1
            break
        if i + 1 >= len(lines) or lines[i + 1].startswith("###"):
            raise UserError(f"{path}:{i + 1}: header block {title!r} is not followed by its line of items")
        blocks[title] = [c for c in lines[i + 1].split("\t") if c]
        i += 2
    if blocks and columns is None:
        raise UserError(f"{path}: header block without the '### <id><TAB><column>' line naming the columns")
    n_fields = 1 + (len(columns) if columns else 1)
    if columns:
        col_name = columns[0] if column is None else column
        if col_name not in columns:
            raise UserError(f"{path}: no label column {col_name!r} (columns: {columns})")
        if col_name not in blocks:
            raise UserError(f"{path}: the header lists no classes for column {col_name!r}")
        col_idx = 1 + columns.index(col_name)
        classes: Optional[list[str]] = blocks[col_name]
    else:
        if column is not None:
            raise UserError(f"{path}: column {column!r} requested but the table has no header naming columns")
        col_name, col_idx, classes = "", 1, None
    known = set(classes) if classes is not None else None
    labels: dict[str, list[str]] = {}
    for lineno in range(i + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) == 1 and n_fields == 2:
            parts.append("")  # a protein listed without labels
        if len(parts) != n_fields:
            raise UserError(f"{path}:{lineno}: expected {n_fields} tab-separated fields, got {len(parts)}")
        pid = parts[0].strip()
        if not pid:
            raise UserError(f"{path}:{lineno}: empty protein id")
        if pid in labels:
            raise UserError(f"{path}:{lineno}: protein {pid!r} listed twice")
        labs = sorted({x.strip() for x in parts[col_idx].split(",") if x.strip()})
        if known is not None:
            bad = [x for x in labs if x not in known]
            if bad:
                raise UserError(f"{path}:{lineno}: label {bad[0]!r} of {pid!r} is not in the header's class list")
        labels[pid] = labs
    if not labels:
        raise UserError(f"{path}: no labelled proteins")
    if classes is None:
        classes = sorted({x for labs in labels.values() for x in labs})
    return MultiLabelTable(str(path), col_name, list(classes), labels)


def _read_csv_gz(path: Path, dtype, header: bool = False) -> np.ndarray:
    """A numeric OGB csv(.gz) table as a 2-D array (one row per line)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found (an OGB dataset folder holds raw/, split/ and mapping/)")
    try:
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            arr = np.loadtxt(f, delimiter=",", dtype=dtype, ndmin=2, skiprows=1 if header else 0)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a numeric CSV table ({str(e).splitlines()[0][:200]})") from None
    return arr


def read_ogb_node_mapping(path: str | Path) -> list[str]:
    """Protein id of each node from OGB's ``mapping/nodeidx2proteinid.csv.gz``.

    A header line, then ``node idx,...,protein id`` rows: the node index is the first column,
    the protein id the column whose header names a protein (else the last one).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: node-to-protein mapping not found")
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise UserError(f"{path}: expected a header line and one row per node")
    head = [h.strip().lower() for h in rows[0]]
    pcol = next((j for j, h in enumerate(head) if "protein" in h), len(head) - 1)
    ids: list[Optional[str]] = [None] * (len(rows) - 1)
    for lineno, row in enumerate(rows[1:], 2):
        try:
            node = int(row[0])
            ids[node] = row[pcol].strip()
        except (ValueError, IndexError):
            raise UserError(f"{path}:{lineno}: expected 'node index,...,protein id', got {','.join(row)[:80]!r}") from None
    if any(x is None for x in ids):
        raise UserError(f"{path}: node indices are not 0..{len(ids) - 1}")
    return ids  # type: ignore[return-value]


@dataclass
class OgbnProteins:
    """ogbn-proteins as OGB distributes it: one undirected graph, 112 binary tasks, species split."""

    edge_index: torch.Tensor  # (2, E) long, each undirected edge once (OGB adds the reverse)
    edge_attr: torch.Tensor  # (E, 8) float: STRING's channel weights
    y: torch.Tensor  # (N, 112) long {0, 1}
    species: torch.Tensor  # (N,) long NCBI taxonomy id
    split: dict[str, torch.Tensor]  # train / valid / test node indices
    protein_ids: Optional[list[str]]  # STRING id per node, when mapping/ is present

    @property
    def num_nodes(self) -> int:
        return int(self.y.shape[0])


def read_ogbn_proteins(root: str | Path) -> OgbnProteins:
    """Read an ``ogbn_proteins`` folder (OGB's raw csv.gz files, the species split, the mapping)."""
    root = Path(root)
    raw = root / "raw"
    edge = _read_csv_gz(raw / "edge.csv.gz", np.int64)
    feat = _read_csv_gz(raw / "edge-feat.csv.gz", np.float32)
    y = _read_csv_gz(raw / "node-label.csv.gz", np.int64)
    species_file = raw / "node_species.csv.gz"
    species = _read_csv_gz(species_file if species_file.exists() else raw / "species.csv.gz", np.int64)
    n = y.shape[0]
    if edge.shape[1] != 2 or feat.shape[0] != edge.shape[0]:
        raise UserError(f"{raw}: edge.csv.gz ({edge.shape}) and edge-feat.csv.gz ({feat.shape}) do not match")
    if species.shape[0] != n:
        raise UserError(f"{raw}: {species.shape[0]} species rows for {n} labelled nodes")
    if edge.size and (edge.min() < 0 or edge.max() >= n):
        raise UserError(f"{raw}/edge.csv.gz: node index outside 0..{n - 1}")
    split = {}
    for name in ("train", "valid", "test"):
        idx = _read_csv_gz(root / "split" / "species" / f"{name}.csv.gz", np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise UserError(f"{root}/split/species/{name}.csv.gz: node index outside 0..{n - 1}")
        split[name] = torch.from_numpy(idx)
    mapping = root / "mapping" / "nodeidx2proteinid.csv.gz"
    ids = read_ogb_node_mapping(mapping) if mapping.exists() else None
    if ids is not None and len(ids) != n:
        raise UserError(f"{mapping}: {len(ids)} nodes mapped, the graph has {n}")
    return OgbnProteins(torch.from_numpy(edge.T.copy()), torch.from_numpy(feat), torch.from_numpy(y),
                        torch.from_numpy(species[:, 0].copy()), split, ids)


def sequences_for(ids: list[str], path: str | Path) -> list[str]:
    """The sequence of every id from a FASTA (e.g. STRING's ``protein.sequences.v12.0.fa.gz``)
    or ``id<TAB>sequence`` table. A FASTA is streamed keeping only the wanted ids (STRING's
    all-species file is far larger than memory); every id must be found."""
    wanted = set(ids)
    found: dict[str, str] = {}
    if _looks_like_fasta(path):
        for rec in iter_fasta(path):
            if rec.id in wanted:
                found[rec.id] = rec.sequence
    else:
        table = read_sequence_table(path)
        found = {k: table[k] for k in wanted if k in table}
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"{path}: no sequence for {len(missing)} of {len(wanted)} proteins (e.g. {', '.join(missing[:3])})")
    return [found[i] for i in ids]


def _looks_like_fasta(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sequence file not found")
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rt", errors="replace") if gz else open(path, errors="replace")) as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith(">")
    raise UserError(f"{path}: sequence file is empty")


# ---------------------------------------------------------------------------------------------
# PPI links
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelledPairs:
    """Protein pairs with 0/1 labels; ``a``/``b`` index ``names``."""

    path: str
    names: list[str]
    a: np.ndarray  # (P,) int64
    b: np.ndarray  # (P,) int64
    y: np.ndarray  # (P,) float32 {0, 1}
    n_duplicates: int = 0  # repeated pairs (either order, same label) kept once
    n_conflicts: int = 0  # pairs listed with both labels, dropped (on_conflict="drop")

    def __len__(self) -> int:
        return len(self.y)


def read_labelled_pairs(path: str | Path, on_conflict: str = "error") -> LabelledPairs:
    """``id1 id2 label`` lines (tabs or spaces, plain or .gz; an optional header line).

    Labels must be 0 or 1 (``1.0``/``0.0`` too). A pair repeated in either order with the same
    label is kept once (counted). A pair listed with both labels is an error, or with
    ``on_conflict="drop"`` is left out entirely (counted; D-SCRIPT's yeast test set has 4).
    """
    if on_conflict not in ("error", "drop"):
        raise UserError(f"on_conflict must be 'error' or 'drop', got {on_conflict!r}")
    index: dict[str, int] = {}
    seen: dict[tuple[int, int], float] = {}
    conflicts: set[tuple[int, int]] = set()
    dup = 0
    first = True
    for lineno, parts in table_lines(path, "pair table"):
        where = f"{path}:{lineno}"
        if len(parts) != 3:
            raise UserError(f"{where}: expected 'id1 id2 label', got {len(parts)} fields")
        try:
            label = float(parts[2])
        except ValueError:
            if first:
                first = False
                continue
            raise UserError(f"{where}: label {parts[2]!r} is not a number") from None
        first = False
        if label not in (0.0, 1.0):
            raise UserError(f"{where}: label must be 0 or 1, got {parts[2]!r} (scored links: use the STRING format)")
        i, j = index.setdefault(parts[0], len(index)), index.setdefault(parts[1], len(index))
        key = (min(i, j), max(i, j))
        if key not in seen:
            seen[key] = label
        elif seen[key] == label:
            dup += 1
        elif on_conflict == "error":
            raise UserError(
                f"{where}: pair {parts[0]} {parts[1]} appears earlier with label {seen[key]:g} "
                "(set on_conflict=drop to leave such pairs out)"
            )
        else:
            conflicts.add(key)
    kept = [(k, v) for k, v in seen.items() if k not in conflicts]
    if not kept:
        raise UserError(f"{path}: no labelled pairs")
    ab = np.asarray([k for k, _ in kept], np.int64).reshape(-1, 2)
    y = np.asarray([v for _, v in kept], np.float32)
    return LabelledPairs(str(path), list(index), ab[:, 0].copy(), ab[:, 1].copy(), y, dup, len(conflicts))


@dataclass
class OgblPPA:
    """ogbl-ppa as OGB distributes it; ``split_edge[s]`` has ``edge`` (E, 2) and for valid/test
    ``edge_neg`` (E_neg, 2), the negatives every positive is ranked against."""

    num_nodes: int
    edge_index: torch.Tensor  # (2, E) training edges, each once
    node_feat: torch.Tensor  # (N, 58) one-hot species
    split_edge: dict[str, dict[str, torch.Tensor]]
    protein_ids: Optional[list[str]]


def _load_split_pt(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: file not found (ogbl-ppa keeps its edge split in split/throughput/)")
    numpy_globals = [np.dtype, np.ndarray, np.dtypes.Int64DType, np.dtypes.Float32DType, np.dtypes.Float64DType]
    try:
        with torch.serialization.safe_globals([_numpy_multiarray()._reconstruct, *numpy_globals]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or holding anything but tensors/arrays
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or "edge" not in obj:
        raise UserError(f"{path}: expected a dict with an 'edge' array")
    out = {}
    for k, v in obj.items():
        t = torch.as_tensor(v)
        if t.ndim != 2 or t.shape[1] != 2:
            raise UserError(f"{path}: '{k}' should be (E, 2), got {tuple(t.shape)}")
        out[k] = t.long()
    return out


def read_ogbl_ppa(root: str | Path) -> OgblPPA:
    """Read an ``ogbl_ppa`` folder: raw csv.gz graph, node features, the throughput split."""
    root = Path(root)
    raw = root / "raw"
    edge = _read_csv_gz(raw / "edge.csv.gz", np.int64)
    num_nodes = int(_read_csv_gz(raw / "num-node-list.csv.gz", np.int64)[0, 0])
    feat_path = raw / "node-feat.csv.gz"
    feat = _read_csv_gz(feat_path, np.float32) if feat_path.exists() else np.zeros((num_nodes, 0), np.float32)
    if feat.shape[0] != num_nodes:
        raise UserError(f"{feat_path}: {feat.shape[0]} rows for {num_nodes} nodes")
    if edge.shape[1] != 2 or (edge.size and (edge.min() < 0 or edge.max() >= num_nodes)):
        raise UserError(f"{raw}/edge.csv.gz: expected 'src,dst' rows with node indices in 0..{num_nodes - 1}")
    split_edge = {s: _load_split_pt(root / "split" / "throughput" / f"{s}.pt") for s in ("train", "valid", "test")}
    for s in ("valid", "test"):
        if "edge_neg" not in split_edge[s]:
            raise UserError(f"{root}/split/throughput/{s}.pt: no 'edge_neg' (the shared negatives)")
    for s, d in split_edge.items():
        for k, t in d.items():
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_nodes):
                raise UserError(f"{root}/split/throughput/{s}.pt: '{k}' has node indices outside 0..{num_nodes - 1}")
    mapping = root / "mapping" / "nodeidx2proteinid.csv.gz"
    ids = read_ogb_node_mapping(mapping) if mapping.exists() else None
    if ids is not None and len(ids) != num_nodes:
        raise UserError(f"{mapping}: {len(ids)} nodes mapped, the graph has {num_nodes}")
    return OgblPPA(num_nodes, torch.from_numpy(edge.T.copy()), torch.from_numpy(feat), split_edge, ids)
