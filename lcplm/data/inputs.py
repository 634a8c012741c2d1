"""Opening inputs: a path, a pipe, a named FIFO or ``-`` (stdin), each read exactly once.

Every lcplm reader opens its input here, so a file given as ``<(zcat x.fa.gz)``, ``/dev/stdin``,
``-`` or a FIFO reads the same bytes as the file itself:

- :func:`open_input` opens the input once and sniffs its first bytes from that same stream
  (never by opening the path a second time, which loses what the first open buffered from a
  pipe); gzip and BGZF are recognised by their magic bytes and decompressed while streaming.
- A FIFO is opened without blocking and waits at most ``$LCPLM_FIFO_TIMEOUT`` seconds
  (default :data:`DEFAULT_FIFO_TIMEOUT_S`) for its first data: a FIFO with no writer is an
  error, never a hang.
- :func:`spool_input` gives readers that need random access (:class:`~lcplm.data.fasta.FastaIndex`)
  a regular file: a path is used as it is; a pipe, FIFO or stdin is copied once into
  ``<cache>/spool/`` (named by a digest of its bytes, so the same data piped again reuses the
  copy and its index), with a note on stderr.

Errors are :class:`~lcplm.errors.UserError` lines naming the input (``<stdin>`` for ``-``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import select
import stat
import struct
import sys
import zlib
from pathlib import Path
from typing import BinaryIO, Optional, TextIO

from lcplm.data.cache import cache_root
from lcplm.errors import UserError

STDIN = "-"
FIFO_TIMEOUT_ENV = "LCPLM_FIFO_TIMEOUT"
DEFAULT_FIFO_TIMEOUT_S = 30.0
SNIFF_BYTES = 18  # a gzip header with the BGZF extra field
# What a truncated or corrupt gzip/BGZF stream raises while it is read (Bio.bgzf raises struct.error).
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, struct.error)
# The empty block every BGZF file ends with (SAM/BAM specification, 4.1.2): without it a file cut
# at a block boundary would read as valid data, silently shorter.
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def input_name(path: str | os.PathLike) -> str:
    """How messages name an input: ``<stdin>`` for ``-``, else the path as given."""
    return "<stdin>" if str(path) == STDIN else str(path)


def fifo_timeout() -> float:
    raw = os.environ.get(FIFO_TIMEOUT_ENV)
    if raw is None or raw == "":
        return DEFAULT_FIFO_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"${FIFO_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise UserError(f"${FIFO_TIMEOUT_ENV} must be >= 0 seconds, got {raw!r}")
    return value


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for an existing regular file (a path random access can reopen); False for ``-``,
    pipes, FIFOs, devices and missing paths."""
    if str(path) == STDIN:
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def sniff_kind(head: bytes) -> str:
    """'plain', 'gzip' or 'bgzf' from the first bytes (never from the file name)."""
    if head[:2] != b"\x1f\x8b":
        return "plain"
    # BGZF: a gzip member with FEXTRA whose first subfield is 'BC' (SAM/BAM specification, 4.1)
    if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


class _Prefixed(io.RawIOBase):
    """The bytes already read for sniffing, then the rest of the raw stream. With ``bgzf``, the
    end of the stream must be BGZF's end-of-file block (else EOFError, a decompression error)."""

    def __init__(self, head: bytes, raw: BinaryIO, close_raw: bool, bgzf: bool = False):
        self._head, self._raw, self._close_raw = head, raw, close_raw
        self._bgzf = bgzf
        self._tail = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            data = self._head[: len(b)]
            self._head = self._head[len(data) :]
        else:
            data = self._raw.read(len(b))
        if not data:
            if self._bgzf and self._tail != BGZF_EOF:
                raise EOFError("no end-of-file marker block at the end of the BGZF data: the file was cut short")
            return 0
        if self._bgzf:
            self._tail = (self._tail + data)[-len(BGZF_EOF) :]
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._close_raw:
            self._raw.close()
        super().close()


class Input:
    """An opened input. ``stream`` yields the decompressed bytes from the first one on.

    ``name``: for messages; ``kind``: 'plain' | 'gzip' | 'bgzf' (of the bytes as stored).
    """

    def __init__(self, name: str, kind: str, stream: BinaryIO, underneath: Optional[BinaryIO] = None):
        self.name, self.kind, self.stream = name, kind, stream
        self._underneath = underneath  # the compressed stream below a GzipFile (which does not close it)

    def __enter__(self) -> "Input":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            if self._underneath is not None:
                self._underneath.close()


def _wait_for_writer(fd: int, name: str, timeout: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    # On Linux a FIFO that never had a writer reports nothing (no POLLHUP): poll waits for data.
    if not poller.poll(int(timeout * 1000)):
        raise UserError(
            f"{name}: no data arrived on this FIFO within {timeout:g} s (no writer? start the writer, "
            f"e.g. `cat file > {name} &`, or raise ${FIFO_TIMEOUT_ENV})"
        )


def _open_raw(path: str | os.PathLike, what: str, name: Optional[str] = None) -> tuple[str, BinaryIO, bool]:
    """(name, raw binary stream, close the stream when done)."""
    name = name or input_name(path)
    if str(path) == STDIN:
        stdin = sys.stdin
        if stdin is None or stdin.closed:
            raise UserError(f"{name}: standard input is closed (pipe the {what} in, or give a path)")
        if stdin.isatty():
            raise UserError(f"{name}: standard input is a terminal; pipe the {what} in (`... | lcplm ...`) or give a path")
        return name, stdin.buffer, False
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{name}: {what} file not found") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{name}: is a directory, not a {what} file")
    try:
        if stat.S_ISFIFO(st.st_mode):
            # a named FIFO (or a pipe such as /dev/fd/63 from `<(...)` or /dev/stdin)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                _wait_for_writer(fd, name, fifo_timeout())
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            return name, open(fd, "rb", buffering=0), True
        raw = open(path, "rb", buffering=0)
        if stat.S_ISCHR(st.st_mode) and raw.isatty():  # e.g. /dev/stdin at an interactive shell
            raw.close()
            raise UserError(f"{name}: is a terminal; pipe the {what} in (`... | lcplm ...`) or give a file")
        return name, raw, True
    except PermissionError:
        raise UserError(f"{name}: permission denied") from None
    except OSError as e:
        raise UserError(f"{name}: cannot open ({e.strerror})") from None


def open_input(path: str | os.PathLike, what: str = "input", decompress: bool = True, name: Optional[str] = None) -> Input:
    """Open ``path`` (a file, pipe, FIFO, or ``-`` for stdin) once, for streaming.

    ``name`` replaces the path in messages (for a cached copy that stands for a user's input).

    ``what`` names the format in messages ("FASTA", "GenBank", "edge list", ...). An input with no
    bytes at all is an error ("empty file"). With ``decompress`` (default) gzip and BGZF data
    come out decompressed; a truncated stream then raises one of
    :data:`DECOMPRESSION_ERRORS` while it is read, which readers turn into one line.
    """
    name, raw, close_raw = _open_raw(path, what, name)
    try:
        head = b""
        while len(head) < SNIFF_BYTES:  # a pipe may deliver the first bytes in small pieces
            chunk = raw.read(SNIFF_BYTES - len(head))
            if not chunk:
                break
            head += chunk
    except OSError as e:
        if close_raw:
            raw.close()
        raise UserError(f"{name}: cannot read ({e.strerror or e})") from None
    if not head:
        if close_raw:
            raw.close()
        raise UserError(f"{name}: empty file (no {what} data)")
    kind = sniff_kind(head)
    prefixed = _Prefixed(head, raw, close_raw, bgzf=decompress and kind == "bgzf")
    stream: BinaryIO = io.BufferedReader(prefixed, buffer_size=1 << 16)
    if decompress and kind != "plain":
        return Input(name, kind, gzip.GzipFile(fileobj=stream, mode="rb"), underneath=stream)
    return Input(name, kind, stream)


def open_text_input(path: str | os.PathLike, what: str = "input") -> tuple[Input, TextIO]:
    """:func:`open_input` as UTF-8 text (undecodable bytes become U+FFFD). Close the Input."""
    inp = open_input(path, what)
    return inp, io.TextIOWrapper(inp.stream, encoding="utf-8", errors="replace", newline=None)


def spool_input(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, what: str = "input") -> Path:
    """A regular file holding the bytes of ``path``, for readers that need random access.

    A regular file is returned as it is. A pipe, FIFO or ``-`` is read once (bytes as stored,
    still compressed) into ``<cache>/spool/<digest>``, with a note on stderr; the same
    bytes piped again map to the same file, which is then not rewritten.
    """
    if is_regular_file(path):
        return Path(path)
    name, raw, close_raw = _open_raw(path, what)
    spool = cache_root(cache_dir) / "spool"
    try:
        spool.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{name}: cannot create {spool} to hold a copy of this stream ({e.strerror})") from None
    h = hashlib.blake2b(digest_size=10)
    tmp = spool / f".incoming-{os.getpid()}-{id(raw):x}"
    size = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                chunk = raw.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size == 0:
            raise UserError(f"{name}: empty file (no {what} data)")
        dest = spool / h.hexdigest()
        if dest.is_file() and dest.stat().st_size == size:
            tmp.unlink()
            state = "reusing the copy"
        else:
            os.replace(tmp, dest)
            state = "copied to"
    except OSError as e:
        raise UserError(f"{name}: cannot copy this stream into {spool} ({e.strerror or e})") from None
    finally:
        if close_raw:
            raw.close()
        if tmp.exists():
            tmp.unlink()
    what_stream = "standard input" if str(path) == STDIN else "a pipe or FIFO"
    print(
        f"lcplm: {name} is {what_stream}; its {size:,} bytes were read once for random access "
        f"({state} {dest}; delete {spool} to reclaim the space)",
        file=sys.stderr,
    )
    return dest
