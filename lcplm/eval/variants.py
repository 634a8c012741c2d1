"""Zero-shot variant effects with the masked LM alone, ProteinGym's way (the command is
``lcplm score-variants``, :mod:`lcplm.cli.score_variants`).

    lcplm score-variants --checkpoint C --dms CSV|DIR [--dms ...] --out DIR
        [--method masked-marginal|wt-marginal|pseudo-ll] [--wild-type FASTA] [--offset N]
        [--window auto|none|N] [--max-tokens N] [--device D] [--half] [--random-init SEED]
        [--genome GENBANK|FASTA --protein ID [--genome-rule R] [--pair-source S] [--genome-max-tokens N]]
        [--reference CSV --reference-model COLUMN]

Scores (ESM-1v, Meier et al. 2021; ProteinGym's ``baselines/esm/compute_fitness.py``), with
log-probabilities normalised over ESM-2's 33 tokens (the suite's own rows, graph tokens and
padding, are left out, so a converted ESM-2 gives ESM's numbers):

* ``masked-marginal``: for each mutated site i, mask i in the wild type and take
  log p(mt_i) - log p(wt_i); a multi-mutant scores the sum over its sites, each masked on its
  own (ProteinGym's ``label_row``). One forward pass per mutated *position* serves every
  mutant at that position; positions are batched under a token budget.
* ``wt-marginal``: the same differences read from the unmasked wild type (one pass, or one per
  window).
* ``pseudo-ll``: PLL(mutant) - PLL(wild type), PLL(s) = sum over every residue r of
  log p(s_r | s with r masked). ESM's ``compute_pppl`` loops over tokens 1..len-2 and so leaves
  out the last two residues; here every residue counts. The wild-type term is one constant per
  assay, so it changes no rank metric. L passes per distinct sequence: slow, GPU-sized.

Long proteins: a model with a length limit (``--window auto``: 1,024 tokens for ESM-2-style
transformers, ESM-2's training crop and ProteinGym's ``model_window``; none for BiMamba-S) sees
each site inside ProteinGym's ``get_optimal_window`` of the token array ``<cls> seq <eos>``:
centred on the site, clamped to the ends (a middle window has no ``<cls>``/``<eos>``, as in
ProteinGym). ProteinGym's ESM wild-type marginals use overlapping weighted windows instead; here
wt-marginals use the same per-site window as the masked ones.

Genome context (``--genome``, genome transformers only): the protein is scored inside its genome
window (:func:`lcplm.data.genomes.genome_windows`, ``--genome-max-tokens``), with the attention
pattern of ``--pair-source``; its sequence there must equal the assay's wild type.

Models: :func:`load_scoring_model` reads an lcplm checkpoint (``lcplm pretrain``, or converted
by ``lcplm convert`` from LC-PLM or ESM-2), a released LC-PLM directory or a Hugging Face ESM-2
directory; ``--random-init SEED`` keeps the architecture and draws fresh weights.

Outputs in ``--out``: per assay ``<assay>.scores.csv`` (mutant, DMS_score, DMS_score_bin, score)
and ``<assay>.json`` (metrics: :func:`lcplm.tasks.metrics.proteingym_metrics`, timing, options);
across assays ``summary.md`` and ``summary.json``. :func:`evaluate_assay` is the same for
callers in Python (returns the metrics dict).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from lcplm.data import tokenizer as tok
from lcplm.data.dms import DMSAssay, Substitution, read_dms, read_wild_type_fasta
from lcplm.errors import UserError
from lcplm.files import atomic_write_text

METHODS = ("masked-marginal", "wt-marginal", "pseudo-ll")
ESM_VOCAB = 33  # ESM-2's tokens are our ids 0..32: log-probabilities are normalised over these
TRANSFORMER_WINDOW = 1024  # tokens: ESM-2's training crop (1,022 residues + <cls>/<eos>), ProteinGym's model_window
TRANSFORMER_KINDS = ("sparse_transformer", "esm2")
STATIC_PAIR_SOURCES = ("dense", "single_protein", "window", "global")
METRIC_ORDER = ("spearman", "auc", "mcc", "ndcg", "top10_recall")
PLL_CHUNK = 64  # pseudo-ll: sequences whose masked rows are built and run together


# ------------------------------------------------------------------------------------ models


@dataclass
class ScoringModel:
    """A masked LM ready to score: ``model(input_ids, lengths=..., [pid=..., allowed=...])`` -> logits."""

    model: nn.Module
    cfg: Any  # the model's config dataclass (``cfg.name`` is its kind)
    label: str
    description: str

    @property
    def kind(self) -> str:
        return str(getattr(self.cfg, "name", type(self.model).__name__))

    @property
    def takes_genome_context(self) -> bool:
        return self.kind == "sparse_transformer"


def load_scoring_model(checkpoint: str | Path, random_init_seed: Optional[int] = None,
                       label: Optional[str] = None) -> ScoringModel:
    """Every model file the suite reads, through :func:`lcplm.models.io.from_pretrained`: a run's
    ``.ckpt``, an lcplm model directory (``lcplm export``), a released LC-PLM directory, or a
    Hugging Face ESM-2 directory (converted to the genome transformer). With ``random_init_seed``
    the architecture is kept and the weights are drawn afresh (seeded)."""
    from lcplm.embed import load_encoder, random_encoder

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found (a run's .ckpt, a model directory, an LC-PLM or a Hugging Face ESM-2 directory)")
    model, cfg = load_encoder(path)
    source = f"{path} ({getattr(cfg, 'name', type(model).__name__)})"
    default_label = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    if random_init_seed is not None:
        model = random_encoder(cfg, random_init_seed)
        return ScoringModel(model.eval(), cfg, label or "random_init",
                            f"{getattr(cfg, 'name', '?')} at random initialisation (seed {random_init_seed}), architecture of {path}")
    return ScoringModel(model.eval(), cfg, label or default_label, source)


def as_scoring_model(model: nn.Module | ScoringModel | str | Path, label: Optional[str] = None) -> ScoringModel:
    if isinstance(model, ScoringModel):
        return model
    if isinstance(model, (str, Path)):
        return load_scoring_model(model, label=label)
    cfg = getattr(model, "cfg", None)
    return ScoringModel(model.eval(), cfg, label or type(model).__name__, type(model).__name__)


def resolve_window(window: Optional[int | str], sm: ScoringModel) -> Optional[int]:
    """``auto`` -> the model's limit (1,024 tokens for transformers, none for BiMamba-S);
    ``none``/None/0 -> whole proteins; an int -> that many tokens (at least 3)."""
    if window is None or window == "none" or window == 0:
        return None
    if window == "auto":
        return TRANSFORMER_WINDOW if sm.kind in TRANSFORMER_KINDS else None
    try:
        w = int(window)
    except (TypeError, ValueError):
        raise UserError(f"window must be auto, none or a number of tokens, got {window!r}") from None
    if w < 3:
        raise UserError(f"window must be at least 3 tokens (<cls> residue <eos>), got {w}")
    return w


# ------------------------------------------------------------------------------------ inputs


@dataclass
class ModelInput:
    """One model input holding the protein: ``ids`` (L,), the protein's residue 0 at token
    ``first``; ``pid``/``allowed`` only inside a genome (None: one protein, ``<cls> seq <eos>``)."""

    ids: torch.Tensor
    first: int
    pid: Optional[torch.Tensor] = None
    allowed: Optional[torch.Tensor] = None


class SingleProtein:
    """The protein alone: ``<cls> residues <eos>``."""

    description = "single protein"

    def build(self, residues: np.ndarray) -> ModelInput:
        return ModelInput(torch.from_numpy(np.concatenate(([tok.CLS], residues, [tok.EOS]))).long(), 1)


@dataclass
class GenomeContext:
    """The protein inside its genome window; substitutions change only its own residues."""

    window_ids: torch.Tensor  # (L,)
    pid: torch.Tensor  # (L,)
    allowed: torch.Tensor  # (P, P)
    first: int
    length: int
    description: str

    def build(self, residues: np.ndarray) -> ModelInput:
        if len(residues) != self.length:
            raise ValueError(f"the protein has {self.length} residues in its genome, got {len(residues)}")
        ids = self.window_ids.clone()
        ids[self.first : self.first + self.length] = torch.from_numpy(residues)
        return ModelInput(ids, self.first, self.pid, self.allowed)


def read_genomes(path: str | Path, genome_rule: str = "file"):
    from lcplm.data.genomes import read_genbank, read_protein_fasta

    p = Path(path)
    if p.suffix.lower() in (".gb", ".gbk", ".gbff", ".genbank"):
        return read_genbank(p)
    return read_protein_fasta(p, genome_rule=genome_rule)


def genome_context(genomes, protein_id: str, wild_type: str, max_tokens: int = 61000,
                   pair_source: str = "dense", where: str = "genome") -> GenomeContext:
    """The window of ``genomes`` that holds ``protein_id``, with its pair source's ``allowed``."""
    from lcplm.data.genomes import genome_windows
    from lcplm.data.pair_sources import PairSourceConfig, build_pair_source

    if pair_source not in STATIC_PAIR_SOURCES:
        raise UserError(f"--pair-source must be one of {list(STATIC_PAIR_SOURCES)}, got {pair_source!r}")
    owner = next((g for g in genomes for p in g.proteins if p.protein_id == protein_id), None)
    if owner is None:
        ids = [p.protein_id for g in genomes for p in g.proteins]
        raise UserError(f"{where}: no protein {protein_id!r} (it has {len(ids)} proteins, e.g. {', '.join(ids[:5])})")
    protein = next(p for p in owner.proteins if p.protein_id == protein_id)
    if protein.sequence.upper() != wild_type:
        raise UserError(f"{where}: protein {protein_id!r} ({len(protein.sequence)} residues) is not the assay's "
                        f"wild type ({len(wild_type)} residues)")
    window = next(w for w in genome_windows(owner, max_tokens) if protein_id in w.protein_ids)
    if protein_id in window.cropped:
        raise UserError(f"{where}: protein {protein_id!r} ({len(wild_type)} residues) does not fit a "
                        f"{max_tokens}-token genome window (raise --genome-max-tokens)")
    k = window.protein_ids.index(protein_id)
    first = int((window.pid == k).nonzero()[0]) + 1  # every protein is framed <cls> P <eos> in its window
    allowed = build_pair_source(PairSourceConfig(name=pair_source), genomes).allowed(window)
    desc = (f"inside genome {owner.genome_id} (window of {len(window.proteins)} proteins, {len(window)} tokens, "
            f"pair source {pair_source})")
    return GenomeContext(window.input_ids, window.pid, allowed, first, len(wild_type), desc)


# ------------------------------------------------------------------------------------ windows


def optimal_window(token_index: int, n_tokens: int, window: int) -> tuple[int, int]:
    """ProteinGym's ``get_optimal_window``: the ``[start, end)`` token window around one site.

    ``n_tokens`` counts ``<cls>`` and ``<eos>``. Whole when it fits; else ``window`` tokens from
    the start or up to the end when the site is within half a window of it; else centred.
    """
    half = window // 2
    if n_tokens <= window:
        return 0, n_tokens
    if token_index < half:
        return 0, window
    if token_index >= n_tokens - half:
        return n_tokens - window, n_tokens
    return max(0, token_index - half), min(n_tokens, token_index + half)


@dataclass(frozen=True)
class Job:
    """One model row: tokens ``[start, end)`` of input ``source`` with ``mask`` (an index into
    the row, or -1) replaced by ``<mask>``; log-probabilities are read at ``read`` (row indices)."""

    source: int
    start: int
    end: int
    mask: int
    read: tuple[int, ...]


def site_jobs(source: int, inp: ModelInput, residue_indices: Sequence[int], masked: bool,
              window: Optional[int]) -> list[Job]:
    """Jobs that give one log-probability row per residue index, in order."""
    n = int(inp.ids.numel())
    spans = []
    for r in residue_indices:
        t = inp.first + int(r)
        s, e = optimal_window(t, n, window) if window is not None and inp.pid is None else (0, n)
        spans.append((t, s, e))
    if masked:
        return [Job(source, s, e, t - s, (t - s,)) for t, s, e in spans]
    groups: dict[tuple[int, int], list[int]] = {}
    for t, s, e in spans:
        groups.setdefault((s, e), []).append(t - s)
    return [Job(source, s, e, -1, tuple(read)) for (s, e), read in groups.items()]


def dense_row_cap(model: nn.Module, length: int, device: torch.device) -> Optional[int]:
    """Rows per batch that keep a genome transformer with ``attention_backend: auto`` on CPU
    below the size where ``lcplm.models.attention`` leaves SDPA for the block-sparse path
    (B x heads x L x L fp32 scores over ``DENSE_CPU_MAX_SCORES``): that switch depends on the
    batch size, and a scoring batch of short rows would cross it and run several times slower
    (measured in benchmarks/model/variants_speed.py). None: no cap."""
    cfg = getattr(model, "cfg", None)
    if device.type != "cpu" or getattr(cfg, "name", None) != "sparse_transformer" or cfg.attention_backend != "auto":
        return None
    from lcplm.models.attention import DENSE_CPU_MAX_SCORES

    return max(1, DENSE_CPU_MAX_SCORES // (cfg.heads * length * length))


def run_jobs(model: nn.Module, inputs: Sequence[ModelInput], jobs: Sequence[Job], max_tokens: int,
             device: torch.device, half: bool = False, progress: bool = False) -> list[torch.Tensor]:
    """Run the jobs in batches of at most ``max_tokens`` tokens (B x L; a longer row goes alone,
    and :func:`dense_row_cap` may cap B); returns per job its ``(len(read), 33)`` float32
    log-probabilities, in job order."""
    out: list[Optional[torch.Tensor]] = [None] * len(jobs)
    order = sorted(range(len(jobs)), key=lambda j: jobs[j].end - jobs[j].start, reverse=True)
    batches, cur, width, cap = [], [], 0, None
    for j in order:  # longest first: a batch's first row sets its padded width
        if cur and (width * (len(cur) + 1) > max_tokens or (cap is not None and len(cur) >= cap)):
            batches.append(cur)
            cur = []
        if not cur:
            width = jobs[j].end - jobs[j].start
            cap = dense_row_cap(model, width, device)
        cur.append(j)
    if cur:
        batches.append(cur)
    from tqdm.auto import tqdm

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and half
                else torch.autocast(device.type, enabled=False))
    for batch in tqdm(batches, desc="score", unit="batch", disable=not progress, file=sys.stderr):
        rows = [jobs[j] for j in batch]
        L = max(r.end - r.start for r in rows)
        ids = torch.full((len(rows), L), tok.PAD, dtype=torch.long)
        lengths = torch.tensor([r.end - r.start for r in rows], dtype=torch.long)
        genome = inputs[rows[0].source].pid is not None
        pid = torch.full((len(rows), L), -1, dtype=torch.long) if genome else None
        for b, r in enumerate(rows):
            src = inputs[r.source]
            ids[b, : r.end - r.start] = src.ids[r.start : r.end]
            if r.mask >= 0:
                ids[b, r.mask] = tok.MASK
            if genome:
                pid[b, : r.end - r.start] = src.pid[r.start : r.end]
        kwargs: dict[str, torch.Tensor] = {"lengths": lengths.to(device)}
        if genome:
            kwargs["pid"] = pid.to(device)
            kwargs["allowed"] = torch.stack([inputs[r.source].allowed for r in rows]).to(device)
        with torch.inference_mode(), autocast:
            logits = model(ids.to(device), **kwargs)
        bi = torch.tensor([b for b, r in enumerate(rows) for _ in r.read])
        pi = torch.tensor([p for r in rows for p in r.read])
        lp = torch.log_softmax(logits[bi.to(device), pi.to(device), :ESM_VOCAB].float(), dim=-1).cpu()
        k = 0
        for j, r in zip(batch, rows):
            out[j] = lp[k : k + len(r.read)]
            k += len(r.read)
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ scoring


@dataclass
class ScoreResult:
    scores: np.ndarray  # (N,) float64, higher = predicted fitter
    forward_rows: int  # sequences run through the model (batch rows)
    tokens: int  # tokens run through the model
    seconds: float


def _aa_ids(letters: str) -> np.ndarray:
    return np.asarray([tok.TOKEN_TO_ID[a] for a in letters], np.int64)


def score_substitutions(model: nn.Module | ScoringModel, wild_type: str,
                        substitutions: Sequence[Sequence[Substitution]], method: str = "masked-marginal", *,
                        context: Optional[SingleProtein | GenomeContext] = None, window: Optional[int | str] = "auto",
                        max_tokens: int = 16384, device: str | torch.device = "cpu", half: bool = False,
                        progress: bool = False) -> ScoreResult:
    """Zero-shot scores of variants of ``wild_type`` (see the module docstring for the methods)."""
    from lcplm.embed import resolve_device

    if method not in METHODS:
        raise UserError(f"method must be one of {list(METHODS)}, got {method!r}")
    sm = as_scoring_model(model)
    if isinstance(context, GenomeContext) and not sm.takes_genome_context:
        raise UserError(f"genome context needs a genome transformer (sparse_transformer); this model is {sm.kind!r}")
    w = resolve_window(window, sm)
    ctx = context or SingleProtein()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    was_training = sm.model.training
    sm.model.eval().to(dev)
    wt_res = tok.encode_residues(wild_type, "wild type")
    for subs in substitutions:
        for s in subs:
            if not 0 <= s.index < len(wild_type) or wild_type[s.index] != s.wt:
                raise UserError(f"substitution {s.wt}{s.index + 1}{s.mt} does not fit the {len(wild_type)}-residue wild type")
    t0 = time.time()
    try:
        if method in ("masked-marginal", "wt-marginal"):
            sites = sorted({s.index for subs in substitutions for s in subs})
            row = {r: k for k, r in enumerate(sites)}
            inp = ctx.build(wt_res)
            jobs = site_jobs(0, inp, sites, method == "masked-marginal", w)
            lp = torch.cat(run_jobs(sm.model, [inp], jobs, max_tokens, dev, half, progress)).double().numpy()
            scores = np.zeros(len(substitutions), np.float64)
            for n, subs in enumerate(substitutions):
                for s in subs:
                    v = lp[row[s.index]]
                    scores[n] += v[tok.TOKEN_TO_ID[s.mt]] - v[tok.TOKEN_TO_ID[s.wt]]
            rows, tokens = len(jobs), sum(j.end - j.start for j in jobs)
        else:
            keys = [tuple(sorted((s.index, s.mt) for s in subs if s.mt != s.wt)) for subs in substitutions]
            distinct = list(dict.fromkeys([()] + keys))
            pll = np.zeros(len(distinct), np.float64)
            positions = np.arange(len(wt_res))
            rows = tokens = 0
            for c0 in range(0, len(distinct), PLL_CHUNK):  # a chunk of sequences at a time bounds memory
                inputs, seqs = [], []
                for key in distinct[c0 : c0 + PLL_CHUNK]:
                    res = wt_res.copy()
                    for i, mt in key:
                        res[i] = tok.TOKEN_TO_ID[mt]
                    inputs.append(ctx.build(res))
                    seqs.append(res)
                jobs = [j for k, inp in enumerate(inputs) for j in site_jobs(k, inp, positions, True, w)]
                lps = run_jobs(sm.model, inputs, jobs, max_tokens, dev, half, progress)
                for k, res in enumerate(seqs):
                    block = torch.cat(lps[k * len(positions) : (k + 1) * len(positions)]).double().numpy()  # (L, 33)
                    pll[c0 + k] = float(block[positions, res].sum())
                rows += len(jobs)
                tokens += sum(j.end - j.start for j in jobs)
            index = {key: k for k, key in enumerate(distinct)}
            scores = np.asarray([pll[index[key]] - pll[0] for key in keys], np.float64)
    finally:
        sm.model.train(was_training)
    return ScoreResult(scores, rows, int(tokens), time.time() - t0)


# ------------------------------------------------------------------------------------ assays


@dataclass
class AssayResult:
    assay: DMSAssay
    method: str
    result: ScoreResult
    metrics: dict[str, float]
    window: Optional[int]
    context: str
    reference: Optional[dict[str, Any]] = None

    @property
    def mutants_per_second(self) -> float:
        return len(self.assay) / self.result.seconds if self.result.seconds > 0 else math.inf


def score_assay(model: nn.Module | ScoringModel | str | Path, assay: DMSAssay, method: str = "masked-marginal", *,
                context: Optional[SingleProtein | GenomeContext] = None, window: Optional[int | str] = "auto",
                max_tokens: int = 16384, device: str | torch.device = "cpu", half: bool = False,
                progress: bool = False) -> AssayResult:
    """Score every row of ``assay`` and compute ProteinGym's metrics against its measurements."""
    from lcplm.tasks.metrics import proteingym_metrics

    sm = as_scoring_model(model)
    res = score_substitutions(sm, assay.wild_type, assay.substitutions, method, context=context, window=window,
                              max_tokens=max_tokens, device=device, half=half, progress=progress)
    metrics = proteingym_metrics(assay.scores, res.scores, assay.score_bins)
    ctx = context.description if context is not None else SingleProtein.description
    return AssayResult(assay, method, res, metrics, resolve_window(window, sm), ctx)


def evaluate_assay(model: nn.Module | ScoringModel | str | Path, dms: str | Path, *, wild_type: Optional[str | Path] = None,
                   offset: int = 1, method: str = "masked-marginal", window: Optional[int | str] = "auto",
                   max_tokens: int = 16384, device: str | torch.device = "cpu", half: bool = False) -> dict[str, float]:
    """ProteinGym's metrics of one model on one DMS table: ``{spearman, ndcg, top10_recall[, auc, mcc]}``.

    ``model``: an nn.Module (a masked LM), a :class:`ScoringModel` or a checkpoint path;
    ``wild_type``: a one-record FASTA (None: recovered from ``mutated_sequence``).
    """
    wt = read_wild_type_fasta(wild_type) if wild_type is not None else None
    assay = read_dms(dms, wt, offset)
    return score_assay(model, assay, method, window=window, max_tokens=max_tokens, device=device, half=half).metrics


# ------------------------------------------------------------------------------------ outputs


def read_reference(path: str | Path, column: str, assay_name: str) -> Optional[float]:
    """A published number from a ProteinGym-style table (``DMS_id`` + one column per model)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: reference table not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "DMS_id" not in rows[0]:
        raise UserError(f"{path}: expected a CSV with a 'DMS_id' column and one column per model")
    if column not in rows[0]:
        models = [c for c in rows[0] if c != "DMS_id"]
        raise UserError(f"{path}: no column {column!r} (models: {', '.join(models)})")
    for r in rows:
        if r["DMS_id"] == assay_name:
            try:
                return float(r[column])
            except ValueError:
                raise UserError(f"{path}: {assay_name} / {column}: {r[column]!r} is not a number") from None
    return None


def format_metric(v: Optional[float]) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def assay_record(r: AssayResult, sm: ScoringModel, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "assay": r.assay.name,
        "dms": str(r.assay.path),
        "model": sm.label,
        "model_description": sm.description,
        "model_config": dataclasses.asdict(sm.cfg) if dataclasses.is_dataclass(sm.cfg) else str(sm.cfg),
        "method": r.method,
        "context": r.context,
        "window": r.window,
        "n_mutants": len(r.assay),
        "n_sites": len(r.assay.sites),
        "wild_type_length": len(r.assay.wild_type),
        "offset": r.assay.offset,
        "metrics": r.metrics,
        "reference": r.reference,
        "forward_rows": r.result.forward_rows,
        "tokens": r.result.tokens,
        "seconds": round(r.result.seconds, 3),
        "mutants_per_second": round(r.mutants_per_second, 2),
        "options": options,
        "torch": torch.__version__,
    }


def scores_csv(r: AssayResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    has_bin = r.assay.score_bins is not None
    w.writerow(["mutant", "DMS_score"] + (["DMS_score_bin"] if has_bin else []) + [r.method])
    for n, m in enumerate(r.assay.mutants):
        w.writerow([m, repr(float(r.assay.scores[n]))] + ([int(r.assay.score_bins[n])] if has_bin else [])
                   + [repr(float(r.result.scores[n]))])
    return buf.getvalue()


def summary_table(records: Sequence[dict[str, Any]]) -> str:
    """One line per assay (metrics, mutants, mutants/s), then the mean over assays."""
    ref = any(rec.get("reference") for rec in records)
    head = "| assay | model | method | mutants | " + " | ".join(METRIC_ORDER) + " |" + (" reference Spearman |" if ref else "") + " mutants/s |"
    sep = "|---|---|---|---:|" + "---:|" * len(METRIC_ORDER) + ("---:|" if ref else "") + "---:|"
    lines = [head, sep]
    for rec in records:
        cells = [format_metric(rec["metrics"].get(m)) for m in METRIC_ORDER]
        refcell = [format_metric((rec.get("reference") or {}).get("spearman"))] if ref else []
        lines.append(f"| {rec['assay']} | {rec['model']} | {rec['method']} | {rec['n_mutants']} | "
                     + " | ".join(cells + refcell) + f" | {rec['mutants_per_second']:.1f} |")
    if len(records) > 1:
        means = []
        for m in METRIC_ORDER:
            vals = [rec["metrics"][m] for rec in records if m in rec["metrics"] and not math.isnan(rec["metrics"][m])]
            means.append(format_metric(sum(vals) / len(vals)) if vals else "n/a")
        lines.append(f"| mean of {len(records)} assays | | | {sum(r['n_mutants'] for r in records)} | "
                     + " | ".join(means + ([""] if ref else [])) + " | |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str | Path, results: Sequence[AssayResult], sm: ScoringModel,
                  options: dict[str, Any]) -> list[dict[str, Any]]:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    records = []
    for r in results:
        rec = assay_record(r, sm, options)
        atomic_write_text(out / f"{r.assay.name}.scores.csv", scores_csv(r))
        atomic_write_text(out / f"{r.assay.name}.json", json.dumps(rec, indent=2, default=str) + "\n")
        records.append(rec)
    intro = (f"# Zero-shot variant effects: {sm.label}\n\n{sm.description}; method {options['method']}; "
             "metrics as ProteinGym computes them (NDCG and recall on the top 10%; AUC and MCC against DMS_score_bin).\n\n")
    atomic_write_text(out / "summary.md", intro + summary_table(records))
    atomic_write_text(out / "summary.json", json.dumps({"model": sm.label, "assays": records}, indent=2, default=str) + "\n")
    return records
