"""FASTA files: the one FASTA parser, a streaming reader and a random-access index.

``iter_fasta(path)`` streams records from plain, gzip or BGZF FASTA given as a path, a pipe,
a FIFO or ``-`` (stdin; see :mod:`lcplm.data.inputs`): multi-line records, Windows line endings
and blank lines are fine. Every sequence line is checked against the tokenizer's definition of a
residue (:mod:`lcplm.data.tokenizer`): a character that is not a residue is an error naming the
file, record and line; digits, 'J' and '*' inside a sequence become <unk> and are counted
(:class:`FastaCounts`). So an index length always equals the number of tokens the tokenizer emits.

``FastaIndex(path)`` makes one streaming pass that stores each record's byte offset, residue
count and id in a cache folder (never next to the input, which may be read-only), reuses it while
the input's size and mtime are unchanged, and then reads any record by position without holding
sequences in memory:

- plain files: byte offsets;
- BGZF files (``bgzip``; blocked gzip as written by samtools/htslib): virtual offsets
  (compressed block start << 16 | offset inside the block), read through ``Bio.bgzf``;
- ordinary gzip (no random access possible): decompressed once into the cache folder;
- a pipe, FIFO or stdin: copied once into the cache (:func:`~lcplm.data.inputs.spool_input`).

Bad input is a :class:`~lcplm.errors.UserError` naming the file and the record or line.
"""

from __future__ import annotations

import array
import hashlib
import json
import operator
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from lcplm.data import tokenizer
from lcplm.data.cache import cache_root
from lcplm.data.inputs import DECOMPRESSION_ERRORS, input_name, open_input, spool_input
from lcplm.errors import UserError

INDEX_VERSION = 2
_WHITESPACE = tokenizer.SEQUENCE_SPACE
_FLUSH_EVERY = 1 << 20  # records buffered in memory while an index is written


class FastaRecord(NamedTuple):
    """One FASTA record. ``sequence`` has whitespace removed; case and a terminal ``*`` are kept."""

    id: str  # first word of the header
    description: str  # the rest of the header ('' when there is none)
    sequence: str


@dataclass
class FastaCounts:
    """What a pass over a FASTA file saw: records, tokens, and <unk> substitutions."""

    records: int = 0
    residues: int = 0  # tokens the tokenizer emits (a terminal '*' excluded)
    unk: int = 0  # characters read as <unk>: digits, 'J', '*' inside a sequence
    unk_records: int = 0  # records with at least one of them
    unk_example: str = ""  # the first such record's id

    def add(self, other: "FastaCounts") -> None:
        self.records += other.records
        self.residues += other.residues
        self.unk += other.unk
        self.unk_records += other.unk_records
        self.unk_example = self.unk_example or other.unk_example

    def unk_note(self) -> str:
        """'' or '; N characters read as <unk> (...) in M records, e.g. ID'."""
        if not self.unk:
            return ""
        return (
            f"; {self.unk:,} characters read as <unk> (digits, 'J', '*' inside a sequence) in "
            f"{self.unk_records:,} records, e.g. {self.unk_example!r}"
        )


class _Parsed(NamedTuple):
    line_no: int  # 1-based line of the header
    offset: int  # byte offset of the header in the (decompressed) stream
    id: str
    description: str
    sequence: bytes | None  # None when the caller asked for lengths only
    length: int  # residues after dropping a terminal '*': what the tokenizer will emit
    unk: int  # characters that become <unk>


def _header(name: str, line: bytes, line_no: int) -> tuple[str, str]:
    text = line[1:].decode("utf-8", errors="replace").strip()
    words = text.split(None, 1)
    if not words:
        raise UserError(f"{name}: line {line_no}: header line has no id")
    return words[0], (words[1] if len(words) > 1 else "")


def parse_fasta_stream(fh: BinaryIO, name: str, keep_sequence: bool = True) -> Iterator[_Parsed]:
    """Records of a FASTA byte stream (the one FASTA parser): header offsets, residue counts and
    <unk> counts, every sequence byte checked by the tokenizer's rules. ``name`` is for messages."""
    header: bytes | None = None
    rid = ""
    h_line = h_off = 0
    parts: list[bytes] = []
    n = unk = 0
    letter = False
    last = b""
    offset = 0
    plain = tokenizer.PLAIN_RESIDUE_BYTES

    def finish() -> _Parsed:
        nonlocal unk
        length, u = n, unk
        if last.endswith(b"*"):
            length, u = n - 1, unk - 1
        if length <= 0:
            raise UserError(f"{name}: record {rid!r} (line {h_line}) has no sequence")
        if not letter:
            raise UserError(f"{name}: record {rid!r} (line {h_line}) has no amino-acid letter (only digits, gaps or '*')")
        desc = _header(name, header, h_line)[1]
        return _Parsed(h_line, h_off, rid, desc, b"".join(parts) if keep_sequence else None, length, u)

    try:
        for line_no, line in enumerate(fh, 1):
            if line[:1] == b">":
                if header is not None:
                    yield finish()
                header, h_line, h_off = line, line_no, offset
                rid = _header(name, line, line_no)[0]
                parts, n, unk, letter, last = [], 0, 0, False, b""
            else:
                s = line.rstrip(b"\r\n")
                odd = bool(s.translate(None, plain))  # whitespace inside, or a byte that is not a plain residue
                if odd:
                    s = s.translate(None, _WHITESPACE)
                if s:
                    if header is None:
                        raise UserError(
                            f"{name}: line {line_no}: sequence data before the first '>' header (not a FASTA file?)"
                        )
                    if odd:
                        bad = tokenizer.first_invalid_byte(s)
                        if bad >= 0:
                            raise UserError(
                                f"{name}: record {rid!r}, line {line_no}: {tokenizer.describe_byte(s[bad])} is not a "
                                "residue (letters, '.', '-', '*' and digits are allowed)"
                            )
                        unk += tokenizer.count_unk(s)
                    n += len(s)
                    last = s
                    letter = letter or tokenizer.has_letter(s)
                    if keep_sequence:
                        parts.append(s)
            offset += len(line)
    except DECOMPRESSION_ERRORS as e:
        raise UserError(f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
    if header is None:
        raise UserError(f"{name}: empty file (no FASTA records)")
    yield finish()


def iter_fasta(path: str | os.PathLike, counts: FastaCounts | None = None) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA file, pipe, FIFO or ``-`` (stdin), in file order.

    ``counts``, when given, is filled as records are read (records, residues, <unk> characters).
    """
    with open_input(path, "FASTA") as inp:
        for p in parse_fasta_stream(inp.stream, inp.name, keep_sequence=True):
            if counts is not None:
                _count(counts, p)
            yield FastaRecord(p.id, p.description, p.sequence.decode("latin-1"))


def _count(counts: FastaCounts, p: _Parsed) -> None:
    counts.records += 1
    counts.residues += p.length
    if p.unk:
        counts.unk += p.unk
        counts.unk_records += 1
        counts.unk_example = counts.unk_example or p.id


class _IdList(Sequence):
    """Record ids backed by a memory-mapped blob (``ids.bin``) and its offsets."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self._blob, self._offsets = blob, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range ({len(self)} records)")
        return bytes(self._blob[self._offsets[i] : self._offsets[i + 1]]).decode("utf-8")


def _hash_bytes(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


def id_hash(record_id: str) -> int:
    """A stable 64-bit hash of a record id (blake2b; identical across runs, processes, machines)."""
    return _hash_bytes(record_id.encode("utf-8"))


def _index_dir(path: Path, cache_dir: str | os.PathLike | None) -> Path:
    key = hashlib.blake2b(str(path.resolve()).encode("utf-8"), digest_size=8).hexdigest()
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in path.name)[:80]
    return cache_root(cache_dir) / "fasta_index" / f"{key}-{safe}"


class FastaIndex(Sequence):
    """Random access to the records of a FASTA file by position, without loading sequences.

    ``len(index)``, ``index[i] -> FastaRecord``, ``index.ids`` (sequence of str),
    ``index.lengths`` (int64 ``[n]``: residues per record as the tokenizer will count them, a
    terminal ``*`` excluded), ``index.id_hashes`` (uint64 ``[n]``, :func:`id_hash` of each id).
    ``index.counts`` (:class:`FastaCounts`) totals records, residues and <unk> characters.
    Arrays are memory-mapped from ``<cache>/fasta_index/<key>/``; the index is rebuilt when
    the input's size or mtime changes. A pipe, FIFO or ``-`` is first copied into the cache
    (``index.path`` is then that copy; ``index.name`` names the input in messages). Safe to use
    from DataLoader workers (each process opens its own file handle; pickling carries only paths).
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.name = input_name(path)
        self.path = spool_input(path, cache_dir, "FASTA")
        with open_input(self.path, "FASTA", decompress=False) as inp:
            kind = inp.kind
        self.dir = _index_dir(self.path, cache_dir)
        st = self.path.stat()
        want = {
            "version": INDEX_VERSION,
            "source": str(self.path.resolve()),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "kind": kind,
        }
        meta = self._read_meta(self.dir)
        if meta is None or any(meta.get(k) != v for k, v in want.items()):
            self._build(want)
            meta = self._read_meta(self.dir)
            if meta is None:
                raise UserError(f"{self.name}: could not write its index to {self.dir}")
        self._meta = meta
        self._open_arrays()

    # ---- building -------------------------------------------------------------------------

    @staticmethod
    def _read_meta(d: Path) -> dict | None:
        try:
            return json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def _build(self, meta: dict) -> None:
        root = self.dir.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        except OSError as e:
            raise UserError(f"{self.name}: cannot create the index folder under {root} ({e.strerror})") from None
        try:
            kind = meta["kind"]
            if kind == "gzip":
                data = tmp / "data.fasta"
                print(
                    f"lcplm: {self.name} is gzip without BGZF blocks; decompressing it once into "
                    f"{self.dir / 'data.fasta'} for random access (compress with `bgzip` to avoid the copy)",
                    file=sys.stderr,
                )
                with open_input(self.path, "FASTA") as src, open(data, "wb") as dst:
                    try:
                        shutil.copyfileobj(src.stream, dst, 1 << 22)
                    except DECOMPRESSION_ERRORS as e:
                        raise UserError(f"{self.name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
                counts = self._write_arrays(tmp, data, None)
            else:
                counts = self._write_arrays(tmp, self.path, self._bgzf_blocks() if kind == "bgzf" else None)
            (tmp / "meta.json").write_text(json.dumps({**meta, "n": counts.records, "counts": counts.__dict__}))
            self._install(tmp, meta)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _install(self, tmp: Path, want: dict) -> None:
        """Move a finished build into place; a concurrent builder (another rank) may have won."""
        meta = self._read_meta(self.dir)
        if meta is not None and all(meta.get(k) == v for k, v in want.items()):
            return  # an identical index appeared while this one was built: keep it, drop ours
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rename(tmp, self.dir)
        except OSError:
            if self._read_meta(self.dir) is None:
                raise

    def _bgzf_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Compressed start and decompressed start of every non-empty BGZF block."""
        from Bio import bgzf

        starts, data_starts = array.array("q"), array.array("q")
        try:
            with open(self.path, "rb") as fh:
                for start, _raw_len, data_start, data_len in bgzf.BgzfBlocks(fh):
                    if data_len:
                        starts.append(start)
                        data_starts.append(data_start)
        except (ValueError,) + DECOMPRESSION_ERRORS as e:
            raise UserError(f"{self.name}: corrupt or truncated BGZF file ({e or type(e).__name__})") from None
        return np.frombuffer(starts, np.int64), np.frombuffer(data_starts, np.int64)

    def _write_arrays(self, out: Path, data: Path, blocks) -> FastaCounts:
        bufs = {name: array.array("q") for name in ("offsets", "lengths", "id_offsets")}
        hashes = array.array("Q")
        files = {name: open(out / f"{name}.bin", "wb") for name in ("offsets", "lengths", "id_offsets", "id_hashes", "ids")}
        counts = FastaCounts()
        id_pos = 0

        def flush() -> None:
            for name, buf in bufs.items():
                if name == "offsets" and blocks is not None:
                    u = np.array(buf, dtype=np.int64)
                    k = np.searchsorted(blocks[1], u, side="right") - 1
                    np.ascontiguousarray((blocks[0][k] << 16) | (u - blocks[1][k])).tofile(files[name])
                else:
                    buf.tofile(files[name])
                del buf[:]
            hashes.tofile(files["id_hashes"])
            del hashes[:]

        try:
            bufs["id_offsets"].append(0)
            with open_input(data, "FASTA", name=self.name) as inp:
                for p in parse_fasta_stream(inp.stream, self.name, keep_sequence=False):
                    raw_id = p.id.encode("utf-8")
                    files["ids"].write(raw_id)
                    id_pos += len(raw_id)
                    bufs["offsets"].append(p.offset)
                    bufs["lengths"].append(p.length)
                    bufs["id_offsets"].append(id_pos)
                    hashes.append(_hash_bytes(raw_id))
                    _count(counts, p)
                    if len(hashes) >= _FLUSH_EVERY:
                        flush()
            flush()
        finally:
            for f in files.values():
                f.close()
        return counts

    # ---- reading --------------------------------------------------------------------------

    def _open_arrays(self) -> None:
        n = int(self._meta["n"])
        d = self.dir

        def mm(name: str, dtype, count: int) -> np.ndarray:
            return np.memmap(d / f"{name}.bin", dtype=dtype, mode="r", shape=(count,))

        self._n = n
        self._offsets = mm("offsets", np.int64, n)
        self.lengths: np.ndarray = mm("lengths", np.int64, n)
        self.id_hashes: np.ndarray = mm("id_hashes", np.uint64, n)
        id_offsets = mm("id_offsets", np.int64, n + 1)
        blob_len = int(id_offsets[-1])
        blob = mm("ids", np.uint8, blob_len) if blob_len else np.zeros(0, np.uint8)
        self.ids: Sequence[str] = _IdList(blob, id_offsets)
        self._fh = None
        self._fh_pid = -1

    @property
    def kind(self) -> str:
        return self._meta["kind"]

    @property
    def counts(self) -> FastaCounts:
        return FastaCounts(**self._meta["counts"])

    def __getstate__(self) -> dict:
        return {"name": self.name, "path": self.path, "dir": self.dir, "meta": self._meta}

    def __setstate__(self, state: dict) -> None:
        self.name, self.path, self.dir, self._meta = state["name"], state["path"], state["dir"], state["meta"]
        self._open_arrays()

    def _handle(self):
        # a forked DataLoader worker must not share the parent's file position
        if self._fh is None or self._fh_pid != os.getpid():
            if self.kind == "bgzf":
                from Bio import bgzf

                self._fh = bgzf.BgzfReader(fileobj=open(self.path, "rb"), mode="rb")
            elif self.kind == "gzip":
                self._fh = open(self.dir / "data.fasta", "rb")
            else:
                self._fh = open(self.path, "rb")
            self._fh_pid = os.getpid()
        return self._fh

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i) -> FastaRecord:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} out of range ({self._n} records in {self.name})")
        fh = self._handle()
        fh.seek(int(self._offsets[i]))
        header = fh.readline()
        if header[:1] != b">":
            raise UserError(
                f"{self.name}: record {i} is not where its index says; the file changed while in use "
                f"(delete {self.dir} and retry)"
            )
        parts = []
        while True:
            line = fh.readline()
            if not line or line[:1] == b">":
                break
            parts.append(line.translate(None, _WHITESPACE))
        rid, desc = _header(self.name, header, -1)
        return FastaRecord(rid, desc, b"".join(parts).decode("latin-1"))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __repr__(self) -> str:
        return f"FastaIndex({self.name!r}, {self._n} records, {self.kind})"
