"""Taxonomy tables for genomes: one structure, ``{genome id: {rank: label}}``, from three formats.

- :func:`read_genbank_taxonomy`: one entry per GenBank record, keyed by the genome id that
  :func:`lcplm.data.genomes.read_genbank` gives the record. ``species`` is the organism (the
  source feature's ``/organism``, else the ``ORGANISM`` line); ``taxid`` the source feature's
  ``/db_xref="taxon:N"``; higher ranks come from the record's lineage (Biopython's
  ``annotations["taxonomy"]``): the first name is the ``superkingdom`` when it is one of
  Viruses / Bacteria / Archaea / Eukaryota, the others are placed by their ICTV suffix
  (``-viria`` realm, ``-virae`` kingdom, ``-viricota`` phylum, ``-viricetes`` class, ``-virales``
  order, ``-viridae`` family, ``-virinae`` subfamily, a one-word ``-virus`` genus, and the
  sub-ranks ``-vira``, ``-virites``, ``-viricotina``, ``-viricetidae``, ``-virineae``) or, for
  cellular lineages, ``-ales`` order and ``-aceae`` family. GenBank lineages carry no rank
  names, so a name without one of these suffixes is not placed.
- :func:`read_rank_table`: ``genome <TAB> rank=label <TAB> rank=label ...`` lines ('#' comments;
  labels may contain spaces, not tabs).
- :func:`read_vcontact_taxonomy`: vConTACT2's reference CSV (``Organism/Name,Kingdom,Phylum,
  Class,Order,Family,Genus``, header names matched case-insensitively) with its gene-to-genome
  CSV (``protein_id,contig_id,keywords``) and the protein FASTA: genomes are the contig ids that
  own at least one protein of the FASTA, matched to a reference row by name (vConTACT writes a
  name's spaces as ``~`` in contig ids; both spellings match). :func:`vcontact_genomes` groups
  the same FASTA into :class:`~lcplm.data.genomes.Genome` objects by that CSV.

Labels that say "no label" (empty, ``Unassigned``, ``unclassified ...``, ``N/A``, ``NA``,
``None``, ``unknown``, ``-``) are left out, so a genome's dict holds only real labels. Missing
files, malformed lines and duplicate genomes are :class:`~lcplm.errors.UserError` lines naming
the file and line.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

from lcplm.data.genomes import Genome, read_protein_fasta
from lcplm.errors import UserError

Taxonomy = dict[str, dict[str, str]]

# Ranks in order from the top; tables may name others (they sort after these, by name).
RANKS: tuple[str, ...] = (
    "superkingdom",
    "realm",
    "subrealm",
    "kingdom",
    "subkingdom",
    "phylum",
    "subphylum",
    "class",
    "subclass",
    "order",
    "suborder",
    "family",
    "subfamily",
    "genus",
    "species",
)

SUPERKINGDOMS = ("Viruses", "Bacteria", "Archaea", "Eukaryota")

# ICTV rank suffixes (longest first where one ends another), then prokaryotic order/family.
_SUFFIX_RANKS: tuple[tuple[str, str], ...] = (
    ("viricotina", "subphylum"),
    ("viricota", "phylum"),
    ("viricetidae", "subclass"),
    ("viricetes", "class"),
    ("virineae", "suborder"),
    ("virinae", "subfamily"),
    ("virales", "order"),
    ("viridae", "family"),
    ("virites", "subkingdom"),
    ("virae", "kingdom"),
    ("viria", "realm"),
    ("vira", "subrealm"),
    ("ales", "order"),
    ("aceae", "family"),
)

_NO_LABEL = {"", "unassigned", "n/a", "na", "none", "unknown", "-", "."}


def is_label(text: Optional[str]) -> bool:
    """False for the spellings of "no label" (see the module docstring)."""
    if text is None:
        return False
    t = text.strip().lower()
    return t not in _NO_LABEL and not t.startswith("unclassified")


def rank_order(ranks) -> list[str]:
    """Ranks sorted from the top (:data:`RANKS`), unknown ones after them by name."""
    known = {r: i for i, r in enumerate(RANKS)}
    return sorted(set(ranks), key=lambda r: (known.get(r, len(RANKS)), r))


def lineage_ranks(lineage: list[str]) -> dict[str, str]:
    """Place lineage names on ranks by their suffix; names without a known suffix are dropped."""
    out: dict[str, str] = {}
    for k, name in enumerate(lineage):
        name = name.strip()
        if not is_label(name):
            continue
        if k == 0 and name in SUPERKINGDOMS:
            out["superkingdom"] = name
            continue
        if " " in name:  # group names such as "environmental samples"
            continue
        low = name.lower()
        rank = next((r for suffix, r in _SUFFIX_RANKS if low.endswith(suffix)), None)
        if rank is None and low.endswith("virus"):
            rank = "genus"
        if rank is not None:
            out[rank] = name
    return out


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: {what} is empty")


# ----------------------------------------------------------------------------- GenBank


def read_genbank_taxonomy(path: str | Path) -> Taxonomy:
    """{genome id: {rank: label}} from each record's organism, taxon db_xref and lineage."""
    from Bio import SeqIO

    path = Path(path)
    _check_file(path, "GenBank file")
    try:
        records = list(SeqIO.parse(str(path), "genbank"))
    except Exception as e:  # Biopython raises ValueError / assorted parser errors
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: malformed GenBank: {msg}") from None
    if not records:
        raise UserError(f"{path}: no GenBank records (expected LOCUS ... // entries)")
    out: Taxonomy = {}
    for rec in records:
        # the genome id rule of lcplm.data.genomes.read_genbank (a test keeps them equal)
        gid = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
        if gid in out:
            raise UserError(f"{path}: record {gid!r} appears twice")
        source = next((f for f in rec.features if f.type == "source"), None)
        quals = source.qualifiers if source is not None else {}
        labels = lineage_ranks(list(rec.annotations.get("taxonomy", [])))
        organism = (quals.get("organism") or [rec.annotations.get("organism")])[0]
        if is_label(organism):
            labels["species"] = organism.strip()
        taxa = [x.split(":", 1)[1] for x in quals.get("db_xref", []) if x.startswith("taxon:")]
        if taxa and taxa[0].strip():
            labels["taxid"] = taxa[0].strip()
        out[gid] = labels
    return out


# ----------------------------------------------------------------------------- TSV


def read_rank_table(path: str | Path) -> Taxonomy:
    """``genome <TAB> rank=label ...`` lines -> {genome id: {rank: label}}."""
    path = Path(path)
    _check_file(path, "taxonomy table")
    out: Taxonomy = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.split("\t")
            gid = cols[0].strip()
            if not gid or len(cols) < 2:
                raise UserError(f"{path}:{n}: expected 'genome<TAB>rank=label[<TAB>rank=label ...]', got {line!r}")
            if gid in out:
                raise UserError(f"{path}:{n}: genome {gid!r} listed twice")
            labels: dict[str, str] = {}
            for item in cols[1:]:
                if not item.strip():
                    continue
                rank, sep, label = item.partition("=")
                rank = rank.strip().lower()
                if not sep or not rank:
                    raise UserError(f"{path}:{n}: {item!r} is not rank=label")
                if rank in labels:
                    raise UserError(f"{path}:{n}: rank {rank!r} given twice for genome {gid!r}")
                if is_label(label):
                    labels[rank] = label.strip()
            out[gid] = labels
    if not out:
        raise UserError(f"{path}: taxonomy table has no rows")
    return out


# ----------------------------------------------------------------------------- vConTACT


def read_gene_to_genome(path: str | Path) -> dict[str, str]:
    """vConTACT's gene-to-genome CSV (``protein_id,contig_id[,keywords]`` with that header)
    -> {protein id: genome id}."""
    path = Path(path)
    _check_file(path, "gene-to-genome CSV")
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "protein_id" not in header or "contig_id" not in header:
            raise UserError(f"{path}:1: expected a header with 'protein_id' and 'contig_id', got {header!r}")
        ip, ic = header.index("protein_id"), header.index("contig_id")
        for n, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) <= max(ip, ic) or not row[ip].strip() or not row[ic].strip():
                raise UserError(f"{path}:{n}: expected protein_id and contig_id, got {row!r}")
            pid, gid = row[ip].strip(), row[ic].strip()
            if pid in out and out[pid] != gid:
                raise UserError(f"{path}:{n}: protein {pid!r} assigned to {out[pid]!r} and to {gid!r}")
            out[pid] = gid
    if not out:
        raise UserError(f"{path}: gene-to-genome CSV has no rows")
    return out


def _fasta_ids(path: Path) -> list[str]:
    (genome,) = read_protein_fasta(path, genome_rule="file")
    return [p.protein_id for p in genome.proteins]


def vcontact_genomes(protein_fasta: str | Path, gene_to_genome: str | Path) -> list[Genome]:
    """The FASTA's proteins grouped into genomes by the gene-to-genome CSV, in FASTA order
    (genome order for prodigal-style files); a protein missing from the CSV is an error."""
    protein_fasta, gene_to_genome = Path(protein_fasta), Path(gene_to_genome)
    owner = read_gene_to_genome(gene_to_genome)
    (whole,) = read_protein_fasta(protein_fasta, genome_rule="file")
    groups: dict[str, list] = {}
    for p in whole.proteins:
        if p.protein_id not in owner:
            raise UserError(f"{protein_fasta}: record {p.protein_id!r} is not in the gene-to-genome CSV {gene_to_genome}")
        groups.setdefault(owner[p.protein_id], []).append(p)
    return [Genome(gid, proteins, str(protein_fasta)) for gid, proteins in groups.items()]


def read_vcontact_taxonomy(reference_csv: str | Path, gene_to_genome: str | Path, protein_fasta: str | Path) -> Taxonomy:
    """{contig id: {rank: label}} for the genomes that own a protein of the FASTA.

    Genomes without a reference row get an empty dict (the caller counts them); reference
    rows for genomes absent from the FASTA are ignored.
    """
    reference_csv = Path(reference_csv)
    _check_file(reference_csv, "vConTACT reference CSV")
    owner = read_gene_to_genome(gene_to_genome)
    present = {owner[p] for p in _fasta_ids(Path(protein_fasta)) if p in owner}
    rows: dict[str, dict[str, str]] = {}
    with open(reference_csv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        lower = [h.lower() for h in header]
        name_col = next((i for i, h in enumerate(lower) if h in ("organism/name", "organism", "name", "genome")), None)
        if name_col is None:
            raise UserError(f"{reference_csv}:1: expected an 'Organism/Name' column, got {header!r}")
        rank_cols = [(i, h) for i, h in enumerate(lower) if i != name_col and h]
        for n, row in enumerate(reader, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise UserError(f"{reference_csv}:{n}: {len(row)} columns, the header has {len(header)}")
            name = row[name_col].strip()
            if not name:
                raise UserError(f"{reference_csv}:{n}: empty Organism/Name")
            if name in rows:
                raise UserError(f"{reference_csv}:{n}: {name!r} listed twice")
            rows[name] = {h: row[i].strip() for i, h in rank_cols if is_label(row[i])}
    if not rows:
        raise UserError(f"{reference_csv}: reference CSV has no rows")
    out: Taxonomy = {}
    for gid in sorted(present):
        labels = rows.get(gid)
        if labels is None:
            labels = rows.get(gid.replace("~", " "))
        if labels is None:
            labels = rows.get(re.sub(r"\s+", "~", gid))
        out[gid] = dict(labels) if labels is not None else {}
    return out
