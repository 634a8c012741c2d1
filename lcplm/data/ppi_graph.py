"""Protein-protein interaction graphs for stage 2 (LC-PLM-G): edge files + sequences -> ``Data``.

Two edge formats are read:

* ``string``: STRING ``protein.links`` files (``protein1 protein2 combined_score``, space
  separated, one header line, plain or ``.gz``; the ``detailed``/``full`` variants with more
  columns work too, the ``combined_score`` column is found by name). An edge is kept when
  ``combined_score >= min_score`` (STRING's "high confidence" is 700, our default).
* ``pairs``: any whitespace-separated list ``id1 id2 [label or score]``. A line without a third
  column is an edge; with one, only positive values (``> 0``) are edges, so labelled benchmark
  files (1 interacting / 0 not) give the positive graph. A first line whose third column is not
  a number is taken as a header.

Sequences come from a FASTA file (id = first word of the header) or an ``id<TAB>sequence``
table, plain or ``.gz``. Ids are mapped to node indices once; self-loops and duplicate edges
(either direction) are removed and the graph is made undirected. Proteins named by an edge but
absent from the sequence table are reported with the edges they touch (counts and the first
few ids) and dropped, or are an error in strict mode. Nodes are sorted by id, so the node
numbering does not depend on the order of lines in the edge file.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from lcplm.errors import UserError

log = logging.getLogger(__name__)

EDGE_FORMATS = ("pairs", "string")
N_EXAMPLE_IDS = 5  # how many missing ids a report or an error names


def _open_text(path: str | Path) -> io.TextIOBase:
    """Open a plain or gzip-compressed text file (detected by its magic bytes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _lines(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of non-blank, non-'#' lines."""
    with _open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if parts and not parts[0].startswith("#"):
                    yield lineno, parts
        except (EOFError, OSError, gzip.BadGzipFile) as e:  # truncated or corrupt .gz
            raise UserError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def read_sequence_table(path: str | Path) -> dict[str, str]:
    """Sequences by id from a FASTA file or an ``id<TAB>sequence`` table (plain or ``.gz``).

    A FASTA id is the first word of its header line. Whitespace inside a sequence is removed;
    an empty sequence, a duplicated id or a table line without exactly two fields is an error
    naming the file and line.
    """
    seqs: dict[str, str] = {}
    with _open_text(path) as f:
        first = ""
        for first in f:
            if first.strip():
                break
        if not first.strip():
            raise UserError(f"{path}: sequence file is empty")
        is_fasta = first.lstrip().startswith(">")
        f.seek(0)
        if is_fasta:
            _read_fasta_into(f, path, seqs)
        else:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) != 2:
                    raise UserError(
                        f"{path}:{lineno}: expected 'id<TAB>sequence' (2 fields), got {len(parts)} fields"
                    )
                _add_sequence(seqs, parts[0], parts[1], f"{path}:{lineno}")
    if not seqs:
        raise UserError(f"{path}: no sequences found")
    return seqs


def _read_fasta_into(f: io.TextIOBase, path: str | Path, seqs: dict[str, str]) -> None:
    name, where, chunks = None, "", []
    for lineno, line in enumerate(f, 1):
        if line.startswith(">"):
            if name is not None:
                _add_sequence(seqs, name, "".join(chunks), where)
            words = line[1:].split()
            if not words:
                raise UserError(f"{path}:{lineno}: FASTA header without an id")
            name, where, chunks = words[0], f"{path}:{lineno}", []
        elif line.strip():
            if name is None:
                raise UserError(f"{path}:{lineno}: sequence line before the first FASTA header")
            chunks.append("".join(line.split()))
    if name is not None:
        _add_sequence(seqs, name, "".join(chunks), where)


def _add_sequence(seqs: dict[str, str], name: str, seq: str, where: str) -> None:
    if not seq:
        raise UserError(f"{where}: empty sequence for {name!r}")
    if name in seqs:
        raise UserError(f"{where}: duplicate sequence id {name!r}")
    seqs[name] = seq


def _parse_number(text: str, what: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: {what} {text!r} is not a number") from None


@dataclass
class EdgeList:
    """Pairs of protein ids read from an edge file, before they meet the sequence table."""

    path: str
    names: list[str]  # id of each index used in src/dst
    src: np.ndarray  # (E,) int64 index into names
    dst: np.ndarray  # (E,) int64
    n_lines: int = 0  # data lines read
    n_rejected: int = 0  # lines below the score threshold / non-positive labels


def read_string_links(path: str | Path, min_score: float = 700) -> EdgeList:
    """Edges with ``combined_score >= min_score`` from a STRING ``protein.links`` file."""
    index: dict[str, int] = {}
    src: list[int] = []
    dst: list[int] = []
    score_col = None
    n_lines = n_rejected = 0
    for lineno, parts in _lines(path):
        if score_col is None:
            if "combined_score" not in parts:
                raise UserError(
                    f"{path}:{lineno}: expected STRING's header line naming 'combined_score' "
                    f"(e.g. 'protein1 protein2 combined_score'), got {' '.join(parts)[:80]!r}"
                )
            score_col = parts.index("combined_score")
            n_cols = len(parts)
            continue
        if len(parts) != n_cols:
            raise UserError(f"{path}:{lineno}: expected {n_cols} fields like the header, got {len(parts)}")
        n_lines += 1
        if _parse_number(parts[score_col], "combined_score", f"{path}:{lineno}") < min_score:
            n_rejected += 1
            continue
        src.append(index.setdefault(parts[0], len(index)))
        dst.append(index.setdefault(parts[1], len(index)))
    if score_col is None:
        raise UserError(f"{path}: links file is empty (no header line)")
    return EdgeList(str(path), list(index), np.asarray(src, np.int64), np.asarray(dst, np.int64), n_lines, n_rejected)


def read_pair_list(path: str | Path) -> EdgeList:
    """Edges from ``id1 id2 [label or score]`` lines: no third column, or a positive one."""
    index: dict[str, int] = {}
    src: list[int] = []
    dst: list[int] = []
    n_lines = n_rejected = 0
    first = True
    for lineno, parts in _lines(path):
        where = f"{path}:{lineno}"
        if len(parts) not in (2, 3):
            raise UserError(f"{where}: expected 'id1 id2 [label or score]', got {len(parts)} fields")
        if len(parts) == 3:
            try:
                value = float(parts[2])
            except ValueError:
                if first:  # a header line such as 'protein1 protein2 label'
                    first = False
                    continue
                raise UserError(f"{where}: label or score {parts[2]!r} is not a number") from None
            if math.isnan(value):
                raise UserError(f"{where}: label or score is NaN")
        else:
            value = 1.0
        first = False
        n_lines += 1
        if value <= 0:
            n_rejected += 1
            continue
        src.append(index.setdefault(parts[0], len(index)))
        dst.append(index.setdefault(parts[1], len(index)))
    return EdgeList(str(path), list(index), np.asarray(src, np.int64), np.asarray(dst, np.int64), n_lines, n_rejected)


@dataclass
class GraphReport:
    """What building the graph kept and dropped (counts, plus the first few missing ids)."""

    edges_path: str
    sequences_path: str
    n_lines: int  # data lines in the edge file
    n_rejected: int  # below the score threshold, or non-positive labels
    n_missing_proteins: int  # proteins named by an edge without a sequence
    missing_examples: list[str] = field(default_factory=list)
    n_missing_edges: int = 0  # edges dropped because an end has no sequence
    n_self_loops: int = 0
    n_duplicates: int = 0  # repeated edges, in either direction
    n_nodes: int = 0
    n_edges: int = 0  # undirected edges kept
    n_isolated: int = 0  # nodes without an edge (only with keep_isolated)

    def summary(self) -> str:
        s = (
            f"PPI graph from {self.edges_path}: {self.n_nodes} proteins, {self.n_edges} undirected edges "
            f"({self.n_lines} lines; {self.n_rejected} below threshold or negative; "
            f"{self.n_self_loops} self-loops and {self.n_duplicates} duplicates removed"
        )
        if self.n_missing_proteins:
            s += (
                f"; {self.n_missing_proteins} proteins without a sequence in {self.sequences_path} "
                f"(e.g. {', '.join(self.missing_examples)}) and their {self.n_missing_edges} edges dropped"
            )
        if self.n_isolated:
            s += f"; {self.n_isolated} proteins without edges kept"
        return s + ")"


@dataclass
class PPIGraph:
    """An undirected PPI graph: ``data.edge_index`` (2, 2E) holds both directions, sorted."""

    data: Data
    ids: list[str]  # node -> protein id (sorted)
    sequences: list[str]  # node -> sequence
    report: GraphReport

    @property
    def num_nodes(self) -> int:
        return int(self.data.num_nodes)

    @property
    def num_edges(self) -> int:
        """Undirected edges (each stored in both directions)."""
        return int(self.data.edge_index.shape[1]) // 2


def build_graph(
    edges: EdgeList,
    sequences: dict[str, str],
    sequences_path: str = "<sequences>",
    strict: bool = False,
    keep_isolated: bool = False,
) -> PPIGraph:
    """Map ids to nodes once, drop self-loops, duplicates and proteins without a sequence.

    ``keep_isolated`` also makes nodes of the sequence-table proteins that have no kept edge.
    """
    names = edges.names
    has_seq = np.fromiter((n in sequences for n in names), dtype=bool, count=len(names))
    missing = [n for n, ok in zip(names, has_seq) if not ok]
    report = GraphReport(edges.path, str(sequences_path), edges.n_lines, edges.n_rejected, len(missing), missing[:N_EXAMPLE_IDS])
    src, dst = edges.src, edges.dst
    if missing:
        keep = has_seq[src] & has_seq[dst]
        report.n_missing_edges = int((~keep).sum())
        if strict:
            raise UserError(
                f"{edges.path}: {len(missing)} proteins have no sequence in {sequences_path} "
                f"(e.g. {', '.join(missing[:N_EXAMPLE_IDS])}); {report.n_missing_edges} edges touch them "
                "(strict mode: fix the files, or set strict=false to drop them)"
            )
        src, dst = src[keep], dst[keep]
    loops = src == dst
    report.n_self_loops = int(loops.sum())
    src, dst = src[~loops], dst[~loops]

    # node order: sorted protein ids (of edge ends, plus every sequence when keep_isolated)
    node_names = sorted({names[i] for i in np.unique(np.concatenate([src, dst]))})
    if keep_isolated:
        node_names = sorted(set(node_names) | set(sequences))
    if not node_names or len(src) == 0:
        raise UserError(
            f"{edges.path}: the graph has no edges ({edges.n_lines} lines, {edges.n_rejected} below the "
            f"threshold or negative, {report.n_missing_edges} touching proteins without a sequence, "
            f"{report.n_self_loops} self-loops)"
        )
    node_of = {n: i for i, n in enumerate(node_names)}
    remap = np.fromiter((node_of.get(n, -1) for n in names), dtype=np.int64, count=len(names))
    a, b = remap[src], remap[dst]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    n = len(node_names)
    keys = np.unique(lo * n + hi)
    report.n_duplicates = int(len(lo) - len(keys))
    lo, hi = keys // n, keys % n
    both = np.concatenate([np.stack([lo, hi]), np.stack([hi, lo])], axis=1)
    order = np.argsort(both[0] * n + both[1], kind="stable")
    edge_index = torch.from_numpy(both[:, order].copy())
    report.n_nodes, report.n_edges = n, len(keys)
    report.n_isolated = n - int(np.unique(both[0]).size)
    data = Data(edge_index=edge_index, num_nodes=n)
    return PPIGraph(data, node_names, [sequences[name] for name in node_names], report)


def load_ppi_graph(
    edges_path: str | Path,
    sequences_path: str | Path,
    edge_format: str = "pairs",
    min_score: float = 700,
    strict: bool = False,
    keep_isolated: bool = False,
) -> PPIGraph:
    """Read an edge file (``pairs`` or ``string``) and its sequences into a :class:`PPIGraph`.

    Logs the report (one warning line when proteins without a sequence were dropped).
    """
    if edge_format == "string":
        edges = read_string_links(edges_path, min_score)
    elif edge_format == "pairs":
        edges = read_pair_list(edges_path)
    else:
        raise UserError(f"edge format must be one of {list(EDGE_FORMATS)}, got {edge_format!r}")
    graph = build_graph(edges, read_sequence_table(sequences_path), str(sequences_path), strict, keep_isolated)
    (log.warning if graph.report.n_missing_proteins else log.info)(graph.report.summary())
    return graph


def split_nodes(edge_index: torch.Tensor, num_nodes: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``round(val_fraction * N)`` nodes grown breadth-first from random seeds.

    A uniformly random node set of 10% keeps only ~1% of the edges among its members; growing
    the held-out set breadth-first keeps it connected, so validation walks take ``[EDGE]`` steps
    too. Training and validation walks then run on the two induced subgraphs (no protein in
    both). Returns sorted ``(train_nodes, val_nodes)``; both are non-empty when N >= 2.
    edge_index: (2, 2E) both directions.
    """
    n_val = min(max(int(round(val_fraction * num_nodes)), 1), num_nodes - 1)
    row, col = edge_index[0].numpy(), edge_index[1].numpy()
    order = np.argsort(row, kind="stable")
    row, col = row[order], col[order]
    rowptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=num_nodes), out=rowptr[1:])
    seeds = torch.randperm(num_nodes, generator=generator).numpy()
    taken = np.zeros(num_nodes, dtype=bool)
    count, next_seed = 0, 0
    while count < n_val:
        while taken[seeds[next_seed]]:
            next_seed += 1
        frontier = [int(seeds[next_seed])]
        taken[frontier[0]] = True
        count += 1
        while frontier and count < n_val:
            nxt = []
            for u in frontier:
                for v in col[rowptr[u] : rowptr[u + 1]]:
                    if not taken[v] and count < n_val:
                        taken[v] = True
                        count += 1
                        nxt.append(int(v))
            frontier = nxt
    all_nodes = torch.arange(num_nodes)
    mask = torch.from_numpy(taken)
    return all_nodes[~mask], all_nodes[mask]
