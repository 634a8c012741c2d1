"""BLAST protein databases in NCBI's version-4 format (``.pin`` / ``.phr`` / ``.psq``), read without BLAST.

A database ``PREFIX`` is three files (all integers big-endian unless said otherwise):

- ``PREFIX.pin``, the index: int32 format version (4), int32 type (1 = protein), int32 length +
  title, int32 length + creation time (padded with NULs inside its length), int32 number of
  sequences N, **little-endian** uint64 total residues, int32 longest sequence, then N + 1 int32
  header offsets into ``.phr`` and N + 1 int32 sequence offsets into ``.psq``.
- ``PREFIX.psq``, the sequences in NCBIstdaa (one byte per residue, :data:`NCBISTDAA`): a NUL byte,
  then each sequence followed by a NUL; sequence i is ``psq[off[i] : off[i + 1] - 1]``.
- ``PREFIX.phr``, the headers: record i is ``phr[hoff[i] : hoff[i + 1]]``, an ASN.1 BER encoded
  ``Blast-def-line-set`` (NCBI ``blastdb.asn``): a SEQUENCE of def lines, each a SEQUENCE of
  context-tagged fields ``[0] title VisibleString``, ``[1] seqid SEQUENCE OF Seq-id``,
  ``[2] taxid INTEGER`` (and [3]-[5], skipped). Definite and indefinite lengths both occur.

Seq-ids are shown as FASTA ids (``sp|P69905.2|HBA_HUMAN``, ``gi|123``, ``lcl|x``, ``gnl|DB|TAG``,
``pdb|1ABC|A``). ``makeblastdb`` without ``-parse_seqids`` gives every record only the ordinal id
``gnl|BL_ORD_ID|i``; its FASTA id is then the first word of the title (:func:`record_id`).

Files are memory-mapped; nothing is loaded whole. Version-5 databases (which add ``.pdb``/``.pot``
LMDB files), nucleotide databases and malformed files are a :class:`~lcplm.errors.UserError` naming
the file and, for a bad record, its ordinal.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lcplm.errors import UserError

# NCBIstdaa: byte value -> residue letter (NCBI's seqcode table 11)
NCBISTDAA = "-ABCDEFGHIKLMNPQRSTVWXYZU*OJ"
_DECODE = bytes(ord(c) for c in NCBISTDAA) + b"\x00" * (256 - len(NCBISTDAA))

# Seq-id CHOICE alternatives (context tag number -> FASTA database code)
_TEXTSEQ_IDS = {4: "gb", 5: "emb", 6: "pir", 7: "sp", 9: "ref", 12: "dbj", 13: "prf", 15: "tpg", 16: "tpe",
                17: "tpd", 18: "gpp", 19: "nat"}
_OTHER_IDS = {0: "lcl", 1: "bbs", 2: "bbm", 3: "gim", 8: "pat", 10: "gnl", 11: "gi", 14: "pdb"}
ORDINAL_DB = "BL_ORD_ID"  # the general-id database makeblastdb uses when ids are not parsed

_UNIVERSAL_SEQUENCE, _UNIVERSAL_INTEGER = 0x30, 0x02


@dataclass(frozen=True)
class BlastDbInfo:
    """The ``.pin`` summary of a database."""

    version: int
    title: str
    timestamp: str
    n_sequences: int
    total_residues: int
    max_length: int


class DefLine(NamedTuple):
    """One ``Blast-def-line`` of a record (a record has one per identical sequence merged into it)."""

    title: str
    seq_ids: tuple[str, ...]  # FASTA-style ids, in file order
    taxid: int | None


class BlastRecord(NamedTuple):
    ordinal: int
    deflines: tuple[DefLine, ...]
    sequence: str  # residue letters (NCBIstdaa decoded)


def record_id(defline: DefLine) -> tuple[str, str]:
    """``(id, description)`` as ``blastdbcmd`` would print the FASTA header: the first seq-id that is
    not an ordinal (``gnl|BL_ORD_ID|i``) and the whole title; without one, the title's first word
    and the rest of the title."""
    for sid in defline.seq_ids:
        if not sid.startswith(f"gnl|{ORDINAL_DB}|"):
            return sid, defline.title
    words = defline.title.split(None, 1)
    if not words:
        return "", ""
    return words[0], words[1] if len(words) > 1 else ""


# ---------------------------------------------------------------------------------------- BER


class _BerError(ValueError):
    pass


def _element(buf: bytes, pos: int, end: int) -> tuple[int, object, int]:
    """One BER element at ``pos``: ``(tag byte, value, next position)``. ``value`` is bytes for a
    primitive element, a list of ``(tag, value)`` children for a constructed one."""
    if pos + 2 > end:
        raise _BerError(f"truncated element at byte {pos}")
    tag = buf[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number: base-128 digits follow; no BLAST type uses them
        while pos < end and buf[pos] & 0x80:
            pos += 1
        pos += 1
        tag = 0x1F | (tag & 0xE0)
    if pos >= end:
        raise _BerError(f"truncated length at byte {pos}")
    length = buf[pos]
    pos += 1
    constructed = bool(tag & 0x20)
    if length == 0x80:  # indefinite length: children until the end-of-contents octets 00 00
        if not constructed:
            raise _BerError(f"indefinite length on a primitive element at byte {pos - 2}")
        children = []
        while True:
            if pos + 2 > end:
                raise _BerError("missing end-of-contents octets")
            if buf[pos] == 0 and buf[pos + 1] == 0:
                return tag, children, pos + 2
            ctag, cval, pos = _element(buf, pos, end)
            children.append((ctag, cval))
    if length & 0x80:
        n = length & 0x7F
        if n > 4 or pos + n > end:
            raise _BerError(f"bad long-form length at byte {pos - 1}")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    stop = pos + length
    if stop > end:
        raise _BerError(f"element at byte {pos} runs past the end ({length} bytes announced)")
    if not constructed:
        return tag, buf[pos:stop], stop
    children = []
    while pos < stop:
        ctag, cval, pos = _element(buf, pos, stop)
        children.append((ctag, cval))
    return tag, children, stop


def _integer(value: object) -> int:
    if not isinstance(value, bytes) or not value:
        raise _BerError("expected a primitive INTEGER")
    return int.from_bytes(value, "big", signed=True)


def _text(value: object) -> str:
    if not isinstance(value, bytes):
        raise _BerError("expected a primitive string")
    return value.decode("utf-8", errors="replace")


def _explicit(value: object) -> tuple[int, object]:
    """The single element inside an explicit context tag."""
    if not isinstance(value, list) or len(value) != 1:
        raise _BerError("expected one element inside a context tag")
    return value[0]


def _fields(value: object) -> dict[int, object]:
    """Context-tagged fields of a SEQUENCE: tag number -> the tagged element's content."""
    if not isinstance(value, list):
        raise _BerError("expected a constructed SEQUENCE")
    return {tag & 0x1F: inner for tag, inner in value if tag & 0xC0 == 0x80}


def _object_id(value: object) -> str:
    tag, inner = _explicit(value)
    t, v = _explicit(inner) if isinstance(inner, list) else (tag, inner)
    return str(_integer(v)) if tag & 0x1F == 0 else _text(v)


def _leaves(tag: int, value: object) -> list[str]:
    """Every INTEGER and string inside an element, in order (for Seq-ids without a FASTA form here)."""
    if isinstance(value, list):
        return [s for t, v in value for s in _leaves(t, v)]
    return [str(_integer(value))] if tag == _UNIVERSAL_INTEGER else [_text(value)]


def _seq_id(tag: int, value: object) -> str:
    choice = tag & 0x1F
    if choice in _TEXTSEQ_IDS:  # Textseq-id ::= SEQUENCE {name [0], accession [1], release [2], version [3]}
        _, seq = _explicit(value)
        f = _fields(seq)
        name = _text(_explicit(f[0])[1]) if 0 in f else ""
        acc = _text(_explicit(f[1])[1]) if 1 in f else ""
        if 3 in f:
            acc = f"{acc}.{_integer(_explicit(f[3])[1])}"
        return f"{_TEXTSEQ_IDS[choice]}|{acc}|{name}" if name else f"{_TEXTSEQ_IDS[choice]}|{acc}"
    if choice == 0:  # local Object-id
        return f"lcl|{_object_id(value)}"
    if choice in (1, 2, 11):  # gibbsq, gibbmt, gi: INTEGER
        return f"{_OTHER_IDS[choice]}|{_integer(_explicit(value)[1])}"
    if choice == 10:  # general Dbtag ::= SEQUENCE {db [0] VisibleString, tag [1] Object-id}
        _, seq = _explicit(value)
        f = _fields(seq)
        return f"gnl|{_text(_explicit(f[0])[1])}|{_object_id(f[1])}"
    if choice == 14:  # PDB-seq-id ::= SEQUENCE {mol [0], chain [1] INTEGER, rel [2], chain-id [3]}
        _, seq = _explicit(value)
        f = _fields(seq)
        chain = _text(_explicit(f[3])[1]) if 3 in f else chr(_integer(_explicit(f[1])[1])) if 1 in f else ""
        return f"pdb|{_text(_explicit(f[0])[1])}|{chain}"
    # giim, patent and ids added to Seq-id later: their strings and numbers in order
    return "|".join([_OTHER_IDS.get(choice, f"seqid{choice}")] + _leaves(tag, value))


def parse_deflines(raw: bytes) -> tuple[DefLine, ...]:
    """Decode one record's ``Blast-def-line-set`` (raises ``ValueError`` on malformed BER)."""
    tag, value, end = _element(raw, 0, len(raw))
    if tag != _UNIVERSAL_SEQUENCE or not isinstance(value, list):
        raise _BerError(f"expected a Blast-def-line-set SEQUENCE, found tag 0x{tag:02x}")
    out = []
    for dtag, dval in value:
        if dtag != _UNIVERSAL_SEQUENCE:
            raise _BerError(f"expected a Blast-def-line SEQUENCE, found tag 0x{dtag:02x}")
        f = _fields(dval)
        title = _text(_explicit(f[0])[1]) if 0 in f else ""
        ids: list[str] = []
        if 1 in f:
            _, seqids = _explicit(f[1])
            if not isinstance(seqids, list):
                raise _BerError("seqid is not a SEQUENCE OF Seq-id")
            ids = [_seq_id(t, v) for t, v in seqids]
        taxid = _integer(_explicit(f[2])[1]) if 2 in f else None
        out.append(DefLine(title, tuple(ids), taxid))
    if not out:
        raise _BerError("empty Blast-def-line-set")
    return tuple(out)


# ----------------------------------------------------------------------------------- database


def _prefix(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".pin", ".phr", ".psq") else p


class BlastProteinDb:
    """Random access to a version-4 BLAST protein database (see the module docstring).

    ``len(db)``, ``db.info`` (:class:`BlastDbInfo`), ``db.lengths`` (int64 ``[N]``),
    ``db.raw_sequence(i)`` (NCBIstdaa bytes), ``db.sequence(i)`` (letters), ``db.deflines(i)``,
    ``db[i]`` / iteration -> :class:`BlastRecord`.
    """

    def __init__(self, path: str | Path):
        self.prefix = _prefix(path)
        self.pin, self.phr, self.psq = (self.prefix.with_name(self.prefix.name + ext) for ext in (".pin", ".phr", ".psq"))
        for f in (self.pin, self.phr, self.psq):
            if not f.is_file():
                raise UserError(f"{f}: BLAST database file not found (a protein database is PREFIX.pin/.phr/.psq)")
        self.info, self._hoff, self._soff = self._read_index()
        self._phr = self._map(self.phr)
        self._psq = self._map(self.psq)
        if int(self._hoff[-1]) != len(self._phr):
            raise UserError(f"{self.phr}: {len(self._phr)} bytes, but {self.pin} indexes {int(self._hoff[-1])} (truncated or mismatched)")
        if int(self._soff[-1]) != len(self._psq):
            raise UserError(f"{self.psq}: {len(self._psq)} bytes, but {self.pin} indexes {int(self._soff[-1])} (truncated or mismatched)")
        n = self.info.n_sequences
        if n and (self._psq[self._soff[1:] - 1] != 0).any():
            bad = int(np.flatnonzero(self._psq[self._soff[1:] - 1] != 0)[0])
            raise UserError(f"{self.psq}: sequence {bad} is not NUL-terminated (not a BLAST v4 .psq?)")
        self.lengths = (self._soff[1:] - self._soff[:-1] - 1).astype(np.int64)
        if int(self.lengths.sum()) != self.info.total_residues:
            raise UserError(
                f"{self.pin}: announces {self.info.total_residues} residues, the offsets give {int(self.lengths.sum())}"
            )

    @staticmethod
    def _map(path: Path) -> np.ndarray:
        if path.stat().st_size == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")

    def _read_index(self) -> tuple[BlastDbInfo, np.ndarray, np.ndarray]:
        raw = self.pin.read_bytes()
        where = str(self.pin)

        def need(pos: int, k: int, what: str) -> None:
            if pos + k > len(raw):
                raise UserError(f"{where}: truncated index ({len(raw)} bytes) while reading {what}")

        need(0, 8, "the version")
        version, kind = struct.unpack_from(">ii", raw, 0)
        if version == 5:
            raise UserError(f"{where}: a BLAST version-5 database; only version 4 is read (makeblastdb -blastdb_version 4)")
        if version != 4:
            raise UserError(f"{where}: not a BLAST version-4 index (format version {version})")
        if kind != 1:
            raise UserError(f"{where}: a nucleotide database (type {kind}); only protein databases are read")
        pos = 8
        strings = []
        for what in ("the title", "the timestamp"):
            need(pos, 4, what)
            (k,) = struct.unpack_from(">i", raw, pos)
            need(pos + 4, max(k, 0), what)
            if k < 0:
                raise UserError(f"{where}: negative length of {what}")
            strings.append(raw[pos + 4 : pos + 4 + k].rstrip(b"\x00").decode("utf-8", errors="replace"))
            pos += 4 + k
        need(pos, 16, "the counts")
        (n,) = struct.unpack_from(">i", raw, pos)
        (total,) = struct.unpack_from("<Q", raw, pos + 4)
        (longest,) = struct.unpack_from(">i", raw, pos + 12)
        pos += 16
        if n < 0:
            raise UserError(f"{where}: negative sequence count {n}")
        need(pos, 8 * (n + 1), f"the offsets of {n} sequences")
        hoff = np.frombuffer(raw, ">i4", n + 1, pos).astype(np.int64)
        soff = np.frombuffer(raw, ">i4", n + 1, pos + 4 * (n + 1)).astype(np.int64)
        if pos + 8 * (n + 1) != len(raw):
            raise UserError(f"{where}: {len(raw) - pos - 8 * (n + 1)} unexpected bytes after the offsets")
        for name, off in (("header", hoff), ("sequence", soff)):
            if (np.diff(off) < (1 if name == "sequence" else 0)).any() or off[0] < 0:
                bad = int(np.flatnonzero(np.diff(off) < 1)[0]) if (np.diff(off) < 1).any() else 0
                raise UserError(f"{where}: {name} offsets do not increase (record {bad})")
        info = BlastDbInfo(version, strings[0], strings[1], n, int(total), int(longest))
        return info, hoff, soff

    def __len__(self) -> int:
        return self.info.n_sequences

    def raw_sequence(self, i: int) -> bytes:
        """Sequence ``i`` as NCBIstdaa bytes."""
        return self._psq[self._soff[i] : self._soff[i + 1] - 1].tobytes()

    def sequence(self, i: int) -> str:
        raw = self.raw_sequence(i)
        if raw and max(raw) >= len(NCBISTDAA):
            raise UserError(f"{self.psq}: sequence {i} holds byte {max(raw)}, not an NCBIstdaa residue code")
        return raw.translate(_DECODE).decode("ascii")

    def deflines(self, i: int) -> tuple[DefLine, ...]:
        raw = self._phr[self._hoff[i] : self._hoff[i + 1]].tobytes()
        try:
            return parse_deflines(raw)
        except (ValueError, KeyError, IndexError) as e:
            raise UserError(f"{self.phr}: header of sequence {i} is not a valid Blast-def-line-set ({e})") from None

    def __getitem__(self, i: int) -> BlastRecord:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range ({len(self)} in {self.prefix})")
        return BlastRecord(i, self.deflines(i), self.sequence(i))

    def __iter__(self) -> Iterator[BlastRecord]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"BlastProteinDb({str(self.prefix)!r}, {len(self)} sequences)"
