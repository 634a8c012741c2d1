"""Prepare the embedded default data set; describe FASTA files (the command is ``lcplm data``,
:mod:`lcplm.cli.data`).

``lcplm data prepare-default [--cache-dir DIR] [--with-phages]`` copies real proteins shipped
inside installed wheels into ``<cache>/data/`` (offline, idempotent), checking every record
with the FASTA reader and the tokenizer, and indexes them:

- ``938293.PRJEB85.HG003687.faa``: 2,100 proteins predicted from one bacterial genome, in
  genome order (pyhmmer's test data, MIT): the default stage-1 training set;
- with ``--with-phages``: ``phages/phage_{Agate,Topaz}.faa`` (pyrodigal-gv's test data, GPL-3).

``lcplm data prepare-swissprot [--cache-dir DIR] [--deb PATH]`` builds the Swiss-Prot FASTA and
its held-out split from Debian's ``metastudent-data`` (:mod:`lcplm.data.swissprot`).

``lcplm data stats FASTA... [--max-length N] [--max-tokens N]`` prints record counts (and the
characters read as <unk>: digits, 'J', '*' inside a sequence), the length distribution, and one
epoch's padding and budget fill for naive padded, bucketed padded and packed token-budget
batches (``default`` and ``swissprot:train|heldout|all`` name prepared files; ``-`` reads stdin; pipes and FIFOs
are copied once into the cache, see :mod:`lcplm.data.inputs`).

``lcplm data stats --format FORMAT FILE...`` checks other inputs with the readers training uses
and prints one summary line per file: ``genbank`` / ``viralembed`` (genomes, proteins, CDS
skipped and why, partial CDS, <unk> characters) and ``pairs`` / ``string`` / ``string_actions``
edge files (lines, edges under the edge rule with ``--min-score`` and ``--modes``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np

from lcplm.data.batching import compare_batching, token_lengths
from lcplm.data.edge_lists import EDGE_FORMATS, read_edges
from lcplm.data.cache import DEFAULT_PROTEOME, PHAGE_PROTEOMES, default_data_dir
from lcplm.data.fasta import FastaIndex, iter_fasta
from lcplm.data.tokenizer import encode_residues
from lcplm.data.genomes import GenomeReadSummary, read_genbank, read_viralembed
from lcplm.errors import UserError
from lcplm.files import atomic_write_with

# (import name, pip name, path inside the package, destination under <cache>/data)
DEFAULT_SOURCES = [("pyhmmer", "pyhmmer", f"tests/data/seqs/{DEFAULT_PROTEOME}", DEFAULT_PROTEOME)]
PHAGE_SOURCES = [("pyrodigal_gv", "pyrodigal-gv", f"tests/{name}", f"phages/{name}") for name in PHAGE_PROTEOMES]


def package_file(package: str, pip_name: str, rel: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the Python package {pip_name!r} is not installed; it ships the default data ({rel}): "
            f"pip install {pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise UserError(f"{pip_name} is installed but has no {rel}: reinstall it from its PyPI wheel")
    return path


def _digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate_fasta(path: Path) -> tuple[int, int]:
    """Read every record and tokenize it; ``(records, residues)``. Raises UserError on bad input."""
    n = residues = 0
    for rec in iter_fasta(path):
        residues += len(encode_residues(rec.sequence, record=rec.id))
        n += 1
    return n, residues


def install_copy(src: Path, dest: Path) -> bool:
    """Copy ``src`` to ``dest`` atomically unless an identical copy is there; True if copied."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and _digest(dest) == _digest(src):
        return False
    with open(src, "rb") as fin:
        atomic_write_with(dest, lambda fout: shutil.copyfileobj(fin, fout))
    return True


def prepare_default(cache_dir: str | None = None, with_phages: bool = False) -> list[Path]:
    """Copy, validate and index the default data set; returns the prepared FASTA paths."""
    sources = DEFAULT_SOURCES + (PHAGE_SOURCES if with_phages else [])
    data_dir = default_data_dir(cache_dir)
    out = []
    for package, pip_name, rel, dest_rel in sources:
        src = package_file(package, pip_name, rel)
        n, residues = validate_fasta(src)
        dest = data_dir / dest_rel
        try:
            copied = install_copy(src, dest)
        except OSError as e:
            raise UserError(f"cannot write {dest}: {e.strerror}") from None
        FastaIndex(dest, cache_dir)
        state = "copied" if copied else "already present"
        print(f"{dest}: {n:,} proteins, {residues:,} residues ({state}; from {pip_name})")
        out.append(dest)
    return out


def describe(path: Path, max_length: int, max_tokens: int, bucket_size: int, cache_dir: str | None) -> str:
    """The text ``lcplm data stats`` prints for one file."""
    idx = FastaIndex(path, cache_dir)
    lengths = np.asarray(idx.lengths)
    counts = idx.counts
    q = np.percentile(lengths, [10, 50, 90, 99])
    cropped = int((lengths > max_length - 2).sum())
    tl = token_lengths(lengths, max_length)
    lines = [
        f"{idx.name}: {len(lengths):,} records, {int(lengths.sum()):,} residues{counts.unk_note()}",
        f"  length (residues): min {lengths.min()}, p10 {q[0]:.0f}, median {q[1]:.0f}, mean {lengths.mean():.1f}, "
        f"p90 {q[2]:.0f}, p99 {q[3]:.0f}, max {lengths.max()}",
        f"  cropped at max_length={max_length} tokens: {cropped:,} records ({cropped / len(lengths):.1%}), "
        f"{int((lengths - (tl - 2)).sum()):,} residues not seen per epoch",
        f"  one epoch at max_tokens={max_tokens} (bucket_size={bucket_size}):",
        f"    {'batching':<26}{'batches':>9}{'seqs/batch':>12}{'padding':>10}{'budget fill':>13}",
    ]
    names = {"naive": "padded, unsorted (naive)", "padded": "padded, length-bucketed", "packed": "packed (cu_seqlens)"}
    for key, st in compare_batching(lengths, max_tokens, max_length, bucket_size).items():
        lines.append(
            f"    {names[key]:<26}{st.batches:>9,}{st.mean_batch_size:>12.1f}{st.padding_fraction:>10.1%}{st.budget_fill:>13.1%}"
        )
    return "\n".join(lines)


STAT_FORMATS = ("fasta", "genbank", "viralembed") + EDGE_FORMATS


def describe_other(path: str, fmt: str, min_score: float | None, modes: list[str] | None) -> str:
    """The one line ``lcplm data stats --format FMT`` prints for a genome or edge file."""
    if fmt in ("genbank", "viralembed"):
        summary = GenomeReadSummary()
        (read_genbank if fmt == "genbank" else read_viralembed)(path, summary)
        return summary.line()
    edges = read_edges(path, fmt, min_score, modes)
    pairs = edges.pair_set()
    loops = int((edges.src == edges.dst).sum())
    return (
        f"{path}: {edges.n_lines:,} lines, {len(edges.src):,} edges ({len(pairs):,} undirected pairs, {loops:,} self-loops); "
        f"{edges.n_rejected:,} failed the edge rule (score < {edges.min_score:g} or mode not selected)"
    )
