"""Genomes as data: readers, genome tokenisation and windows at protein boundaries.

A :class:`Genome` is its proteins in genome order. Three readers build them, each from a path,
pipe, FIFO or ``-`` (plain or gzip), each adding to a :class:`GenomeReadSummary` (one line:
genomes, proteins, what was skipped and why, partial CDS, characters read as <unk>):

- :func:`read_genbank`: one genome per GenBank record, CDS proteins sorted by start coordinate,
  with strand, locus tag, product, PHROG id and function category (pharokka splits a category
  such as "DNA, RNA and nucleotide metabolism" on its commas into several ``/function``
  qualifiers: they are joined back). A protein is the CDS's ``/translation``; without one it is
  translated from the record's sequence with Biopython's ``cds=True`` rules (``/transl_table``,
  default 11; an alternative start codon such as GTG or TTG gives M; the stop codon is checked
  and dropped). A complete CDS that fails those rules (length not a multiple of 3, no start or
  stop codon, an internal stop) is skipped and counted with its reason; ``/pseudo`` CDS without a
  translation are skipped and counted. A partial CDS (``<`` or ``>`` in its location) is
  translated from ``/codon_start`` over its whole codons and flagged (``GenomeProtein.partial``),
  never silently shortened. A truncated record (the file ends inside it, or its sequence is
  shorter than its LOCUS line says) and a CDS beyond the end of its sequence are errors naming
  the record.
- :func:`read_protein_fasta`: protein FASTA grouped into genomes by a header rule
  (``prodigal``: ``>contig_N # start # end # strand # ...``; ``regex:PATTERN`` with named
  groups ``genome`` and optionally ``order``; ``file``: the whole file is one genome) or by a
  ``protein <TAB> genome [<TAB> order]`` table.
- :func:`read_viralembed`: ViralEmbed's genome FASTA, one record per genome with its proteins
  concatenated in genome order and their lengths at the end of the header:
  ``NAME_prots_L1_L2_..._Ln_``, or ``NAME_L1_L2_..._Ln`` where NAME may itself end in digits
  (the lengths are the trailing numbers that sum to the record's length; lengths are >= 1, so
  at most one such suffix exists). Lengths that do not sum to the record's length are an error
  naming the record. Protein ids are ``NAME_pK`` (K = 1, 2, ...).

A genome becomes token windows (:func:`genome_windows`) of at most ``max_tokens`` tokens::

    <cls> P_0 <eos> <cls> P_1 <eos> ... <cls> P_{n-1} <eos>

split only at protein boundaries: every protein framed as ESM-2 frames a sequence. ``pid``
gives each token its protein index inside the window (a protein's ``<cls>`` and ``<eos>`` are
its own), so no token belongs to two proteins; -1 is reserved for padding. Under the
``single_protein`` pair source (attention only inside a protein) each protein therefore sees
exactly ESM-2's input ``<cls> P <eos>`` (rotary scores depend only on i - j, so its offset in
the window does not matter) and the genome model equals ESM-2 on every protein of a window;
the other pair sources see the same tokens and differ only in which proteins attend to each
other. A protein longer than ``max_tokens - 2`` residues is cropped to its first
``max_tokens - 2`` residues and gets a window of its own (``GenomeWindow.cropped`` names it).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lcplm.data import tokenizer
from lcplm.data.fasta import FastaCounts, iter_fasta
from lcplm.data.inputs import DECOMPRESSION_ERRORS, input_name, open_text_input
from lcplm.errors import UserError

log = logging.getLogger(__name__)

# The PHROG function categories (Terzian et al. 2021), as pharokka writes them.
PHROG_CATEGORIES: tuple[str, ...] = (
    "connector",
    "DNA, RNA and nucleotide metabolism",
    "head and packaging",
    "integration and excision",
    "lysis",
    "moron, auxiliary metabolic gene and host takeover",
    "other",
    "tail",
    "transcription regulation",
    "unknown function",
)
_CATEGORY_KEY = {re.sub(r"[\s,]+", " ", c.lower()).strip(): c for c in PHROG_CATEGORIES}


def phrog_category(function: Optional[str]) -> Optional[str]:
    """The canonical PHROG category of a reassembled ``/function`` text, or None."""
    if not function:
        return None
    return _CATEGORY_KEY.get(re.sub(r"[\s,]+", " ", function.lower()).strip())


@dataclass(frozen=True)
class GenomeProtein:
    """One protein of a genome; coordinates are 1-based inclusive, strand +1 / -1."""

    protein_id: str
    sequence: str
    start: Optional[int] = None
    end: Optional[int] = None
    strand: Optional[int] = None
    product: Optional[str] = None
    function: Optional[str] = None  # the /function text, commas restored
    phrog: Optional[str] = None
    partial: bool = False  # from a CDS with a '<' or '>' end: the protein may be incomplete

    @property
    def category(self) -> Optional[str]:
        return phrog_category(self.function)


@dataclass
class Genome:
    genome_id: str
    proteins: list[GenomeProtein]
    source: str = ""  # file it was read from, for error messages

    @property
    def num_residues(self) -> int:
        return sum(len(p.sequence) for p in self.proteins)


@dataclass
class GenomeReadSummary:
    """What the genome readers kept and left out, as one line (:meth:`line`)."""

    files: list[str] = field(default_factory=list)
    genomes: int = 0
    proteins: int = 0
    partial: int = 0  # proteins from partial CDS (flagged)
    unk: int = 0  # residues read as <unk> (digits, 'J', '*' inside a protein)
    unk_proteins: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> CDS left out

    def add_genome(self, genome: "Genome") -> None:
        self.genomes += 1
        self.proteins += len(genome.proteins)
        self.partial += sum(p.partial for p in genome.proteins)
        for p in genome.proteins:
            n = tokenizer.count_unk(tokenizer.residue_bytes(p.sequence, p.protein_id))
            if n:
                self.unk += n
                self.unk_proteins += 1

    def line(self) -> str:
        files = ", ".join(self.files[:3]) + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")
        parts = [f"{self.proteins:,} proteins"]
        if self.partial:
            parts.append(f"{self.partial} from partial CDS (flagged)")
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"{sum(self.skipped.values())} CDS skipped: {reasons}")
        if self.unk:
            parts.append(f"{self.unk} residues read as <unk> in {self.unk_proteins} proteins")
        return f"genomes: {self.genomes:,} from {files} ({'; '.join(parts)})"


def _finish(summary: Optional[GenomeReadSummary], own: GenomeReadSummary, genomes: list[Genome]) -> None:
    for g in genomes:
        own.add_genome(g)
    if summary is None:
        (log.warning if own.skipped else log.info)(own.line())
    else:
        summary.files += own.files
        summary.genomes += own.genomes
        summary.proteins += own.proteins
        summary.partial += own.partial
        summary.unk += own.unk
        summary.unk_proteins += own.unk_proteins
        summary.skipped.update(own.skipped)


# ----------------------------------------------------------------------------- GenBank


def _qualifier(feature, key: str) -> Optional[str]:
    vals = feature.qualifiers.get(key)
    return vals[0] if vals else None


# Biopython's TranslationError texts (cds=True) -> the reason counted in the summary
_CDS_FAILURES = (
    ("multiple of three", "length not a multiple of 3"),
    ("not a start codon", "no start codon"),
    ("not a stop codon", "no stop codon"),
    ("stop codon", "internal stop codon"),
)
_TRUNCATION = ("premature end", "expected sequence length")


def _iter_genbank_records(text: io.TextIOBase, name: str):
    """Biopython's GenBank records, with truncation warnings turned into errors naming the record."""
    from Bio import BiopythonParserWarning, SeqIO

    last = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BiopythonParserWarning)
        records = SeqIO.parse(text, "genbank")
        seen = 0
        while True:
            try:
                rec = next(records)
            except StopIteration:
                break
            except DECOMPRESSION_ERRORS as e:
                raise UserError(f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
            except Exception as e:  # Biopython raises ValueError and assorted parser errors
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                after = f" after record {last!r}" if last else ""
                raise UserError(f"{name}: malformed GenBank{after}: {msg}") from None
            gid = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
            for w in caught[seen:]:
                msg = str(w.message).splitlines()[0]
                if any(t in msg.lower() for t in _TRUNCATION):
                    raise UserError(f"{name}: record {gid!r} is truncated or damaged ({msg.rstrip('.')})")
            seen = len(caught)
            last = gid
            yield gid, rec


def _cds_protein(f, rec, gid: str, pid: str, name: str) -> tuple[Optional[str], bool, Optional[str]]:
    """(protein or None, partial, reason skipped or None) of one CDS feature."""
    from Bio.Data.CodonTable import TranslationError
    from Bio.Seq import UndefinedSequenceError
    from Bio.SeqFeature import AfterPosition, BeforePosition

    where = f"{name}: record {gid!r}, CDS {pid!r}"
    loc = f.location
    partial = any(isinstance(p, (BeforePosition, AfterPosition)) for part in loc.parts for p in (part.start, part.end))
    n_bases = len(rec.seq)  # the LOCUS length, also for records without ORIGIN
    if int(loc.end) > n_bases:
        raise UserError(
            f"{where}: location ends at {int(loc.end)}, beyond the record's {n_bases} bp sequence "
            "(a truncated record?)"
        )
    seq = _qualifier(f, "translation")
    if seq is not None:
        return seq, partial, None
    if "pseudo" in f.qualifiers or "pseudogene" in f.qualifiers:
        return None, partial, "pseudo without /translation"
    table = _qualifier(f, "transl_table") or "11"
    codon_start = _qualifier(f, "codon_start") or "1"
    if not table.isdigit() or codon_start not in ("1", "2", "3"):
        raise UserError(f"{where}: /transl_table {table!r} or /codon_start {codon_start!r} is not valid")
    try:
        nuc = f.extract(rec.seq)
        if partial:
            nuc = nuc[int(codon_start) - 1 :]
            protein = str(nuc[: len(nuc) // 3 * 3].translate(table=int(table)))  # a final '*' is dropped later
            if not tokenizer.has_letter(protein.encode("latin-1")):
                return None, True, "partial CDS without a sense codon"
            return protein, True, None
        if codon_start != "1":
            return None, False, "complete CDS with /codon_start other than 1"
        return str(nuc.translate(table=int(table), cds=True)), False, None
    except TranslationError as e:
        msg = str(e).lower()
        return None, False, next(why for key, why in _CDS_FAILURES if key in msg) if any(
            key in msg for key, _ in _CDS_FAILURES) else f"untranslatable ({str(e)[:40]})"
    except (KeyError, ValueError) as e:  # unknown translation table, ambiguous bases
        raise UserError(f"{where}: no /translation and cannot translate: {str(e).splitlines()[0]}") from None
    except UndefinedSequenceError:
        raise UserError(f"{where}: no /translation and the record has no sequence to translate") from None


def read_genbank(path: str | Path, summary: Optional[GenomeReadSummary] = None) -> list[Genome]:
    """One :class:`Genome` per record of a GenBank file, CDS proteins in start order.

    See the module docstring for how proteins are made. ``summary`` collects counts; without
    one, a summary line for this file is logged (a warning when CDS were skipped).
    """
    name = input_name(path)
    own = GenomeReadSummary([name])
    genomes: list[Genome] = []
    inp, text = open_text_input(path, "GenBank")
    with inp:
        for gid, rec in _iter_genbank_records(text, name):
            cds = [f for f in rec.features if f.type == "CDS"]
            for f in cds:
                if f.location is None:
                    tag = _qualifier(f, "locus_tag") or "?"
                    raise UserError(f"{name}: record {gid!r}, CDS {tag!r}: location could not be parsed")
            cds.sort(key=lambda f: (int(f.location.start), int(f.location.end)))
            proteins = []
            for n, f in enumerate(cds, 1):
                pid = _qualifier(f, "locus_tag") or _qualifier(f, "protein_id") or _qualifier(f, "ID")
                pid = pid or f"{gid}_CDS_{n:04d}"
                seq, partial, skipped = _cds_protein(f, rec, gid, pid, name)
                if seq is None:
                    own.skipped[skipped] += 1
                    continue
                seq = tokenizer.clean_sequence(seq, record=f"{name}: {gid}/{pid}").upper()
                func = f.qualifiers.get("function")
                proteins.append(
                    GenomeProtein(
                        protein_id=pid,
                        sequence=seq,
                        start=int(f.location.start) + 1,
                        end=int(f.location.end),
                        strand=f.location.strand,
                        product=_qualifier(f, "product"),
                        function=",".join(func) if func else None,
                        phrog=_qualifier(f, "phrog"),
                        partial=partial,
                    )
                )
            if not proteins:
                why = f" ({sum(own.skipped.values())} CDS skipped so far: {dict(own.skipped)})" if own.skipped else ""
                raise UserError(f"{name}: record {gid!r} has no CDS with a protein{why}")
            genomes.append(Genome(gid, proteins, name))
    if not genomes:
        raise UserError(f"{name}: no GenBank records (expected LOCUS ... // entries)")
    _finish(summary, own, genomes)
    return genomes


# ----------------------------------------------------------------------------- FASTA


_PRODIGAL = re.compile(r"^(?P<genome>\S+)_(?P<order>\d+)(?:\s|$)")
_PRODIGAL_COORDS = re.compile(r"#\s*(\d+)\s*#\s*(\d+)\s*#\s*(-?1)\s*#")


def read_protein_fasta(
    path: str | Path,
    genome_rule: str = "prodigal",
    protein_table: str | Path | None = None,
    summary: Optional[GenomeReadSummary] = None,
) -> list[Genome]:
    """Group a protein FASTA into genomes; proteins in genome order.

    ``genome_rule``: ``prodigal`` (``>CONTIG_N # start # end # strand # ...``: genome CONTIG,
    order N, coordinates kept), ``regex:PATTERN`` (named group ``genome``, optional ``order``
    (an integer), matched at the start of the header), or ``file`` (one genome named after
    the file). With ``protein_table`` (``protein <TAB> genome [<TAB> order]``, '#' comments)
    the rule is ignored; proteins keep the table's order, or the file's order without one.
    """
    name = input_name(path)
    table: Optional[dict[str, tuple[str, Optional[int]]]] = None
    if protein_table is not None:
        table = read_protein_table(protein_table)
    pattern: Optional[re.Pattern] = None
    if table is None:
        if genome_rule == "prodigal":
            pattern = _PRODIGAL
        elif genome_rule.startswith("regex:"):
            try:
                pattern = re.compile(genome_rule[len("regex:"):])
            except re.error as e:
                raise UserError(f"genome rule {genome_rule!r}: bad regular expression: {e}") from None
            if "genome" not in pattern.groupindex:
                raise UserError(f"genome rule {genome_rule!r}: needs a named group (?P<genome>...)")
        elif genome_rule != "file":
            raise UserError(
                f"genome rule {genome_rule!r}: expected 'prodigal', 'regex:PATTERN' or 'file'"
            )

    groups: dict[str, list[tuple[tuple, GenomeProtein]]] = {}
    seen: set[str] = set()
    for n_records, rec in enumerate(iter_fasta(path), 1):
        pid = rec.id
        header = f"{rec.id} {rec.description}".rstrip()
        seq = rec.sequence
        where = f"{name}: record {pid!r} (#{n_records})"
        if pid in seen:
            raise UserError(f"{where}: duplicate protein id")
        seen.add(pid)
        start = end = strand = None
        if table is not None:
            if pid not in table:
                raise UserError(f"{where}: not in the protein table {protein_table}")
            genome, order = table[pid]
            key = (order if order is not None else n_records,)
        elif pattern is None:
            genome, key = Path(name).stem if name != "<stdin>" else "stdin", (n_records,)
        else:
            m = pattern.match(header)
            if m is None or not m.group("genome"):
                raise UserError(f"{where}: header does not match genome rule {genome_rule!r}")
            genome = m.group("genome")
            order = m.groupdict().get("order")
            if order is not None and not order.isdigit():
                raise UserError(f"{where}: order {order!r} from genome rule is not an integer")
            key = (int(order) if order is not None else n_records,)
            coords = _PRODIGAL_COORDS.search(header) if genome_rule == "prodigal" else None
            if coords:
                start, end, strand = int(coords.group(1)), int(coords.group(2)), int(coords.group(3))
        seq = tokenizer.clean_sequence(seq, record=f"{name}: {pid}").upper()
        groups.setdefault(genome, []).append(
            (key, GenomeProtein(pid, seq, start=start, end=end, strand=strand))
        )
    genomes = []
    for gid, items in groups.items():
        items.sort(key=lambda kv: kv[0])
        genomes.append(Genome(gid, [p for _, p in items], name))
    _finish(summary, GenomeReadSummary([name]), genomes)
    return genomes


# ----------------------------------------------------------------------------- ViralEmbed


_PROTS_MARK = "_prots_"


def viralembed_lengths(header: str, n_residues: int) -> tuple[str, list[int]]:
    """(genome name, protein lengths) of a ViralEmbed header for a record of ``n_residues``.

    ``NAME_prots_L1_..._Ln_``: everything after the last ``_prots_`` must be lengths.
    ``NAME_L1_..._Ln``: the trailing numbers (each >= 1) that sum to ``n_residues``.
    Raises ValueError with the reason when the header does not fit the record.
    """
    if _PROTS_MARK in header:
        name, _, tail = header.rpartition(_PROTS_MARK)
        tokens = tail.rstrip("_").split("_")
        if not name or not all(t.isdigit() and int(t) > 0 for t in tokens):
            raise ValueError(f"expected 'NAME{_PROTS_MARK}L1_L2_..._Ln_' with lengths >= 1, got ...{header[-60:]!r}")
        lengths = [int(t) for t in tokens]
        if sum(lengths) != n_residues:
            raise ValueError(
                f"its {len(lengths)} protein lengths sum to {sum(lengths):,}, but the sequence has {n_residues:,} residues"
            )
        return name, lengths
    tokens = header.rstrip("_").split("_")
    total = 0
    for k in range(1, len(tokens)):  # at least one token stays as the name
        t = tokens[-k]
        if not (t.isdigit() and int(t) > 0):
            break
        total += int(t)
        if total == n_residues:
            return "_".join(tokens[:-k]), [int(x) for x in tokens[-k:]]
        if total > n_residues:
            break
    raise ValueError(
        f"no trailing '_L1_..._Ln' protein lengths in the header sum to the sequence's {n_residues:,} residues"
    )


def read_viralembed(path: str | Path, summary: Optional[GenomeReadSummary] = None) -> list[Genome]:
    """One :class:`Genome` per record of a ViralEmbed genome FASTA (see the module docstring)."""
    name = input_name(path)
    genomes: list[Genome] = []
    counts = FastaCounts()
    for rec in iter_fasta(path, counts):
        header = f"{rec.id} {rec.description}".strip()
        seq = tokenizer.clean_sequence(rec.sequence, record=f"{name}: {rec.id}").upper()
        try:
            gid, lengths = viralembed_lengths(header, len(seq))
        except ValueError as e:
            raise UserError(f"{name}: record {rec.id!r} (#{counts.records}): {e}") from None
        bounds = np.cumsum([0] + lengths).tolist()
        proteins = [
            GenomeProtein(f"{gid}_p{k + 1}", seq[bounds[k] : bounds[k + 1]]) for k in range(len(lengths))
        ]
        genomes.append(Genome(gid, proteins, name))
    _finish(summary, GenomeReadSummary([name]), genomes)
    return genomes


def read_protein_table(path: str | Path) -> dict[str, tuple[str, Optional[int]]]:
    """``protein <TAB> genome [<TAB> order]`` -> {protein: (genome, order or None)}."""
    out: dict[str, tuple[str, Optional[int]]] = {}
    inp, text = open_text_input(path, "protein table")
    name = inp.name
    with inp:
        try:
            for n, line in enumerate(text, 1):
                row = line.rstrip("\r\n").split("\t")
                if not row[0].strip() or row[0].startswith("#"):
                    continue
                if len(row) not in (2, 3) or not row[1].strip():
                    raise UserError(f"{name}:{n}: expected 'protein<TAB>genome[<TAB>order]', got {row!r}")
                order = None
                if len(row) == 3:
                    try:
                        order = int(row[2])
                    except ValueError:
                        raise UserError(f"{name}:{n}: order {row[2]!r} is not an integer") from None
                protein = row[0].strip()
                if protein in out:
                    raise UserError(f"{name}:{n}: protein {protein!r} listed twice")
                out[protein] = (row[1].strip(), order)
        except DECOMPRESSION_ERRORS as e:
            raise UserError(f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
    if not out:
        raise UserError(f"{name}: protein table has no rows")
    return out


def check_unique_protein_ids(genomes: Sequence[Genome]) -> None:
    """Protein ids key PPI edges and pair scores: they must be unique across the data set."""
    owner: dict[str, str] = {}
    for g in genomes:
        for p in g.proteins:
            if p.protein_id in owner:
                raise UserError(
                    f"protein id {p.protein_id!r} appears in genome {owner[p.protein_id]!r} "
                    f"({g.source}) and in genome {g.genome_id!r}: protein ids must be unique"
                )
            owner[p.protein_id] = g.genome_id


# ----------------------------------------------------------------------------- windows


@dataclass
class GenomeWindow:
    """One model input: consecutive proteins of a genome.

    input_ids: (L,) long; pid: (L,) long, protein index in ``proteins`` per token.
    """

    genome_id: str
    proteins: list[GenomeProtein]
    first_protein: int  # index of proteins[0] in the genome
    input_ids: torch.Tensor
    pid: torch.Tensor
    cropped: list[str] = field(default_factory=list)  # ids of proteins cropped to fit

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def protein_ids(self) -> list[str]:
        return [p.protein_id for p in self.proteins]


def tokenize_proteins(seqs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``<cls> s_0 <eos> <cls> s_1 <eos> ... <cls> s_{n-1} <eos>`` and its pid; seqs are residue-id arrays.

    Returns input_ids (L,), pid (L,) with L = sum(len) + 2n; protein k's three parts have pid k.
    """
    n = len(seqs)
    if n == 0:
        raise ValueError("a window needs at least one protein")
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    ids = np.empty(int(lens.sum()) + 2 * n, dtype=np.int64)
    pid = np.empty_like(ids)
    pos = 0
    for k, s in enumerate(seqs):
        end = pos + len(s) + 2
        ids[pos], ids[pos + 1 : end - 1], ids[end - 1] = tokenizer.CLS, s, tokenizer.EOS
        pid[pos:end] = k
        pos = end
    return torch.from_numpy(ids), torch.from_numpy(pid)


def genome_windows(genome: Genome, max_tokens: int) -> list[GenomeWindow]:
    """Split a genome into windows of at most ``max_tokens`` tokens at protein boundaries.

    Greedy in genome order: a window takes proteins while ``sum(len + 2)`` fits.
    """
    if max_tokens < 3:
        raise UserError(f"max_tokens must be at least 3 (<cls> residue <eos>), got {max_tokens}")
    max_res = max_tokens - 2
    windows: list[GenomeWindow] = []
    cur: list[int] = []
    cur_tokens = 0
    encoded = [tokenizer.encode_residues(p.sequence, f"{genome.genome_id}/{p.protein_id}") for p in genome.proteins]

    def flush() -> None:
        nonlocal cur, cur_tokens
        if not cur:
            return
        seqs, cropped = [], []
        for i in cur:
            s = encoded[i]
            if len(s) > max_res:
                s = s[:max_res]
                cropped.append(genome.proteins[i].protein_id)
            seqs.append(s)
        ids, pid = tokenize_proteins(seqs)
        windows.append(
            GenomeWindow(genome.genome_id, [genome.proteins[i] for i in cur], cur[0], ids, pid, cropped)
        )
        cur, cur_tokens = [], 0

    for i, s in enumerate(encoded):
        need = min(len(s), max_res) + 2  # <cls> residues <eos>
        if cur and cur_tokens + need > max_tokens:
            flush()
        cur.append(i)
        cur_tokens += need
    flush()
    return windows


def protein_residue_mask(window_ids: torch.Tensor, pid: torch.Tensor, num_proteins: int) -> torch.Tensor:
    """(P, L) bool: residue tokens of each protein (specials and padding excluded).

    window_ids, pid: (L,).
    """
    res = tokenizer.is_residue(window_ids) | (window_ids == tokenizer.MASK)
    return (pid.unsqueeze(0) == torch.arange(num_proteins).unsqueeze(1)) & res.unsqueeze(0)
