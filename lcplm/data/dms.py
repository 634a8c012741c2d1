"""Deep mutational scans in ProteinGym's format: the reader behind ``lcplm score-variants``.

A DMS table is a CSV with a header and one row per variant:

* ``mutant``: substitutions ``A24C`` (wild-type letter, position, mutant letter), a
  multi-mutant joined with ``:`` (``A24C:D30N``); letters are the 20 standard amino acids;
* ``mutated_sequence``: the full mutated sequence (optional when the wild type is given);
* ``DMS_score``: the measurement, higher = fitter (ProteinGym orients every assay that way);
* ``DMS_score_bin`` (optional): 1 fit / 0 not fit (ProteinGym's per-assay cutoff).

Other columns are ignored. Positions are numbered so that ``position - offset`` is the
0-based index in the wild type: ``offset`` is the table's number for the wild type's first
residue (ESM's ``--offset-idx``, ProteinGym's ``start_idx``; 1 for the usual 1-based tables).

The wild type comes from a FASTA (one record) or, without one, from the data: the first row's
``mutated_sequence`` with its substitutions reverted. Either way every row is checked: its
wild-type letters must match the wild type, and its ``mutated_sequence`` (when the column is
there) must equal the wild type with its substitutions applied. Any disagreement, an unknown
amino acid, a position outside the wild type, a malformed mutant, a missing column or a score
that is not a number is a :class:`~lcplm.errors.UserError` naming the file and line.
"""

from __future__ import annotations

import csv
from collections import Counter
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lcplm.data.inputs import DECOMPRESSION_ERRORS, open_input
from lcplm.errors import UserError

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
REQUIRED_COLUMNS = ("mutant", "DMS_score")
_SUBSTITUTION = re.compile(r"^([A-Za-z])(-?\d+)([A-Za-z])$")


@dataclass(frozen=True)
class Substitution:
    """One substitution: ``wt`` at 0-based ``index`` of the wild type becomes ``mt``."""

    wt: str
    index: int
    mt: str


@dataclass
class DMSAssay:
    """One assay: the wild type, and per row its mutant, substitutions and measurements."""

    name: str  # the file's stem (ProteinGym's DMS_id)
    path: Path
    wild_type: str
    offset: int
    mutants: list[str]  # as written in the table
    substitutions: list[tuple[Substitution, ...]]
    scores: np.ndarray  # (N,) float64 DMS_score
    score_bins: Optional[np.ndarray]  # (N,) int64 in {0, 1}, or None without DMS_score_bin

    def __len__(self) -> int:
        return len(self.mutants)

    @property
    def sites(self) -> list[int]:
        """Sorted 0-based wild-type indices mutated in any row."""
        return sorted({s.index for subs in self.substitutions for s in subs})


def parse_mutant(text: str, where: str) -> list[tuple[str, int, str]]:
    """``'A24C:D30N'`` -> ``[('A', 24, 'C'), ('D', 30, 'N')]`` (positions as written)."""
    parts = text.strip().split(":")
    out = []
    for part in parts:
        m = _SUBSTITUTION.match(part.strip())
        if m is None:
            raise UserError(f"{where}: malformed mutant {text!r} (expected e.g. A24C, multi-mutants joined by ':')")
        wt, pos, mt = m.group(1), int(m.group(2)), m.group(3)
        for letter in (wt, mt):
            if letter not in STANDARD_AMINO_ACIDS:
                raise UserError(
                    f"{where}: unknown amino acid {letter!r} in mutant {text!r} "
                    f"(expected one of the 20 standard letters {STANDARD_AMINO_ACIDS})"
                )
        out.append((wt, pos, mt))
    return out


def locate(parsed: Sequence[tuple[str, int, str]], length: int, offset: int, where: str) -> tuple[Substitution, ...]:
    """Positions -> 0-based indices, checked against a wild type of ``length`` residues."""
    subs, seen = [], set()
    for wt, pos, mt in parsed:
        i = pos - offset
        if i < 0:
            raise UserError(f"{where}: position {pos} is before the wild type's first residue "
                            f"(numbered {offset}; see --offset)")
        if i >= length:
            raise UserError(f"{where}: position {pos} is past the end of the {length}-residue wild type"
                            + (f" (offset {offset})" if offset != 1 else ""))
        if i in seen:
            raise UserError(f"{where}: position {pos} is substituted twice")
        seen.add(i)
        subs.append(Substitution(wt, i, mt))
    return tuple(subs)


def apply_substitutions(wild_type: str, subs: Sequence[Substitution]) -> str:
    seq = list(wild_type)
    for s in subs:
        seq[s.index] = s.mt
    return "".join(seq)


def read_wild_type_fasta(path: str | Path) -> str:
    """The sequence of a one-record FASTA (upper-cased, whitespace and a terminal '*' removed)."""
    from lcplm.data.fasta import iter_fasta

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: wild-type FASTA not found")
    records = list(iter_fasta(path))
    if not records:
        raise UserError(f"{path}: no FASTA record (expected the wild-type sequence)")
    if len(records) > 1:
        raise UserError(f"{path}: {len(records)} records; the wild-type FASTA must hold exactly one")
    seq = records[0].sequence.upper().removesuffix("*")
    if not seq:
        raise UserError(f"{path}: record {records[0].id!r} has an empty sequence")
    return seq


def _number(text: str, column: str, where: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {column} {text!r} is not a number") from None
    if not np.isfinite(v):
        raise UserError(f"{where}: {column} is {text!r}; every row needs a finite value")
    return v


def _first_difference(a: str, b: str) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} and {len(b)}"
    i = next(k for k in range(len(a)) if a[k] != b[k])
    return f"first difference at residue {i + 1}: {a[i]} vs {b[i]}"


def _recover_wild_type(raw, parsed, seq_col: int, offset: int, where) -> str:
    """The first row's mutated_sequence with each residue it mutates decided by a vote: the first
    row's own wild-type letter, and the letter at that position in every other row's
    mutated_sequence that leaves it alone. The majority wins; on a tie, the candidate under which
    fewer rows are inconsistent wins (then the first row's letter), so one inconsistent row, the
    first or a later one, is the row the checks report, not its neighbours."""
    line, row = raw[0]
    first = row[seq_col].strip().upper()
    if not first:
        raise UserError(f"{where(line, row)}: empty mutated_sequence")
    seq, alt = list(first), list(first)
    others = [(other[seq_col].strip().upper(), {q - offset for _, q, _ in p}) for (_, other), p in zip(raw[1:], parsed[1:])]
    for wt, pos, _ in parsed[0]:
        i = pos - offset
        if not 0 <= i < len(seq):
            locate(parsed[0], len(seq), offset, where(line, row))  # raises, naming the position
        votes = Counter([wt.upper()])
        votes.update(s[i] for s, touched in others if len(s) == len(first) and i not in touched)
        best = max(votes.values())
        seq[i] = alt[i] = wt.upper() if votes[wt.upper()] == best else votes.most_common(1)[0][0]
        tied = sorted(a for a, n in votes.items() if n == best and a != seq[i])
        if tied:
            alt[i] = tied[0]
    if alt != seq and _inconsistent_rows("".join(alt), raw, parsed, seq_col, offset) < _inconsistent_rows(
        "".join(seq), raw, parsed, seq_col, offset
    ):
        return "".join(alt)
    return "".join(seq)


def _inconsistent_rows(wild_type: str, raw, parsed, seq_col: int, offset: int) -> int:
    """How many rows disagree with ``wild_type``: a position outside it, a wrong wild-type letter,
    or a mutated_sequence that is not it with the row's substitutions applied."""
    bad = 0
    for (_, row), p in zip(raw, parsed):
        s = list(wild_type)
        ok = True
        for wt, pos, mt in p:
            i = pos - offset
            if not 0 <= i < len(s) or wild_type[i] != wt.upper():
                ok = False
                break
            s[i] = mt.upper()
        bad += not (ok and "".join(s) == row[seq_col].strip().upper())
    return bad


def read_dms(path: str | Path, wild_type: Optional[str] = None, offset: int = 1) -> DMSAssay:
    """Read and check a ProteinGym substitution table (see the module docstring).

    ``wild_type``: the sequence the positions refer to; None recovers it from
    ``mutated_sequence``. ``offset``: the table's number for the wild type's first residue.
    """
    path = Path(path)
    # a file, a pipe, a FIFO (bounded wait) or '-': read once, gzip allowed (lcplm.data.inputs)
    inp = open_input(path, "DMS table")
    with inp, io.TextIOWrapper(inp.stream, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise UserError(f"{path}: empty file (expected a CSV header with {', '.join(REQUIRED_COLUMNS)})")
            header = [h.strip() for h in header]
            for col in REQUIRED_COLUMNS:
                if col not in header:
                    raise UserError(f"{path}: no {col!r} column (columns: {', '.join(header)})")
            col = {name: header.index(name) for name in header}
            raw = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{path}: line {reader.line_num} has {len(row)} fields, the header has {len(header)}")
                raw.append((reader.line_num, row))
        except csv.Error as e:
            raise UserError(f"{path}: malformed CSV at line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
        except DECOMPRESSION_ERRORS as e:
            raise UserError(f"{path}: truncated or corrupt compressed data ({type(e).__name__})") from None
    if not raw:
        raise UserError(f"{path}: no variants (a header and no rows)")
    has_seq, has_bin = "mutated_sequence" in col, "DMS_score_bin" in col

    def where(line: int, row: list[str]) -> str:
        return f"{path}: line {line} (mutant {row[col['mutant']].strip()!r})"

    parsed = [parse_mutant(row[col["mutant"]], where(line, row)) for line, row in raw]
    if wild_type is None:
        if not has_seq:
            raise UserError(f"{path}: no 'mutated_sequence' column to recover the wild type from; "
                            "give the wild type as a FASTA (--wild-type)")
        wild_type = _recover_wild_type(raw, parsed, col["mutated_sequence"], offset, where)
    wild_type = wild_type.upper()
    mutants, substitutions, scores, bins = [], [], [], []
    for (line, row), p in zip(raw, parsed):
        w = where(line, row)
        text = row[col["mutant"]].strip()
        subs = locate(p, len(wild_type), offset, w)
        for s in subs:
            if wild_type[s.index] != s.wt:
                raise UserError(f"{w}: wild-type letter {s.wt} at position {s.index + offset}, "
                                f"but the wild type has {wild_type[s.index]} there")
        if has_seq:
            given = row[col["mutated_sequence"]].strip().upper()
            expected = apply_substitutions(wild_type, subs)
            if given != expected:
                raise UserError(f"{w}: mutated_sequence is not the wild type with {text} applied "
                                f"({_first_difference(given, expected)})")
        mutants.append(text)
        substitutions.append(subs)
        scores.append(_number(row[col["DMS_score"]].strip(), "DMS_score", w))
        if has_bin:
            b = _number(row[col["DMS_score_bin"]].strip(), "DMS_score_bin", w)
            if b not in (0.0, 1.0):
                raise UserError(f"{w}: DMS_score_bin is {row[col['DMS_score_bin']]!r}; expected 0 or 1")
            bins.append(int(b))
    return DMSAssay(
        name=path.stem,
        path=path,
        wild_type=wild_type,
        offset=offset,
        mutants=mutants,
        substitutions=substitutions,
        scores=np.asarray(scores, np.float64),
        score_bins=np.asarray(bins, np.int64) if has_bin else None,
    )


def find_assays(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is a CSV or a folder of them (``*.csv``, sorted); duplicates kept once, in order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.glob("*.csv") if x.is_file())
            if not found:
                raise UserError(f"{p}: folder holds no .csv DMS tables")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"{p}: DMS table or folder not found")
    unique = list(dict.fromkeys(x.resolve() for x in out))
    names = [x.stem for x in unique]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two DMS tables are named {dup[0]!r}: results are written per assay name")
    return unique
