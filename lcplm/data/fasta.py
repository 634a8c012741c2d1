"""FASTA files: a streaming reader and a random-access index for files larger than memory.

``iter_fasta(path)`` streams records from plain or gzip-compressed FASTA (multi-line records,
Windows line endings and blank lines are fine). ``FastaIndex(path)`` makes one streaming pass
that stores each record's byte offset, residue count and id in a cache folder (never next to
the input, which may be read-only), reuses it while the input's size and mtime are unchanged,
and then reads any record by position without holding sequences in memory:

- plain files: byte offsets;
- BGZF files (``bgzip``; blocked gzip as written by samtools/htslib): virtual offsets
  (compressed block start << 16 | offset inside the block), read through ``Bio.bgzf``;
- ordinary gzip (no random access possible): decompressed once into the cache folder.

Bad input is a :class:`~lcplm.errors.UserError` naming the file and the record or line.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import json
import operator
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from lcplm.data.cache import cache_root
from lcplm.errors import UserError

INDEX_VERSION = 1
_WHITESPACE = b" \t\r\n\x0b\x0c"
_FLUSH_EVERY = 1 << 20  # records buffered in memory while an index is written


class FastaRecord(NamedTuple):
    """One FASTA record. ``sequence`` has whitespace removed; case and a terminal ``*`` are kept."""

    id: str  # first word of the header
    description: str  # the rest of the header ('' when there is none)
    sequence: str


class _Parsed(NamedTuple):
    line_no: int  # 1-based line of the header
    offset: int  # byte offset of the header in the (decompressed) stream
    id: str
    description: str
    sequence: bytes | None  # None when the caller asked for lengths only
    length: int  # residues after dropping a terminal '*': what the tokenizer will emit


def _file_kind(path: Path) -> str:
    """'plain', 'gzip' or 'bgzf', from the magic bytes (not the file name)."""
    if not path.exists():
        raise UserError(f"{path}: FASTA file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a FASTA file")
    with open(path, "rb") as f:
        head = f.read(18)
    if not head:
        raise UserError(f"{path}: empty file (no FASTA records)")
    if head[:2] != b"\x1f\x8b":
        return "plain"
    # BGZF: a gzip member with FEXTRA whose first subfield is 'BC' (SAM/BAM specification, 4.1)
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def _open_stream(path: Path, kind: str) -> BinaryIO:
    return gzip.open(path, "rb") if kind in ("gzip", "bgzf") else open(path, "rb")


def _header(path: Path, line: bytes, line_no: int) -> tuple[str, str]:
    text = line[1:].decode("utf-8", errors="replace").strip()
    words = text.split(None, 1)
    if not words:
        raise UserError(f"{path}: line {line_no}: header line has no id")
    return words[0], (words[1] if len(words) > 1 else "")


def _parse(fh: BinaryIO, path: Path, keep_sequence: bool) -> Iterator[_Parsed]:
    """Records of a FASTA byte stream, with their header offsets and residue counts."""
    header: bytes | None = None
    h_line = h_off = 0
    parts: list[bytes] = []
    n = 0
    last = b""
    offset = 0

    def finish() -> _Parsed:
        rid, desc = _header(path, header, h_line)
        length = n - 1 if last.endswith(b"*") else n
        if length <= 0:
            raise UserError(f"{path}: record {rid!r} (line {h_line}) has no sequence")
        return _Parsed(h_line, h_off, rid, desc, b"".join(parts) if keep_sequence else None, length)

    try:
        for line_no, line in enumerate(fh, 1):
            if line[:1] == b">":
                if header is not None:
                    yield finish()
                header, h_line, h_off = line, line_no, offset
                parts, n, last = [], 0, b""
            else:
                s = line.translate(None, _WHITESPACE)
                if s:
                    if header is None:
                        raise UserError(
                            f"{path}: line {line_no}: sequence data before the first '>' header "
                            "(not a FASTA file?)"
                        )
                    n += len(s)
                    last = s
                    if keep_sequence:
                        parts.append(s)
            offset += len(line)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if header is None:
        raise UserError(f"{path}: empty file (no FASTA records)")
    yield finish()


def iter_fasta(path: str | os.PathLike) -> Iterator[FastaRecord]:
    """Stream the records of a plain or gzip-compressed FASTA file, in file order."""
    path = Path(path)
    kind = _file_kind(path)
    with _open_stream(path, kind) as fh:
        for p in _parse(fh, path, keep_sequence=True):
            yield FastaRecord(p.id, p.description, p.sequence.decode("latin-1"))


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
    Arrays are memory-mapped from ``<cache>/fasta_index/<key>/``; the index is rebuilt when
    the input's size or mtime changes. Safe to use from DataLoader workers (each process
    opens its own file handle; pickling carries only paths).
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.path = Path(path)
        kind = _file_kind(self.path)
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
                raise UserError(f"{self.path}: could not write its index to {self.dir}")
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
            raise UserError(f"{self.path}: cannot create the index folder under {root} ({e.strerror})") from None
        try:
            kind = meta["kind"]
            if kind == "gzip":
                data = tmp / "data.fasta"
                print(
                    f"lcplm: {self.path} is gzip without BGZF blocks; decompressing it once into "
                    f"{self.dir / 'data.fasta'} for random access (compress with `bgzip` to avoid the copy)",
                    file=sys.stderr,
                )
                try:
                    with gzip.open(self.path, "rb") as src, open(data, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                except (OSError, EOFError, zlib.error) as e:
                    raise UserError(f"{self.path}: corrupt or truncated gzip data ({e})") from None
                n = self._write_arrays(tmp, data, "plain", None)
            else:
                n = self._write_arrays(tmp, self.path, kind, self._bgzf_blocks() if kind == "bgzf" else None)
            (tmp / "meta.json").write_text(json.dumps({**meta, "n": n}))
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
        except (ValueError, OSError, zlib.error) as e:
            raise UserError(f"{self.path}: corrupt BGZF file ({e})") from None
        return np.frombuffer(starts, np.int64), np.frombuffer(data_starts, np.int64)

    def _write_arrays(self, out: Path, data: Path, kind: str, blocks) -> int:
        bufs = {name: array.array("q") for name in ("offsets", "lengths", "id_offsets")}
        hashes = array.array("Q")
        files = {name: open(out / f"{name}.bin", "wb") for name in ("offsets", "lengths", "id_offsets", "id_hashes", "ids")}
        n = 0
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
            with _open_stream(data, kind) as fh:
                for p in _parse(fh, self.path, keep_sequence=False):
                    raw_id = p.id.encode("utf-8")
                    files["ids"].write(raw_id)
                    id_pos += len(raw_id)
                    bufs["offsets"].append(p.offset)
                    bufs["lengths"].append(p.length)
                    bufs["id_offsets"].append(id_pos)
                    hashes.append(_hash_bytes(raw_id))
                    n += 1
                    if len(hashes) >= _FLUSH_EVERY:
                        flush()
            flush()
        finally:
            for f in files.values():
                f.close()
        return n

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

    def __getstate__(self) -> dict:
        return {"path": self.path, "dir": self.dir, "meta": self._meta}

    def __setstate__(self, state: dict) -> None:
        self.path, self.dir, self._meta = state["path"], state["dir"], state["meta"]
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
            raise IndexError(f"record {i} out of range ({self._n} records in {self.path})")
        fh = self._handle()
        fh.seek(int(self._offsets[i]))
        header = fh.readline()
        if header[:1] != b">":
            raise UserError(
                f"{self.path}: record {i} is not where its index says; the file changed while in use "
                f"(delete {self.dir} and retry)"
            )
        parts = []
        while True:
            line = fh.readline()
            if not line or line[:1] == b">":
                break
            parts.append(line.translate(None, _WHITESPACE))
        rid, desc = _header(self.path, header, -1)
        return FastaRecord(rid, desc, b"".join(parts).decode("latin-1"))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __repr__(self) -> str:
        return f"FastaIndex({str(self.path)!r}, {self._n} records, {self.kind})"
