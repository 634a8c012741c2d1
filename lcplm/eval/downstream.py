"""``eval-downstream``: embed each data set once per model, train heads over seeds, report.

The config (:class:`DownstreamConfig`, loaded by ``lcplm.config.load_config(path, overrides,
schema=DownstreamConfig)``) lists models (checkpoints as ``PATH`` or ``LABEL=PATH``, plus
baselines) and three lists of tasks:

* ``homology``: fold classification, ``format`` ``astral`` (hold-outs built per seed by
  :func:`lcplm.data.benchmarks.astral_holdout_splits`) or ``tape`` (TAPE's five split files);
  accuracy on every hold-out;
* ``function``: multi-label, ``format`` ``table`` (``id<TAB>labels`` + sequences, seeded
  random split) or ``ogbn_proteins`` (OGB's species split, node features from the LM, optional
  GraphSAGE head over the PPI graph); OGB's mean per-task ROC-AUC, micro AUPR, Fmax;
* ``ppi``: link prediction, ``format`` ``pairs`` (labelled pair table), ``string`` (STRING
  links + sampled negatives) or ``ogbl_ppa`` (OGB's split, Hits@K against its shared
  negatives); split by pair or by protein; pair decoder on embeddings, optionally over a
  GraphSAGE of the training graph; ROC-AUC, AP, Hits@K.

and ``fitness``: zero-shot variant effects on ProteinGym DMS tables with the masked LM alone
(:mod:`lcplm.eval.variants`: ESM-1v scores, ProteinGym's Spearman, AUC, MCC, NDCG, top-10%
recall); no heads and no seeds (one row per metric, under the first seed), and nothing for
featurisers (the composition baseline has no LM).

A task whose files are absent is skipped with one line naming the file and how to get it.
For every model, a task's sequences are embedded once (cached on disk, see
:func:`lcplm.embed.cached_mean_embeddings`); then for every seed the split (where it is
seeded) and the heads are built and trained (:func:`lcplm.tasks.downstream.fit_and_evaluate`),
and each test split's metrics become result rows. Features are standardised with statistics
of the training rows. Results: ``<out_dir>/<name>/results.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from lcplm.data import benchmarks as bm
from lcplm.data.dms import DMSAssay
from lcplm.data.paths import resolve_data_path
from lcplm.data.ppi_graph import read_sequence_table
from lcplm.errors import UserError

# --------------------------------------------------------------------------------- config


@dataclass
class EmbedSettings:
    max_tokens: int = 16384  # token budget per batch (B x L, <cls>/<eos> included)
    max_length: Optional[int] = 1000  # residues per sequence; longer ones follow long_policy (null: no limit)
    long_policy: str = "crop"  # full (embed whole) | crop (first max_length residues) | error
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    half: bool = False  # bf16 autocast on CUDA
    cache_dir: Optional[str] = None  # embedding cache (default <$LCPLM_CACHE_DIR or .cache>/embeddings)
    progress: bool = False  # a progress bar per embedding pass


@dataclass
class TrainSettings:
    hidden: int = 512  # width of MLP heads and the pair decoder
    gnn_hidden: int = 128  # GraphSAGE width (each step propagates over the whole graph)
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 40
    patience: int = 8  # stop after this many epochs without a better validation score (0: never)
    batch_size: int = 256  # rows (or pairs) per step; 0 = the whole split in one batch
    gnn_layers: int = 2
    accelerator: str = "cpu"  # for the heads: cpu | gpu | auto


@dataclass
class FinetuneSettings:
    enabled: bool = False  # add a 'finetune' head (encoder + MLP trained end to end) to sequence tasks
    lr: float = 1e-4  # encoder learning rate (the head uses train.lr)
    max_epochs: int = 3
    max_tokens: int = 4096  # token budget per fine-tuning batch
    max_train: Optional[int] = None  # fine-tune on at most this many training sequences (seeded subset)


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
class FitnessTask:
    name: str = "blat_ecolx"  # the task's name in the results
    enabled: bool = True
    dms: str = "shared:fitness/BLAT_ECOLX_Stiffler_2015.csv"  # ProteinGym DMS table (mutant, DMS_score, ...)
    wild_type: Optional[str] = "shared:fitness/BLAT_ECOLX.fasta"  # one-record FASTA; null: from mutated_sequence
    offset: int = 1  # the table's number for the wild type's first residue
    method: str = "masked-marginal"  # masked-marginal | wt-marginal | pseudo-ll
    window: str = "auto"  # tokens around each site: auto (1024 for transformers, whole for BiMamba-S) | none | N


@dataclass
class DownstreamConfig:
    """``lcplm eval-downstream``: models x tasks x seeds x heads."""

    name: str = "default"  # results go to <out_dir>/<name>/
    out_dir: str = "runs/downstream"
    checkpoints: list[str] = field(default_factory=list)  # PATH or LABEL=PATH: run .ckpt, model directory, LC-PLM / ESM-2 dir
    baselines: list[str] = field(default_factory=lambda: ["composition", "random_init"])  # composition | random_init
    random_init_seed: int = 0  # weights of the random_init baseline
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # split (where seeded) and head initialisation
    embed: EmbedSettings = field(default_factory=EmbedSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    homology: list[HomologyTask] = field(default_factory=list)
    function: list[FunctionTask] = field(default_factory=list)
    ppi: list[PPITask] = field(default_factory=list)
    fitness: list[FitnessTask] = field(default_factory=list)


# --------------------------------------------------------------------------------- models


@dataclass
class ModelSource:
    """Where features come from: an encoder (checkpoint or random init) or a fixed featuriser."""

    label: str
    key: str  # identifies the weights for the embedding cache
    factory: Optional[Callable[[], nn.Module]] = None  # builds the encoder (None for featurisers)
    featurize: Optional[Callable[[list[str], list[str]], torch.Tensor]] = None  # (names, seqs) -> (N, D)
    description: str = ""


def _checkpoint_label(path: Path) -> str:
    # runs/<run name>/checkpoints/last.ckpt -> <run name>
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return path.parent.parent.name
    return path.stem


def build_sources(cfg: DownstreamConfig) -> list[ModelSource]:
    """Checkpoints first (in config order), then the baselines; random_init copies the first
    checkpoint's architecture."""
    from lcplm.embed import file_digest, load_encoder, random_encoder

    sources: list[ModelSource] = []
    first_model_cfg = None
    for entry in cfg.checkpoints:
        label, sep, path_s = entry.partition("=")
        if not sep:
            label, path_s = "", entry
        path = Path(path_s).expanduser()
        if not path.exists():
            raise UserError(
                f"checkpoint {path} not found: run `make pretrain` first to create it, "
                "or set checkpoints=[...] (PATH or LABEL=PATH) in the config or on the command line"
            )
        _, model_cfg = load_encoder(path)  # validates the checkpoint now, not after an hour of other work
        first_model_cfg = first_model_cfg or model_cfg
        label = label or _checkpoint_label(path)
        digest = file_digest(path)
        sources.append(ModelSource(label, f"ckpt:{digest}", factory=lambda p=path: load_encoder(p)[0],
                                   description=f"{path} ({getattr(model_cfg, 'name', '?')})"))
    for name in cfg.baselines:
        if name == "composition":
            from lcplm.eval.baselines import composition_features

            sources.append(ModelSource("composition", "composition", featurize=lambda n, s: composition_features(s, n),
                                       description="amino-acid + dipeptide composition (420 features)"))
        elif name == "random_init":
            if first_model_cfg is None:
                raise UserError("baseline random_init needs a checkpoint to copy its architecture from (checkpoints is empty)")
            mcfg, seed = first_model_cfg, cfg.random_init_seed
            key = "random:" + json.dumps(dataclasses.asdict(mcfg), sort_keys=True, default=str) + f":{seed}"
            sources.append(ModelSource("random_init", key, factory=lambda: random_encoder(mcfg, seed),
                                       description=f"{getattr(mcfg, 'name', '?')} at random initialisation (seed {seed})"))
        else:
            raise UserError(f"unknown baseline {name!r} (choose from composition, random_init)")
    labels = [s.label for s in sources]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise UserError(f"two models are labelled {sorted(dup)[0]!r}: name them with LABEL=PATH")
    if not sources:
        raise UserError("nothing to evaluate: no checkpoints and no baselines")
    return sources


def features_for(source: ModelSource, names: list[str], sequences: list[str], cfg: DownstreamConfig,
                 log: Callable[[str], None] = print) -> torch.Tensor:
    from lcplm.embed import cached_mean_embeddings, crop_sequences

    e = cfg.embed
    if source.featurize is not None:
        # the same residues the encoders see, so a crop does not favour the baseline
        return source.featurize(names, crop_sequences(sequences, names, e.max_length, e.long_policy))
    return cached_mean_embeddings(source.key, source.factory, names, sequences, cache_dir=e.cache_dir,
                                  max_tokens=e.max_tokens, max_length=e.max_length, long_policy=e.long_policy,
                                  device=e.device, half=e.half, progress=e.progress, log=log)


# --------------------------------------------------------------------------------- tasks


class Skip(Exception):
    """A task whose data is absent: the message says which file and how to get it."""


def _require(path_s: Optional[str], what: str, how: str) -> Path:
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
}


def _ogb_with_sequences(t, kind: str, seq_what: str, reader):
    """An OGB raw folder (``t.root``) read by ``reader``, and its nodes' sequences from
    ``t.sequences`` through the dataset's node -> protein-id mapping."""
    root = _require(t.root, f"{kind} folder", HOW[kind])
    seq_path = _require(t.sequences, seq_what, HOW[kind])
    data = reader(root)
    if data.protein_ids is None:
        raise UserError(f"{root}: no mapping/nodeidx2proteinid.csv.gz, so nodes cannot be given sequences")
    return data, bm.sequences_for(data.protein_ids, seq_path)


def _standardize(x: torch.Tensor, fit_rows: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with the statistics of ``x[fit_rows]`` (std floored to avoid 0/0)."""
    ref = x[fit_rows].double()
    mean, std = ref.mean(0), ref.std(0, unbiased=False).clamp_min(1e-6)
    return ((x.double() - mean) / std).float()


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
    """Link prediction over the proteins ``names``; split_fn gives (a, b, y) per split."""

    name: str
    names: list[str]
    sequences: list[str]
    heads: list[str]
    split_fn: Callable[[int], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]
    hits_k: tuple[int, ...] = ()
    info: str = ""


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


def fitness_task(t: FitnessTask) -> ZeroShotTask:
    from lcplm.data.dms import read_dms, read_wild_type_fasta

    how = ("it is the shared data set fitness/ (set LCPLM_DATA_DIR to ../shared/data), or any ProteinGym "
           "DMS table (proteingym.org, 'DMS_ProteinGym_substitutions')")
    dms = _require(t.dms, "DMS table", how)
    wt = read_wild_type_fasta(_require(t.wild_type, "wild-type FASTA", how)) if t.wild_type else None
    assay = read_dms(dms, wt, t.offset)
    info = (f"{assay.name}: {len(assay)} variants at {len(assay.sites)} sites of a {len(assay.wild_type)}-residue "
            f"wild type, zero-shot {t.method}")
    return ZeroShotTask(t.name, assay, t.method, t.window, info)


def run_zero_shot_task(task: ZeroShotTask, source: ModelSource, cfg: DownstreamConfig) -> list[dict[str, Any]]:
    from lcplm.eval.variants import score_assay

    e = cfg.embed
    res = score_assay(source.factory(), task.assay, task.method, window=task.window, max_tokens=e.max_tokens,
                      device=e.device, half=e.half, progress=e.progress)
    return [{"model": source.label, "task": task.name, "split": "all", "head": task.method, "metric": m,
             "seed": cfg.seeds[0], "value": v} for m, v in res.metrics.items()]


def homology_task(t: HomologyTask) -> SequenceTask:
    if t.format == "astral":
        path = _require(t.path, "ASTRAL FASTA", HOW["astral"])
        records = [r for r in bm.read_astral(path) if r.family[0] in t.classes]
        if t.max_sequences is not None and len(records) > t.max_sequences:
            keep = np.sort(np.random.default_rng(t.subset_seed).choice(len(records), t.max_sequences, replace=False))
            records = [records[i] for i in keep]
        fixed = None
    elif t.format == "tape":
        path = _require(t.path, "TAPE remote_homology folder", HOW["tape"])
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
            splits = fixed
        else:
            splits, _ = bm.astral_holdout_splits(
                records, seed, t.fold_test_frac, t.superfamily_test_frac, t.family_test_frac, t.valid_frac, t.classes)
        return {s: (np.asarray([row_of[r.id] for r in rs], np.int64),
                    torch.tensor([fold_index[r.fold] for r in rs], dtype=torch.long)) for s, rs in splits.items()}

    subset = f"a random subset (seed {t.subset_seed}) of " if fixed is None and t.max_sequences is not None else ""
    info = f"{subset}{len(names)} domains, {len(folds)} folds ({t.format}: {path})"
    return SequenceTask(t.name, "multiclass", names, seqs, t.heads, split_fn, len(folds), info)


def function_task(t: FunctionTask):
    if t.format == "table":
        labels_path = _require(t.labels, "label table", HOW["table"])
        seq_path = _require(t.sequences, "sequence file", HOW["table"])
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
            idx = bm.split_fractions(len(names), seed, t.valid_frac, t.test_frac)
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
        pairs_path = _require(t.pairs, "pair table" if t.format == "pairs" else "STRING links file", HOW[t.format])
        seq_path = _require(t.sequences, "sequence file", HOW[t.format])
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
            p = fixed_pairs if fixed_pairs is not None else bm.string_pairs(
                pairs_path, names, seed, t.min_score, t.negatives_per_positive)
            idx = bm.split_pairs(p, seed, t.valid_frac, t.test_frac, t.split_by)
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


# --------------------------------------------------------------------------------- heads


def _feature_head(kind: str, d: int, n_out: int, cfg: TrainSettings) -> nn.Module:
    from lcplm.models.heads import LinearProbe, MLPHead

    if kind == "linear":
        return LinearProbe(d, n_out)
    if kind == "mlp":
        return MLPHead(d, n_out, hidden=cfg.hidden, dropout=cfg.dropout)
    raise UserError(f"unknown head {kind!r} for this task (linear, mlp)")


def run_sequence_task(task: SequenceTask, source: ModelSource, x: torch.Tensor, seed: int,
                      cfg: DownstreamConfig) -> list[dict[str, Any]]:
    from lcplm.models.heads import FeatureNet
    from lcplm.tasks.downstream import DownstreamTask, fit_and_evaluate, tensor_loader

    tc = cfg.train
    splits = task.split_fn(seed)
    tests = [s for s in splits if s not in ("train", "valid")]
    train_rows = torch.from_numpy(splits["train"][0])
    xs = _standardize(x, train_rows)
    rows = []
    for head in task.heads:
        if head == "finetune":
            if source.factory is None:  # a featuriser (composition) has no encoder to fine-tune
                continue
            res = _finetune_sequence_task(task, source, splits, seed, cfg)
        else:
            torch.manual_seed(seed)
            net = FeatureNet(_feature_head(head, xs.shape[1], task.n_outputs, tc))
            model = DownstreamTask(net, task.kind, lr=tc.lr, weight_decay=tc.weight_decay, patience=tc.patience)

            def loader(s: str, shuffle: bool = False):
                r, y = splits[s]
                return tensor_loader({"x": xs[torch.from_numpy(r)], "y": y}, tc.batch_size if shuffle else 0, shuffle, seed)

            res = fit_and_evaluate(model, loader("train", True), loader("valid"), {s: loader(s) for s in tests},
                                   tc.max_epochs, tc.accelerator, seed)
        rows += _rows(res, source.label, task.name, head, seed, tests)
    return rows


class _ResidueBatches:
    """``dataset[BatchKey]``: the key's records (residue ids) framed <cls> ... <eos>, padded, with targets."""

    def __init__(self, residues: list[np.ndarray], y: torch.Tensor):
        self.residues, self.y = residues, y

    def __getitem__(self, key: Any) -> dict[str, torch.Tensor]:
        from lcplm.data import tokenizer as tok

        idx = key.indices
        ids, lens = tok.pad_batch([torch.from_numpy(np.concatenate(([tok.CLS], self.residues[i], [tok.EOS]))) for i in idx])
        return {"input_ids": ids, "lengths": lens, "y": self.y[torch.from_numpy(idx)]}


def _finetune_sequence_task(task: SequenceTask, source: ModelSource, splits, seed: int,
                            cfg: DownstreamConfig) -> dict[str, dict[str, float]]:
    """Encoder + residue-mean + MLP trained end to end on token batches."""
    from lcplm.data import tokenizer as tok
    from lcplm.data.batching import TokenBudgetBatchSampler
    from lcplm.data.collate import crop_residues
    from lcplm.models.heads import MLPHead, SequenceNet
    from torch.utils.data import DataLoader

    from lcplm.tasks.downstream import DownstreamTask, fit_and_evaluate

    ft, tc = cfg.finetune, cfg.train
    encoder = source.factory().train()  # loaded for inference (eval mode); Lightning keeps module modes
    torch.manual_seed(seed)
    d = int(encoder.encode(torch.tensor([[tok.CLS, 5, tok.EOS]]), lengths=torch.tensor([3])).shape[-1])
    net = SequenceNet(encoder, MLPHead(d, task.n_outputs, hidden=tc.hidden, dropout=tc.dropout))
    model = DownstreamTask(net, task.kind, lr=tc.lr, weight_decay=tc.weight_decay, encoder_lr=ft.lr, patience=tc.patience)
    max_res = (cfg.embed.max_length or 10**9)

    def batches(s: str, shuffle: bool):
        rows, y = splits[s]
        if shuffle and ft.max_train is not None and len(rows) > ft.max_train:
            keep = np.sort(np.random.default_rng(seed).choice(len(rows), ft.max_train, replace=False))
            rows, y = rows[keep], y[torch.from_numpy(keep)]
        res = [crop_residues(tok.encode_residues(task.sequences[r], task.names[r]), max_res, None) for r in rows]
        lengths = np.asarray([len(r) + 2 for r in res], np.int64)
        # the suite's one batch sampler: length-sorted token-budget batches, reshuffled per (seed, epoch)
        sampler = TokenBudgetBatchSampler(lengths, max(ft.max_tokens, int(lengths.max())), bucket_size=len(lengths),
                                          shuffle=shuffle, seed=seed)
        return DataLoader(_ResidueBatches(res, y), batch_size=None, sampler=sampler)

    tests = {s: batches(s, False) for s in splits if s not in ("train", "valid")}
    return fit_and_evaluate(model, batches("train", True), batches("valid", False), tests, ft.max_epochs,
                            tc.accelerator, seed)


def run_pair_task(task: PairTask, source: ModelSource, x: torch.Tensor, seed: int,
                  cfg: DownstreamConfig) -> list[dict[str, Any]]:
    from lcplm.models.heads import GraphPairNet, GraphSAGE, PairDecoder
    from lcplm.tasks.downstream import DownstreamTask, fit_and_evaluate, tensor_loader

    tc = cfg.train
    splits = task.split_fn(seed)
    a_tr, b_tr, y_tr = splits["train"]
    train_nodes = torch.from_numpy(np.unique(np.concatenate([a_tr, b_tr])))
    xs = _standardize(x, train_nodes)
    pos = y_tr == 1
    # the GNN sees training positives only: valid/test links never leak into message passing
    edges = torch.from_numpy(np.stack([np.concatenate([a_tr[pos], b_tr[pos]]), np.concatenate([b_tr[pos], a_tr[pos]])]))
    tests = [s for s in splits if s not in ("train", "valid")]
    rows = []
    for head in task.heads:
        torch.manual_seed(seed)
        if head == "pair_mlp":
            net = GraphPairNet(xs, PairDecoder(xs.shape[1], hidden=tc.hidden, dropout=tc.dropout))
        elif head == "sage_pair":
            gnn = GraphSAGE(xs.shape[1], tc.gnn_hidden, tc.gnn_layers, tc.dropout)
            net = GraphPairNet(xs, PairDecoder(tc.gnn_hidden, hidden=tc.hidden, dropout=tc.dropout), gnn, edges)
        else:
            raise UserError(f"unknown head {head!r} for ppi task {task.name!r} (pair_mlp, sage_pair)")
        model = DownstreamTask(net, "binary", lr=tc.lr, weight_decay=tc.weight_decay, hits_k=task.hits_k,
                               patience=tc.patience)

        def loader(s: str, shuffle: bool = False):
            a, b, y = splits[s]
            return tensor_loader({"a": torch.from_numpy(a), "b": torch.from_numpy(b), "y": torch.from_numpy(y)},
                                 tc.batch_size if shuffle else 0, shuffle, seed)

        res = fit_and_evaluate(model, loader("train", True), loader("valid"), {s: loader(s) for s in tests},
                               tc.max_epochs, tc.accelerator, seed)
        rows += _rows(res, source.label, task.name, head, seed, tests)
    return rows


def run_node_task(task: NodeTask, source: ModelSource, x: torch.Tensor, seed: int,
                  cfg: DownstreamConfig) -> list[dict[str, Any]]:
    from lcplm.models.heads import GraphNodeNet, GraphSAGE, LinearProbe
    from lcplm.tasks.downstream import DownstreamTask, fit_and_evaluate, tensor_loader

    tc = cfg.train
    xs = _standardize(x, task.split["train"])
    tests = [s for s in task.split if s not in ("train", "valid")]
    rows = []
    for head in task.heads:
        torch.manual_seed(seed)
        if head == "sage":
            net = GraphNodeNet(xs, LinearProbe(tc.gnn_hidden, task.y.shape[1]),
                               GraphSAGE(xs.shape[1], tc.gnn_hidden, tc.gnn_layers, tc.dropout), task.edge_index)
        else:
            net = GraphNodeNet(xs, _feature_head(head, xs.shape[1], task.y.shape[1], tc))
        model = DownstreamTask(net, "multilabel", lr=tc.lr, weight_decay=tc.weight_decay, patience=tc.patience)

        def loader(s: str, shuffle: bool = False):
            idx = task.split[s]
            return tensor_loader({"node": idx, "y": task.y[idx]}, tc.batch_size if shuffle else 0, shuffle, seed)

        res = fit_and_evaluate(model, loader("train", True), loader("valid"), {s: loader(s) for s in tests},
                               tc.max_epochs, tc.accelerator, seed)
        rows += _rows(res, source.label, task.name, head, seed, tests)
    return rows


def _rows(res: dict[str, dict[str, float]], model: str, task: str, head: str, seed: int,
          tests: list[str]) -> list[dict[str, Any]]:
    return [{"model": model, "task": task, "split": s, "head": head, "metric": m, "seed": seed, "value": v}
            for s in tests for m, v in res[s].items()]


# --------------------------------------------------------------------------------- driver


HEADS = {
    "homology": {"linear", "mlp", "finetune"},
    "function": {"linear", "mlp", "finetune", "sage"},  # sage: ogbn_proteins only
    "ppi": {"pair_mlp", "sage_pair"},
}


def _check_heads(section: str, t, cfg: DownstreamConfig) -> None:
    """Head names are checked before any work, so a typo does not surface an hour in."""
    allowed = set(HEADS[section])
    if section == "function":
        allowed -= {"finetune"} if t.format == "ogbn_proteins" else {"sage"}
    bad = [h for h in t.heads if h not in allowed]
    if bad:
        raise UserError(f"{section} task {t.name!r}: unknown head {bad[0]!r} (choose from {sorted(allowed)})")
    if not t.heads:
        raise UserError(f"{section} task {t.name!r}: no heads")
    if "finetune" in t.heads and not cfg.finetune.enabled:
        raise UserError(f"{section} task {t.name!r} lists head 'finetune' but finetune.enabled is false")


def load_tasks(cfg: DownstreamConfig, log: Callable[[str], None] = print) -> tuple[list, list[str]]:
    """The enabled tasks whose data is present, and one line per skipped task."""
    tasks, skipped = [], []
    from lcplm.eval.variants import METHODS

    builders = [(t, homology_task, "homology") for t in cfg.homology] + \
               [(t, function_task, "function") for t in cfg.function] + [(t, ppi_task, "ppi") for t in cfg.ppi] + \
               [(t, fitness_task, "fitness") for t in cfg.fitness]
    for t, _, section in builders:
        if t.enabled and section == "fitness":
            if t.method not in METHODS:
                raise UserError(f"fitness task {t.name!r}: unknown method {t.method!r} (choose from {list(METHODS)})")
        elif t.enabled:
            _check_heads(section, t, cfg)
    for t, build, _ in builders:
        if not t.enabled:
            continue
        try:
            task = build(t)
        except Skip as e:
            line = f"{t.name}: {e}"
            log(f"skip {line}")
            skipped.append(line)
            continue
        log(f"task {task.name}: {task.info}")
        tasks.append(task)
    return tasks, skipped


def evaluate(cfg: DownstreamConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every model on every available task over the seeds; write and return the report."""
    from lcplm.eval.report import markdown_table, summarize, write_report

    t_start, cpu_start = time.time(), time.process_time()
    if not cfg.seeds:
        raise UserError("seeds is empty: give at least one seed")
    sources = build_sources(cfg)
    tasks, skipped = load_tasks(cfg, log)
    if not tasks:
        raise UserError("no task has its data available (see the 'skip' lines above)")
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for source in sources:
        log(f"model {source.label}: {source.description}")
        if source.factory is None and any("finetune" in getattr(t, "heads", ()) for t in tasks):
            log(f"  {source.label} has no encoder to fine-tune: its 'finetune' heads are skipped")
        for task in tasks:
            t0 = time.time()
            if isinstance(task, ZeroShotTask):
                if source.factory is None:
                    log(f"  {task.name}: {source.label} has no masked LM to score variants with: skipped")
                    continue
                rows += run_zero_shot_task(task, source, cfg)
                timings[f"{source.label}/{task.name}"] = round(time.time() - t0, 1)
                log(f"  {task.name}: {len(task.assay)} variants scored in {time.time() - t0:.1f} s")
                continue
            x = features_for(source, task.names, task.sequences, cfg, log)
            t_embed = time.time() - t0
            run = {SequenceTask: run_sequence_task, PairTask: run_pair_task, NodeTask: run_node_task}[type(task)]
            for seed in cfg.seeds:
                rows += run(task, source, x, seed, cfg)
            timings[f"{source.label}/{task.name}"] = round(time.time() - t0, 1)
            log(f"  {task.name}: features {tuple(x.shape)} in {t_embed:.1f} s, heads x {len(cfg.seeds)} seeds "
                f"in {time.time() - t0 - t_embed:.1f} s")
    out_dir = Path(cfg.out_dir) / cfg.name
    meta = {
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "models": {s.label: s.description for s in sources},
        "tasks": {t.name: t.info for t in tasks},
        "skipped": skipped,
        "seconds": round(time.time() - t_start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # all threads of this process
        "timings": timings,
        "torch": torch.__version__,
    }
    paths = write_report(out_dir, rows, meta)
    table = markdown_table(summarize(rows))
    return {"rows": rows, "table": table, "paths": paths, "skipped": skipped, "seconds": meta["seconds"],
            "cpu_seconds": meta["cpu_seconds"]}
