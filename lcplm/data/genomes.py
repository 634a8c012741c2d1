"""Genomes as data: readers, genome tokenisation and windows at protein boundaries.

A :class:`Genome` is its proteins in genome order. Two readers build them:

- :func:`read_genbank`: one genome per GenBank record; each CDS ``/translation`` (translated
  from the record's sequence when a CDS has none; ``/pseudo`` CDS are skipped as they have
  no protein), sorted by start coordinate, with strand, locus tag, product, PHROG id and
  function category (pharokka splits a category such as "DNA, RNA and nucleotide
  metabolism" on its commas into several ``/function`` qualifiers: they are joined back).
- :func:`read_protein_fasta`: protein FASTA grouped into genomes by a header rule
  (``prodigal``: ``>contig_N # start # end # strand # ...``; ``regex:PATTERN`` with named
  groups ``genome`` and optionally ``order``; ``file``: the whole file is one genome) or by a
  ``protein <TAB> genome [<TAB> order]`` table.

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

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lcplm.data import tokenizer
from lcplm.data.fasta import iter_fasta
from lcplm.errors import UserError

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


# ----------------------------------------------------------------------------- paths


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")


# ----------------------------------------------------------------------------- GenBank


def _qualifier(feature, key: str) -> Optional[str]:
    vals = feature.qualifiers.get(key)
    return vals[0] if vals else None


def read_genbank(path: str | Path) -> list[Genome]:
    """One :class:`Genome` per record of a GenBank file, CDS proteins in start order."""
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    path = Path(path)
    _check_file(path)
    genomes: list[Genome] = []
    try:
        records = list(SeqIO.parse(str(path), "genbank"))
    except Exception as e:  # Biopython raises ValueError / assorted parser errors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: malformed GenBank: {msg}") from None
    if not records:
        raise UserError(f"{path}: no GenBank records (expected LOCUS ... // entries)")
    for rec in records:
        gid = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
        cds = [f for f in rec.features if f.type == "CDS"]
        for f in cds:
            if f.location is None:
                tag = _qualifier(f, "locus_tag") or "?"
                raise UserError(f"{path}: record {gid!r}, CDS {tag!r}: location could not be parsed")
        cds.sort(key=lambda f: (int(f.location.start), int(f.location.end)))
        proteins = []
        for n, f in enumerate(cds, 1):
            pid = _qualifier(f, "locus_tag") or _qualifier(f, "protein_id") or _qualifier(f, "ID")
            pid = pid or f"{gid}_CDS_{n:04d}"
            where = f"{path}: record {gid!r}, CDS {pid!r}"
            seq = _qualifier(f, "translation")
            if seq is None:
                if "pseudo" in f.qualifiers or "pseudogene" in f.qualifiers:
                    continue  # a pseudogene has no protein product
                table = _qualifier(f, "transl_table") or "11"
                try:
                    seq = str(f.translate(rec.seq, table=int(table), cds=False))
                except (UndefinedSequenceError, ValueError) as e:
                    raise UserError(f"{where}: no /translation and cannot translate: {e}") from None
            seq = tokenizer.clean_sequence(seq, record=f"{path}: {gid}/{pid}").upper()
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
                )
            )
        if not proteins:
            raise UserError(f"{path}: record {gid!r} has no CDS with a protein")
        genomes.append(Genome(gid, proteins, str(path)))
    return genomes


# ----------------------------------------------------------------------------- FASTA


_PRODIGAL = re.compile(r"^(?P<genome>\S+)_(?P<order>\d+)(?:\s|$)")
_PRODIGAL_COORDS = re.compile(r"#\s*(\d+)\s*#\s*(\d+)\s*#\s*(-?1)\s*#")


def read_protein_fasta(
    path: str | Path,
    genome_rule: str = "prodigal",
    protein_table: str | Path | None = None,
) -> list[Genome]:
    """Group a protein FASTA into genomes; proteins in genome order.

    ``genome_rule``: ``prodigal`` (``>CONTIG_N # start # end # strand # ...``: genome CONTIG,
    order N, coordinates kept), ``regex:PATTERN`` (named group ``genome``, optional ``order``
    (an integer), matched at the start of the header), or ``file`` (one genome named after
    the file). With ``protein_table`` (``protein <TAB> genome [<TAB> order]``, '#' comments)
    the rule is ignored; proteins keep the table's order, or the file's order without one.
    """
    path = Path(path)
    _check_file(path)
    table: Optional[dict[str, tuple[str, Optional[int]]]] = None
    if protein_table is not None:
        table = read_protein_table(Path(protein_table))
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
        where = f"{path}: record {pid!r} (#{n_records})"
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
            genome, key = path.stem, (n_records,)
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
        seq = tokenizer.clean_sequence(seq, record=f"{path}: {pid}").upper()
        groups.setdefault(genome, []).append(
            (key, GenomeProtein(pid, seq, start=start, end=end, strand=strand))
        )
    genomes = []
    for gid, items in groups.items():
        items.sort(key=lambda kv: kv[0])
        genomes.append(Genome(gid, [p for _, p in items], str(path)))
    return genomes


def read_protein_table(path: Path) -> dict[str, tuple[str, Optional[int]]]:
    """``protein <TAB> genome [<TAB> order]`` -> {protein: (genome, order or None)}."""
    _check_file(path)
    out: dict[str, tuple[str, Optional[int]]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            if len(row) not in (2, 3) or not row[1].strip():
                raise UserError(f"{path}:{n}: expected 'protein<TAB>genome[<TAB>order]', got {row!r}")
            order = None
            if len(row) == 3:
                try:
                    order = int(row[2])
                except ValueError:
                    raise UserError(f"{path}:{n}: order {row[2]!r} is not an integer") from None
            if row[0] in out:
                raise UserError(f"{path}:{n}: protein {row[0]!r} listed twice")
            out[row[0].strip()] = (row[1].strip(), order)
    if not out:
        raise UserError(f"{path}: protein table has no rows")
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
