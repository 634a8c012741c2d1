"""Inputs given as pipes, FIFOs and stdin read every byte once; a FIFO without a writer is an error.

Before lcplm.data.inputs, the FASTA reader opened a path once to sniff gzip magic bytes and then
again to read it: from a pipe the first open swallowed a buffer's worth of records (`lcplm data
stats <(cat f.fa)` lost records, or failed on a record cut in half), and a FIFO without a writer
blocked forever.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lcplm.data.fasta import FastaIndex, iter_fasta
from lcplm.data.genomes import read_genbank
from lcplm.data.ppi_graph import read_sequence_table
from lcplm.errors import UserError

REPO = Path(__file__).resolve().parents[2]
FIFO_TIMEOUT_ENV = "LCPLM_FIFO_TIMEOUT"  # spelled out: these tests also ran against the code before the fix


def _fasta_bytes(n: int = 104) -> bytes:
    """n records over ~20 kB: more than one read buffer, so a lost first read loses records."""
    out = []
    for i in range(n):
        seq = "".join("ACDEFGHIKLMNPQRSTVWY"[(i * 7 + j * 3) % 20] for j in range(120 + i % 37))
        out.append(f">r{i} protein {i}\n" + "\n".join(seq[k : k + 60] for k in range(0, len(seq), 60)) + "\n")
    return "".join(out).encode()


def _expected(data: bytes) -> list[tuple[str, int]]:
    recs, cur = [], None
    for line in data.decode().splitlines():
        if line.startswith(">"):
            cur = [line[1:].split()[0], 0]
            recs.append(cur)
        else:
            cur[1] += len(line.strip())
    return [tuple(r) for r in recs]


class _PipeWriter:
    """An anonymous pipe fed by a thread; ``path`` is /dev/fd/N as bash's ``<(...)`` gives."""

    def __init__(self, data: bytes, chunk: int = 777, delay: float = 0.0):
        self.r, w = os.pipe()
        self.path = f"/dev/fd/{self.r}"

        def feed():
            time.sleep(delay)
            with os.fdopen(w, "wb") as f:
                for i in range(0, len(data), chunk):
                    f.write(data[i : i + chunk])
                    f.flush()

        self.thread = threading.Thread(target=feed, daemon=True)
        self.thread.start()

    def close(self):
        self.thread.join(5)
        os.close(self.r)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LCPLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(FIFO_TIMEOUT_ENV, "0.5")


@pytest.mark.parametrize("compress", [False, True])
def test_iter_fasta_through_a_pipe_reads_every_record(compress):
    data = _fasta_bytes()
    pipe = _PipeWriter(gzip.compress(data) if compress else data)
    try:
        got = [(r.id, len(r.sequence)) for r in iter_fasta(pipe.path)]
    finally:
        pipe.close()
    assert got == _expected(data) and len(got) == 104


def test_fasta_index_spools_a_pipe_once_with_a_note(tmp_path, capsys):
    data = _fasta_bytes()
    pipe = _PipeWriter(data)
    try:
        idx = FastaIndex(pipe.path)
    finally:
        pipe.close()
    assert [(idx.ids[i], int(idx.lengths[i])) for i in range(len(idx))] == _expected(data)
    assert idx[50].id == "r50" and idx.name == pipe.path
    err = capsys.readouterr().err
    assert "read once for random access" in err and str(tmp_path / "cache" / "spool") in err
    # the same bytes piped again reuse the copy (and so its index)
    pipe = _PipeWriter(data)
    try:
        again = FastaIndex(pipe.path)
    finally:
        pipe.close()
    assert again.path == idx.path and "reusing the copy" in capsys.readouterr().err


def test_other_readers_take_pipes(tmp_path):
    table = b"".join(f"P{i}\t{'MKV' * (i + 1)}\n".encode() for i in range(3000))
    pipe = _PipeWriter(table)
    try:
        seqs = read_sequence_table(pipe.path)
    finally:
        pipe.close()
    assert len(seqs) == 3000 and seqs["P0"] == "MKV"
    data = _fasta_bytes()
    pipe = _PipeWriter(data)
    try:
        seqs = read_sequence_table(pipe.path)
    finally:
        pipe.close()
    assert len(seqs) == 104


@pytest.mark.timeout(60)
def test_fifo_without_writer_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "in.fa"
    os.mkfifo(fifo)
    for read in (lambda: list(iter_fasta(fifo)), lambda: FastaIndex(fifo), lambda: read_genbank(fifo),
                 lambda: read_sequence_table(fifo)):
        t0 = time.monotonic()
        with pytest.raises(UserError, match=r"no data arrived on this FIFO within 0.5 s"):
            read()
        assert time.monotonic() - t0 < 5


def test_fifo_with_a_late_writer_is_read(tmp_path):
    fifo = tmp_path / "in.fa"
    os.mkfifo(fifo)
    data = _fasta_bytes()

    def writer():
        time.sleep(0.1)
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = [(r.id, len(r.sequence)) for r in iter_fasta(fifo)]
    t.join(5)
    assert got == _expected(data)


def test_stdin_dash_and_terminal(monkeypatch, tmp_path):
    data = _fasta_bytes()
    pipe = _PipeWriter(data)
    try:
        monkeypatch.setattr(sys, "stdin", open(pipe.r, "r", closefd=False))
        assert [(r.id, len(r.sequence)) for r in iter_fasta("-")] == _expected(data)
    finally:
        pipe.close()

    class Tty:
        closed = False

        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    with pytest.raises(UserError, match="<stdin>: standard input is a terminal"):
        list(iter_fasta("-"))


def test_open_input_errors_are_one_line(tmp_path):
    from lcplm.data.inputs import open_input, spool_input

    with pytest.raises(UserError, match="not found"):
        open_input(tmp_path / "absent", "FASTA")
    with pytest.raises(UserError, match="is a directory"):
        open_input(tmp_path, "FASTA")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        open_input(tmp_path / "empty", "FASTA")
    assert spool_input(tmp_path / "empty") == tmp_path / "empty"  # regular files are not copied


def _run(args: list[str], piped: bytes | None = None, env_extra=None, timeout=60) -> subprocess.CompletedProcess:
    """``python -m lcplm ARGS``, with ``piped`` written into its stdin through a pipe (as `cat f |`)."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'kernels'}", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "lcplm", *args], input=piped,
                          stdin=None if piped is not None else subprocess.DEVNULL, capture_output=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_cli_stats_through_stdin_and_a_fifo_without_writer(tmp_path):
    data = _fasta_bytes()
    src = tmp_path / "x.fa"
    src.write_bytes(data)
    total = sum(n for _, n in _expected(data))
    cache = ["--cache-dir", str(tmp_path / "c")]
    r = _run(["data", "stats", "/dev/stdin", *cache], piped=data)  # '-' is covered in-process above
    assert r.returncode == 0, r.stderr.decode()
    assert f"104 records, {total:,} residues" in r.stdout.decode()
    fifo = tmp_path / "fifo.fa"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = _run(["data", "stats", str(fifo), *cache], env_extra={FIFO_TIMEOUT_ENV: "0.5"}, timeout=30)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "no data arrived on this FIFO" in err
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_cli_embed_reads_every_record_from_stdin(tmp_path):
    """The issue's case: `cat f.fa | lcplm embed --fasta /dev/stdin` embedded 72 of 104 records."""
    import torch

    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.io import save_pretrained

    torch.manual_seed(0)
    ckpt = save_pretrained(BiMambaLM(BiMambaConfig(d_model=8, n_layer=1, d_state=4)), tmp_path / "tiny")
    r = _run(["embed", "--checkpoint", str(ckpt), "--fasta", "/dev/stdin", "--out", str(tmp_path / "o"),
              "--no-progress", "--format", "npy"], piped=_fasta_bytes(), timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert "lcplm embed: 104 sequences" in r.stdout.decode()


def test_pretraining_data_from_a_pipe_is_read_once_for_prepare_and_setup(tmp_path):
    from lcplm.data.datamodules.fasta import FastaDataConfig, FastaDataModule

    data = _fasta_bytes()
    pipe = _PipeWriter(data)
    try:
        dm = FastaDataModule(FastaDataConfig(path=pipe.path, val_fraction=0.1, max_length=64, max_tokens=256))
        dm.prepare_data()  # Lightning calls both; the pipe can only be read once
        dm.setup()
    finally:
        pipe.close()
    assert sum(len(s) for s in dm.sources) == 104
    assert len(dm.train_indices) + len(dm.val_indices) == 104
