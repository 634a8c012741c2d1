"""The downstream tasks' data: each task entry of a downstream config (the dataclasses below are
its YAML schema) read from its files into the proteins to embed and a seeded split function.

Four kinds of task data, one per way the heads consume it (batched by
:mod:`lcplm.data.datamodules.downstream`):

* :class:`SequenceTask`: per-protein labels, ``split_fn(seed) -> {split: (rows, y)}`` with
  ``rows`` indices into ``names``; homology (``multiclass``: fold index) and function tables
  (``multilabel``: (n, C) matrix);
* :class:`PairTask`: pairs of proteins, ``split_fn(seed) -> {split: (a, b, y)}``; PPI links
  (``binary``: y (P,) in {0, 1}) and STRING interaction types (``multilabel``: y (P, M));
* :class:`NodeTask`: node labels on a fixed graph with a fixed split (ogbn-proteins);
* :class:`ZeroShotTask`: a DMS assay scored by each masked LM without training.

Every split other than ``train`` and ``valid`` is a test split, reported under its name.
A task whose files are absent raises :class:`Skip` with a line naming the file and how to get
it; malformed files raise :class:`~lcplm.errors.UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lcplm.data import benchmark_splits as splits
from lcplm.data import benchmarks as bm
from lcplm.data.dms import DMSAssay
from lcplm.data.edge_lists import MODES
from lcplm.data.paths import resolve_data_path
from lcplm.data.ppi_graph import read_sequence_table
from lcplm.errors import UserError

INTERACTION_F1_THRESHOLD = 0.5  # GNN-PPI: a type is predicted where sigmoid(logit) > 0.5

# --------------------------------------------------------------------------------- config


@dataclass
class HomologyTask:
    name: str = "remote_homology"  # the task's name in the results
    enabled: bool = True
    format: str = "astral"  # astral (SCOPe/ASTRAL FASTA, hold-outs built per seed) | tape (TAPE's folder)
    path: str = "shared:homology/astral-scope-2.07-40.fa"  # the FASTA (astral) or the folder (tape)
    fold_test_frac: float = 0.05  # astral: domains in whole superfamilies held out (fold test)
    superfamily_test_frac: float = 0.08  # astral: domains in whole families held out (superfamily test)
    family_test_frac: float = 0.08  # astral: domains whose families stay in training (family test)
    valid_frac: float = 0.05  # astral: validation domains (families stay in training)
    classes: str = "abcdefg"  # astral: SCOP classes kept (h-l are not true folds)
    max_sequences: Optional[int] = None  # astral: a seeded random subset of this many domains (null: all)
    subset_seed: int = 0  # astral: the subset's seed (fixed across seeds, so embeddings are computed once)
    heads: list[str] = field(default_factory=lambda: ["linear", "mlp"])  # linear | mlp (| finetune)


@dataclass
class FunctionTask:
    name: str = "ec"
    enabled: bool = True
    format: str = "table"  # table (id<TAB>labels + sequences) | ogbn_proteins (OGB folder + STRING FASTA)
    labels: str = "shared:function/deepfri_ec/nrPDB-EC_2020.04_annot.tsv"  # table: the label file
    column: Optional[str] = None  # table: label column by header name (default: the first)
    sequences: str = "shared:function/deepfri_ec/nrPDB-EC_2020.04_test_sequences.fasta"  # FASTA or id<TAB>seq
    root: Optional[str] = None  # ogbn_proteins: the ogbn_proteins folder (raw/, split/, mapping/)
    valid_frac: float = 0.1  # table: seeded random split
    test_frac: float = 0.2
    heads: list[str] = field(default_factory=lambda: ["linear", "mlp"])  # linear | mlp | sage (ogbn_proteins) (| finetune)


@dataclass
class PPITask:
    name: str = "ppi"
    enabled: bool = True
    format: str = "pairs"  # pairs (id1 id2 0/1) | string (STRING links + sampled negatives) | ogbl_ppa
    pairs: str = "shared:ppi/yeast_guo/protein.actions.tsv"  # pairs: table; string: protein.links file
    sequences: str = "shared:ppi/yeast_guo/protein.dictionary.tsv"  # FASTA or id<TAB>seq (ogbl_ppa: by mapping)
    root: Optional[str] = None  # ogbl_ppa: the ogbl_ppa folder (raw/, split/throughput/, mapping/)
    split_by: str = "pair"  # pair | protein (no valid/test protein in any training pair)
    on_conflict: str = "error"  # pairs listed with both labels: error | drop
    min_score: float = 700  # string: combined_score threshold for positives
    negatives_per_positive: float = 1.0  # string / ogbl_ppa training: random unlinked pairs per positive
    valid_frac: float = 0.1
    test_frac: float = 0.2
    max_train_pairs: Optional[int] = None  # ogbl_ppa: seeded subset of training positives (21M in full)
    hits_k: list[int] = field(default_factory=list)  # Hits@K against each split's negatives (ogbl_ppa: [100])
    heads: list[str] = field(default_factory=lambda: ["pair_mlp", "sage_pair"])  # pair_mlp | sage_pair


@dataclass
class InteractionTask:
    """STRING interaction types: which of the modes join two interacting proteins (multi-label)."""

    name: str = "shs27k"  # the task's name in the results
    enabled: bool = True
    actions: str = "shared:ppi/shs27k/protein.actions.SHS27k.STRING.txt"  # STRING protein.actions file (tab-separated, header)
    sequences: str = "shared:ppi/shs27k/protein.SHS27k.sequences.dictionary.tsv"  # FASTA or id<TAB>seq
    modes: Optional[list[str]] = None  # label columns: null = STRING's 7 modes; a list keeps only those
    min_score: float = 0  # action lines scored below this are left out
    split: str = "random"  # random | bfs | dfs (GNN-PPI's splits, lcplm.data.benchmark_splits)
    valid_frac: float = 0.1  # validation share of the pairs (bfs/dfs: a second traversal)
    test_frac: float = 0.2  # test share of the pairs
    heads: list[str] = field(default_factory=lambda: ["pair_mlp", "sage_pair"])  # pair_mlp | sage_pair


@dataclass
class FitnessTask:
    name: str = "blat_ecolx"  # the task's name in the results
    enabled: bool = True
    dms: str = "shared:fitness/BLAT_ECOLX_Stiffler_2015.csv"  # ProteinGym DMS table (mutant, DMS_score, ...)
    wild_type: Optional[str] = "shared:fitness/BLAT_ECOLX.fasta"  # one-record FASTA; null: from mutated_sequence
    offset: int = 1  # the table's number for the wild type's first residue
    method: str = "masked-marginal"  # masked-marginal | wt-marginal | pseudo-ll
    window: str = "auto"  # tokens around each site: auto (1024 for transformers, whole for BiMamba-S) | none | N


# --------------------------------------------------------------------------------- task data


@dataclass
class SequenceTask:
    """Per-sequence labels (fold classes, or a multi-label matrix) with seeded splits."""

    name: str
    kind: str  # multiclass | multilabel
    names: list[str]
    sequences: list[str]
    heads: list[str]
    split_fn: Callable[[int], dict[str, tuple[np.ndarray, torch.Tensor]]]  # seed -> split -> (rows, y)
    n_outputs: int
    info: str = ""


@dataclass
class PairTask:
    """Pairs of the proteins ``names``; ``split_fn`` gives (a, b, y) per split. ``kind`` binary:
    links, y (P,) in {0, 1}; multilabel: interaction types, y (P, n_outputs)."""

    name: str
    names: list[str]
    sequences: list[str]
    heads: list[str]
    split_fn: Callable[[int], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]
    hits_k: tuple[int, ...] = ()
    info: str = ""
    kind: str = "binary"
    n_outputs: int = 1
    f1_threshold: Optional[float] = None  # multilabel: report micro-F1 of predictions above it
    monitor: Optional[str] = None  # the validation metric that picks the best epoch (None: the kind's)


@dataclass
class NodeTask:
    """Node-level multi-label prediction on a fixed graph (ogbn-proteins)."""

    name: str
    names: list[str]
    sequences: list[str]
    heads: list[str]
    edge_index: torch.Tensor  # (2, E) both directions
    y: torch.Tensor  # (N, T)
    split: dict[str, torch.Tensor]
    info: str = ""


@dataclass
class ZeroShotTask:
    """A DMS assay scored by each model's masked LM (no training)."""

    name: str
    assay: DMSAssay
    method: str
    window: str
    info: str = ""


# --------------------------------------------------------------------------------- files


class Skip(Exception):
    """A task whose data is absent: the message says which file and how to get it."""


def require(path_s: Optional[str], what: str, how: str) -> Path:
    """The resolved path, or :class:`Skip` saying what is missing and ``how`` to get it."""
    if not path_s:
        raise Skip(f"no {what} configured; {how}")
    p = resolve_data_path(path_s)
    if not p.exists():
        raise Skip(f"{what} {p} not found; {how}")
    return p


HOW = {
    "astral": "it is the shared data set homology/astral-scope-2.07-40.fa (set LCPLM_DATA_DIR to ../shared/data), "
              "or SCOPe's astral-scopedom-seqres-gd-sel-gs-bib-40-2.07.fa from scop.berkeley.edu",
    "tape": "download remote_homology.tar.gz (LMDB) or the JSON version from the TAPE README "
            "(github.com/songlab-cal/tape, 'Data') and set path= to the extracted remote_homology folder",
    "table": "the shared data set function/deepfri_ec (DeepFRI's nrPDB-EC files, github.com/flatironinstitute/DeepFRI); "
             "set LCPLM_DATA_DIR to ../shared/data",
    "ogbn_proteins": "download it with `python -c \"from ogb.nodeproppred import NodePropPredDataset as D; D('ogbn-proteins')\"` "
                     "and STRING's protein.sequences FASTA (stringdb-downloads.org), then set root= and sequences=",
    "pairs": "the shared data sets ppi/yeast_guo and ppi/dscript; set LCPLM_DATA_DIR to ../shared/data",
    "string": "download {taxid}.protein.links and protein.sequences files from stringdb-downloads.org and set pairs= and sequences=",
    "ogbl_ppa": "download it with `python -c \"from ogb.linkproppred import LinkPropPredDataset as D; D('ogbl-ppa')\"` "
                "(its mapping/ names each node's protein) plus a FASTA of those proteins, then set root= and sequences=",
    "actions": "no STRING actions file is shared; download {taxid}.protein.actions.v11.0.txt.gz and "
               "{taxid}.protein.sequences.v11.0.fa.gz from stringdb-static.org/download/, or GNN-PPI's SHS27k/SHS148k "
               "(protein.actions.SHS27k.STRING.txt + protein.SHS27k.sequences.dictionary.tsv), and set actions= and sequences=",
}


def _ogb_with_sequences(t, kind: str, seq_what: str, reader):
    """An OGB raw folder (``t.root``) read by ``reader``, and its nodes' sequences from
    ``t.sequences`` through the dataset's node -> protein-id mapping."""
    root = require(t.root, f"{kind} folder", HOW[kind])
    seq_path = require(t.sequences, seq_what, HOW[kind])
    data = reader(root)
    if data.protein_ids is None:
        raise UserError(f"{root}: no mapping/nodeidx2proteinid.csv.gz, so nodes cannot be given sequences")
    return data, bm.sequences_for(data.protein_ids, seq_path)


# --------------------------------------------------------------------------------- builders


def fitness_task(t: FitnessTask) -> ZeroShotTask:
    from lcplm.data.dms import read_dms, read_wild_type_fasta

    how = ("it is the shared data set fitness/ (set LCPLM_DATA_DIR to ../shared/data), or any ProteinGym "
           "DMS table (proteingym.org, 'DMS_ProteinGym_substitutions')")
    dms = require(t.dms, "DMS table", how)
    wt = read_wild_type_fasta(require(t.wild_type, "wild-type FASTA", how)) if t.wild_type else None
    assay = read_dms(dms, wt, t.offset)
    info = (f"{assay.name}: {len(assay)} variants at {len(assay.sites)} sites of a {len(assay.wild_type)}-residue "
            f"wild type, zero-shot {t.method}")
    return ZeroShotTask(t.name, assay, t.method, t.window, info)


def homology_task(t: HomologyTask) -> SequenceTask:
    if t.format == "astral":
        path = require(t.path, "ASTRAL FASTA", HOW["astral"])
        records = [r for r in bm.read_astral(path) if r.family[0] in t.classes]
        if t.max_sequences is not None and len(records) > t.max_sequences:
            keep = np.sort(np.random.default_rng(t.subset_seed).choice(len(records), t.max_sequences, replace=False))
            records = [records[i] for i in keep]
        fixed = None
    elif t.format == "tape":
        path = require(t.path, "TAPE remote_homology folder", HOW["tape"])
        fixed = bm.read_tape_homology_splits(path)
        records = [r for split in bm.TAPE_SPLITS for r in fixed[split]]
    else:
        raise UserError(f"homology task {t.name!r}: format must be astral or tape, got {t.format!r}")
    # one embedding per distinct domain id (TAPE ids are unique across its splits)
    row_of: dict[str, int] = {}
    names, seqs = [], []
    for r in records:
        if r.id not in row_of:
            row_of[r.id] = len(names)
            names.append(r.id)
            seqs.append(r.sequence)
    folds = sorted({r.fold for r in records})
    fold_index = {f: k for k, f in enumerate(folds)}

    def split_fn(seed: int):
        if fixed is not None:
            by_split = fixed
        else:
            by_split, _ = splits.astral_holdout_splits(
                records, seed, t.fold_test_frac, t.superfamily_test_frac, t.family_test_frac, t.valid_frac, t.classes)
        return {s: (np.asarray([row_of[r.id] for r in rs], np.int64),
                    torch.tensor([fold_index[r.fold] for r in rs], dtype=torch.long)) for s, rs in by_split.items()}

    subset = f"a random subset (seed {t.subset_seed}) of " if fixed is None and t.max_sequences is not None else ""
    info = f"{subset}{len(names)} domains, {len(folds)} folds ({t.format}: {path})"
    return SequenceTask(t.name, "multiclass", names, seqs, t.heads, split_fn, len(folds), info)


def function_task(t: FunctionTask) -> SequenceTask | NodeTask:
    if t.format == "table":
        labels_path = require(t.labels, "label table", HOW["table"])
        seq_path = require(t.sequences, "sequence file", HOW["table"])
        table = bm.read_multilabel_table(labels_path, t.column)
        seqs_by_id = read_sequence_table(seq_path)
        names = [n for n in seqs_by_id if n in table.labels]
        if not names:
            raise UserError(f"{seq_path}: none of its ids has labels in {labels_path}")
        y_all = table.matrix(names)
        present = y_all.sum(0) > 0
        y = y_all[:, present]
        info = (f"{len(names)} proteins with sequences of {len(table.labels)} labelled ({len(seqs_by_id) - len(names)} "
                f"sequences without labels not used); {int(present.sum())} of {len(table.classes)} classes occur")

        def split_fn(seed: int):
            idx = splits.split_fractions(len(names), seed, t.valid_frac, t.test_frac)
            return {s: (rows, y[torch.from_numpy(rows)]) for s, rows in idx.items()}

        return SequenceTask(t.name, "multilabel", names, [seqs_by_id[n] for n in names], t.heads, split_fn,
                            int(present.sum()), info)
    if t.format == "ogbn_proteins":
        data, seqs = _ogb_with_sequences(t, "ogbn_proteins", "STRING sequences FASTA", bm.read_ogbn_proteins)
        ei = data.edge_index
        both = torch.cat([ei, ei.flip(0)], 1)
        info = f"{data.num_nodes} proteins, {ei.shape[1]} edges, {data.y.shape[1]} tasks (species split)"
        return NodeTask(t.name, data.protein_ids, seqs, t.heads, both, data.y.float(), data.split, info)
    raise UserError(f"function task {t.name!r}: format must be table or ogbn_proteins, got {t.format!r}")


def ppi_task(t: PPITask) -> PairTask:
    if t.format in ("pairs", "string"):
        pairs_path = require(t.pairs, "pair table" if t.format == "pairs" else "STRING links file", HOW[t.format])
        seq_path = require(t.sequences, "sequence file", HOW[t.format])
        seqs_by_id = read_sequence_table(seq_path)
        if t.format == "pairs":
            pairs = bm.read_labelled_pairs(pairs_path, t.on_conflict)
            missing = [n for n in pairs.names if n not in seqs_by_id]
            if missing:
                raise UserError(f"{seq_path}: no sequence for {len(missing)} proteins of {pairs_path} (e.g. {missing[0]})")
            fixed_pairs: Optional[bm.LabelledPairs] = pairs
        else:
            fixed_pairs = None
        names = fixed_pairs.names if fixed_pairs is not None else sorted(seqs_by_id)

        def split_fn(seed: int):
            p = fixed_pairs if fixed_pairs is not None else splits.string_pairs(
                pairs_path, names, seed, t.min_score, t.negatives_per_positive)
            idx = splits.split_pairs(p, seed, t.valid_frac, t.test_frac, t.split_by)
            return {s: (p.a[i], p.b[i], p.y[i]) for s, i in idx.items()}

        n_info = (f"{len(fixed_pairs)} pairs ({int(fixed_pairs.y.sum())} positive, {fixed_pairs.n_duplicates} repeats "
                  f"merged, {fixed_pairs.n_conflicts} conflicting dropped)" if fixed_pairs is not None else
                  f"STRING links >= {t.min_score:g} with {t.negatives_per_positive:g} sampled negatives per positive")
        info = f"{len(names)} proteins, {n_info}, split by {t.split_by}"
        return PairTask(t.name, names, [seqs_by_id[n] for n in names], t.heads, split_fn, tuple(t.hits_k), info)
    if t.format == "ogbl_ppa":
        data, seqs = _ogb_with_sequences(t, "ogbl_ppa", "sequence file", bm.read_ogbl_ppa)
        n = data.num_nodes

        def split_fn(seed: int):
            rng = np.random.default_rng(seed)
            train = data.split_edge["train"]["edge"].numpy()
            if t.max_train_pairs is not None and len(train) > t.max_train_pairs:
                train = train[np.sort(rng.choice(len(train), t.max_train_pairs, replace=False))]
            # training negatives: uniformly random node pairs (OGB's examples sample them per step)
            n_neg = int(round(t.negatives_per_positive * len(train)))
            neg = rng.integers(0, n, (n_neg, 2))
            out = {"train": (np.concatenate([train[:, 0], neg[:, 0]]), np.concatenate([train[:, 1], neg[:, 1]]),
                             np.concatenate([np.ones(len(train), np.float32), np.zeros(n_neg, np.float32)]))}
            for s in ("valid", "test"):
                pos, negs = data.split_edge[s]["edge"].numpy(), data.split_edge[s]["edge_neg"].numpy()
                out[s] = (np.concatenate([pos[:, 0], negs[:, 0]]), np.concatenate([pos[:, 1], negs[:, 1]]),
                          np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(negs), np.float32)]))
            return out

        info = f"{n} proteins, {len(data.split_edge['train']['edge'])} training edges (OGB throughput split)"
        return PairTask(t.name, data.protein_ids, seqs, t.heads, split_fn, tuple(t.hits_k) or (100,), info)
    raise UserError(f"ppi task {t.name!r}: format must be pairs, string or ogbl_ppa, got {t.format!r}")


def interaction_task(t: InteractionTask) -> PairTask:
    """STRING ``protein.actions`` pairs with their mode sets (:func:`lcplm.data.edge_lists.read_string_actions`);
    y (P, M) over the selected modes, in STRING's order; split by :func:`lcplm.data.benchmark_splits.edge_split`."""
    from lcplm.data.edge_lists import check_edge_options, read_string_actions

    if t.split not in splits.EDGE_SPLITS:
        raise UserError(f"interaction task {t.name!r}: split must be one of {list(splits.EDGE_SPLITS)}, got {t.split!r}")
    check_edge_options("string_actions", t.min_score, t.modes, "interaction")
    actions_path = require(t.actions, "STRING actions file", HOW["actions"])
    seq_path = require(t.sequences, "sequence file", HOW["actions"])
    table = read_string_actions(actions_path, t.modes, t.min_score)
    if not len(table):
        raise UserError(f"{actions_path}: no pair between two different proteins passes min_score={t.min_score:g}"
                        + (f" and modes={t.modes}" if t.modes else ""))
    modes = [m for m in MODES if t.modes is None or m in t.modes]
    y = table.labels[:, [MODES.index(m) for m in modes]].astype(np.float32)
    seqs = bm.sequences_for(table.ids, seq_path)
    a, b = table.pairs[:, 0], table.pairs[:, 1]

    def split_fn(seed: int):
        idx = splits.edge_split(table.pairs, len(table.ids), seed, t.valid_frac, t.test_frac, t.split)
        return {s: (a[i], b[i], y[i]) for s, i in idx.items()}

    counts = ", ".join(f"{m} {table.mode_counts[m]}" for m in modes)
    info = f"{len(table.ids)} proteins, {len(table)} interacting pairs ({counts}), {t.split} split"
    return PairTask(t.name, table.ids, seqs, t.heads, split_fn, (), info, kind="multilabel", n_outputs=len(modes),
                    f1_threshold=INTERACTION_F1_THRESHOLD, monitor="micro_f1")
