"""Protein-protein interaction graphs for stage 2 (LC-PLM-G): edge files + sequences -> ``Data``.

Edges come from :mod:`lcplm.data.edge_lists` (formats ``pairs``, ``string``, ``string_actions``;
one rule for what is an edge: no score column, or score >= ``min_score``, and for STRING
actions a selected mode). Sequences come from a FASTA file (id = first word of the header;
read by :mod:`lcplm.data.fasta`'s parser) or an ``id<TAB>sequence`` table, plain or ``.gz``, from
a path, pipe, FIFO or ``-``. Ids are mapped to node indices once; self-loops and duplicate edges
(either direction) are removed and the graph is made undirected. Proteins named by an edge but
absent from the sequence table are reported with the edges they touch (counts and the first
few ids) and dropped, or are an error in strict mode. Nodes are sorted by id, so the node
numbering does not depend on the order of lines in the edge file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch_geometric.data import Data

from lcplm.data import tokenizer
from lcplm.data.edge_lists import EdgeList, read_edges
from lcplm.data.fasta import parse_fasta_stream
from lcplm.data.inputs import DECOMPRESSION_ERRORS, open_input
from lcplm.errors import UserError

log = logging.getLogger(__name__)

N_EXAMPLE_IDS = 5  # how many missing ids a report or an error names


class SequenceTable(dict):
    """``{id: sequence}`` with what reading it counted: ``unk`` characters read as <unk> (digits,
    'J', '*' inside a sequence) in ``unk_records`` records."""

    unk: int = 0
    unk_records: int = 0


def read_sequence_table(path: str | os.PathLike) -> SequenceTable:
    """Sequences by id from a FASTA file or an ``id<TAB>sequence`` table (plain or ``.gz``).

    A FASTA id is the first word of its header line. Every sequence follows the tokenizer's
    residue rules (an invalid character is an error naming the record and line); an empty
    sequence, a duplicated id or a table line without exactly two fields is an error naming
    the file and line.
    """
    seqs = SequenceTable()
    with open_input(path, "sequence table") as inp:
        name = inp.name
        try:
            first = inp.stream.peek(1 << 12).lstrip()[:1]
        except DECOMPRESSION_ERRORS as e:
            raise UserError(f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
        if first == b">":
            for p in parse_fasta_stream(inp.stream, name):
                _add_sequence(seqs, p.id, p.sequence.decode("latin-1"), f"{name}:{p.line_no}", p.unk)
        else:
            try:
                for lineno, line in enumerate(inp.stream, 1):
                    parts = line.split()
                    if not parts or parts[0].startswith(b"#"):
                        continue
                    if len(parts) != 2:
                        raise UserError(
                            f"{name}:{lineno}: expected 'id<TAB>sequence' (2 fields), got {len(parts)} fields"
                        )
                    rid = parts[0].decode("utf-8", errors="replace")
                    where = f"{name}:{lineno}"
                    try:
                        raw = tokenizer.residue_bytes(parts[1], rid)
                    except UserError as e:
                        raise UserError(f"{where}: {e}") from None
                    unk = tokenizer.count_unk(raw)
                    _add_sequence(seqs, rid, parts[1].decode("latin-1"), where, unk)
            except DECOMPRESSION_ERRORS as e:
                raise UserError(f"{name}: corrupt or truncated gzip data ({e or type(e).__name__})") from None
    if not seqs:
        raise UserError(f"{path}: no sequences found")
    return seqs


def _add_sequence(seqs: SequenceTable, name: str, seq: str, where: str, unk: int) -> None:
    if not seq:
        raise UserError(f"{where}: empty sequence for {name!r}")
    if name in seqs:
        raise UserError(f"{where}: duplicate sequence id {name!r}")
    seqs[name] = seq
    if unk:
        seqs.unk += unk
        seqs.unk_records += 1


@dataclass
class GraphReport:
    """What building the graph kept and dropped (counts, plus the first few missing ids)."""

    edges_path: str
    sequences_path: str
    n_lines: int  # data lines in the edge file
    n_rejected: int  # lines that fail the edge rule (score below min_score, mode not selected)
    n_missing_proteins: int  # proteins named by an edge without a sequence
    missing_examples: list[str] = field(default_factory=list)
    n_missing_edges: int = 0  # edges dropped because an end has no sequence
    n_self_loops: int = 0
    n_duplicates: int = 0  # repeated edges, in either direction
    n_nodes: int = 0
    n_edges: int = 0  # undirected edges kept
    n_isolated: int = 0  # nodes without an edge (only with keep_isolated)
    min_score: float = 0.0  # the edge rule's threshold
    n_unk: int = 0  # sequence characters read as <unk> (digits, 'J', '*' inside)
    n_unk_records: int = 0

    def summary(self) -> str:
        s = (
            f"PPI graph from {self.edges_path}: {self.n_nodes} proteins, {self.n_edges} undirected edges "
            f"({self.n_lines} lines; {self.n_rejected} failed the edge rule (score < {self.min_score:g} or mode "
            f"not selected); {self.n_self_loops} self-loops and {self.n_duplicates} duplicates removed"
        )
        if self.n_unk:
            s += f"; {self.n_unk} sequence characters read as <unk> in {self.n_unk_records} proteins"
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
    report = GraphReport(edges.path, str(sequences_path), edges.n_lines, edges.n_rejected, len(missing), missing[:N_EXAMPLE_IDS],
                         min_score=edges.min_score, n_unk=getattr(sequences, "unk", 0),
                         n_unk_records=getattr(sequences, "unk_records", 0))
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
            f"{edges.path}: the graph has no edges ({edges.n_lines} lines, {edges.n_rejected} failing the edge "
            f"rule (score < {edges.min_score:g} or mode not selected), {report.n_missing_edges} touching proteins without a sequence, "
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
    min_score: Optional[float] = None,
    strict: bool = False,
    keep_isolated: bool = False,
    modes: Optional[Sequence[str]] = None,
) -> PPIGraph:
    """Read an edge file (``pairs``, ``string`` or ``string_actions``; see
    :mod:`lcplm.data.edge_lists` for the edge rule, ``min_score=None`` = the format's default,
    ``modes`` = STRING action modes kept) and its sequences into a :class:`PPIGraph`.

    Logs the report (one warning line when proteins without a sequence were dropped).
    """
    edges = read_edges(edges_path, edge_format, min_score, modes)
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
