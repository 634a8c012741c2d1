"""Graph-context MLM inputs for stage 2 (LC-PLM-G): seeded random walks, tokenised by gathers.

A context is one walk laid out as tokens::

    <cls> [BON] seq_0 [EON] [EDGE|NO_EDGE] [BON] seq_1 [EON] ... [BON] seq_k [EON] <eos>

``<cls>``/``<eos>`` wrap the whole context as they wrapped every stage-1 sequence (ESM's
convention), so position 0 and the last token mean what they meant in stage 1. Between two
proteins, ``[EDGE]`` says the walk moved to a neighbour in the graph and ``[NO_EDGE]`` that it
jumped to a uniformly sampled non-neighbour. Each step moves to a uniform random neighbour, or
with probability ``p_neg`` jumps; a node without neighbours always jumps, and a node adjacent
to every other node always moves to a neighbour.

Budget: a context holds at most ``context_len`` tokens, ``<cls>``/``<eos>`` included. A protein
longer than ``max_protein_len`` is cropped to a random window of that length. When the next
protein does not fit, the context ends; with ``fill_budget`` that protein is first cropped to a
random window that fills the remaining space (kept only when at least
:data:`MIN_FILL_RESIDUES` residues fit), always between its own ``[BON]``/``[EON]``.

Speed: every protein is tokenised once into a flat int8 buffer (:class:`ProteinTable`); walks
advance all contexts of a batch together over a CSR adjacency (:class:`CSRGraph`); assembly is
a handful of gathers and scatters over the output (:func:`assemble_contexts`), with a per-token
Python reference beside it (:func:`assemble_contexts_reference`) for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lcplm.data.tokenizer import BON, CLS, EDGE, EON, EOS, NO_EDGE, PAD, encode_residues
from lcplm.errors import UserError

MIN_FILL_RESIDUES = 8  # a budget-filling crop shorter than this carries too little to predict
_REJECTION_ROUNDS = 8  # non-neighbour draws by rejection before the exact fallback


@dataclass
class CSRGraph:
    """Undirected adjacency in CSR form; neighbours of ``u`` are ``col[rowptr[u]:rowptr[u+1]]``, sorted.

    ``keys = row * N + col`` is globally sorted, so "is v a neighbour of u" is one searchsorted.
    """

    rowptr: torch.Tensor  # (N+1,) int64
    col: torch.Tensor  # (nnz,) int64
    keys: torch.Tensor  # (nnz,) int64

    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_nodes: int) -> "CSRGraph":
        """edge_index: (2, nnz) with both directions of every undirected edge; no self-loops."""
        if num_nodes < 1:
            raise UserError("a walk graph needs at least one node")
        row, col = edge_index[0].long(), edge_index[1].long()
        keys, order = torch.sort(row * num_nodes + col)
        col = col[order]
        rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
        rowptr[1:] = torch.cumsum(torch.bincount(row, minlength=num_nodes), 0)
        return cls(rowptr, col, keys)

    @property
    def num_nodes(self) -> int:
        return self.rowptr.numel() - 1

    def degree(self, u: torch.Tensor) -> torch.Tensor:
        return self.rowptr[u + 1] - self.rowptr[u]

    def are_neighbours(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """u, v: (n,) -> (n,) bool."""
        if self.keys.numel() == 0:
            return torch.zeros_like(u, dtype=torch.bool)
        q = u * self.num_nodes + v
        pos = torch.searchsorted(self.keys, q).clamp_max(self.keys.numel() - 1)
        return self.keys[pos] == q


@dataclass
class ProteinTable:
    """Every protein tokenised once: residues of protein i are ``residues[offsets[i]:offsets[i+1]]``."""

    residues: torch.Tensor  # (total,) int8 residue ids
    offsets: torch.Tensor  # (N+1,) int64

    @classmethod
    def from_sequences(cls, sequences: Sequence[str], ids: Sequence[str] | None = None) -> "ProteinTable":
        parts = [
            encode_residues(s, record=ids[i] if ids is not None else f"protein {i}").astype(np.int8)
            for i, s in enumerate(sequences)
        ]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        residues = np.concatenate(parts) if parts else np.zeros(0, np.int8)
        return cls(torch.from_numpy(residues), torch.from_numpy(offsets))

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return self.offsets.numel() - 1


def _uniform_below(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform integer in [0, high) per entry (high >= 1), from float64 draws (53 bits)."""
    u = torch.rand(high.shape, dtype=torch.float64, generator=generator)
    return torch.minimum((u * high).long(), high - 1)


def sample_non_neighbours(graph: CSRGraph, u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A uniform node that is neither ``u`` nor a neighbour of it, per entry of u: (n,).

    Requires ``degree(u) < N - 1``. Rejection sampling first (cheap on sparse graphs); entries
    still rejected after a few rounds are drawn exactly: the k-th non-excluded node is the fixed
    point of ``v = k + |{x excluded: x <= v}|``.
    """
    n = graph.num_nodes
    out = torch.empty_like(u)
    todo = torch.arange(u.numel())
    for _ in range(_REJECTION_ROUNDS):
        if todo.numel() == 0:
            return out
        uu = u[todo]
        v = _uniform_below(torch.full_like(uu, n), generator)
        ok = (v != uu) & ~graph.are_neighbours(uu, v)
        out[todo[ok]] = v[ok]
        todo = todo[~ok]
    if todo.numel():
        uu = u[todo]
        start = graph.rowptr[uu]
        k = _uniform_below(n - 1 - graph.degree(uu), generator)
        v = k.clone()
        while True:
            below_nbrs = torch.searchsorted(graph.keys, uu * n + v, right=True) - start
            nxt = k + below_nbrs + (uu <= v).long()
            if torch.equal(nxt, v):
                break
            v = nxt
        out[todo] = v
    return out


def walk_step(graph: CSRGraph, u: torch.Tensor, p_neg: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step from each node of ``u``: (n,) -> ``(next, is_edge, moved)``, each (n,).

    ``is_edge`` is True for a move to a neighbour, False for a jump to a non-neighbour;
    ``moved`` is False only where no move exists (a single-node graph).
    """
    n = graph.num_nodes
    deg = graph.degree(u)
    jump_draw = torch.rand(u.shape, generator=generator) < p_neg
    can_jump = deg < n - 1
    jump = (jump_draw & can_jump) | (deg == 0)
    moved = (deg > 0) | can_jump
    nxt = torch.empty_like(u)
    step = ~jump & moved
    if step.any():
        us = u[step]
        nxt[step] = graph.col[graph.rowptr[us] + _uniform_below(deg[step], generator)]
    jump &= moved
    if jump.any():
        nxt[jump] = sample_non_neighbours(graph, u[jump], generator)
    nxt[~moved] = u[~moved]
    return nxt, ~jump & moved, moved


@dataclass
class ContextPlan:
    """What each context holds, before tokens: W contexts of up to S proteins.

    ``nodes[w, j]`` is the j-th protein of context w (-1 past its end); ``links[w, j]`` the
    separator token before it (EDGE or NO_EDGE; PAD at j = 0 and past the end); residues
    ``crop_start[w, j] : crop_start[w, j] + crop_len[w, j]`` of that protein are kept.
    """

    nodes: torch.Tensor  # (W, S) int64
    links: torch.Tensor  # (W, S) int64
    crop_start: torch.Tensor  # (W, S) int64
    crop_len: torch.Tensor  # (W, S) int64, 0 past the end

    @property
    def num_proteins(self) -> torch.Tensor:
        """(W,) proteins per context."""
        return (self.nodes >= 0).sum(1)

    @property
    def lengths(self) -> torch.Tensor:
        """(W,) tokens per context: <cls> <eos>, [BON] [EON] per protein, a separator between two."""
        k = self.num_proteins
        return self.crop_len.sum(1) + 3 * k - 1 + 2


def check_budget(context_len: int, max_protein_len: int) -> None:
    if max_protein_len < 1:
        raise UserError(f"max_protein_len must be >= 1, got {max_protein_len}")
    if max_protein_len + 4 > context_len:
        raise UserError(
            f"context_len ({context_len}) must hold at least one whole cropped protein: "
            f"max_protein_len + 4 (<cls> [BON] [EON] <eos>) = {max_protein_len + 4}"
        )


def plan_contexts(
    graph: CSRGraph,
    proteins: ProteinTable,
    starts: torch.Tensor,
    context_len: int,
    max_protein_len: int,
    p_neg: float,
    generator: torch.Generator,
    fill_budget: bool = True,
) -> ContextPlan:
    """Walk from every start node until the next protein no longer fits ``context_len`` tokens.

    starts: (W,) node indices of ``graph`` (which indexes ``proteins`` too). All W walks advance
    together, one vectorised step per protein; finished walks drop out of the active set.
    """
    check_budget(context_len, max_protein_len)
    if not 0.0 <= p_neg <= 1.0:
        raise UserError(f"p_neg must be in [0, 1], got {p_neg}")
    starts = starts.long()
    W = starts.numel()
    plen = proteins.lengths
    body = context_len - 2  # minus <cls> and <eos>

    def crop_starts(nodes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return _uniform_below(plen[nodes] - keep + 1, generator)

    # Per step, record the proteins taken (context row, node, link, crop) for the still-active
    # walks only; one scatter per field builds the (W, S) plan at the end.
    first_len = plen[starts].clamp_max(max_protein_len)
    rows, nodes, edges, crop_from, crop_len, counts = [torch.arange(W)], [starts], [torch.zeros(W, dtype=torch.bool)], [crop_starts(starts, first_len)], [first_len], [W]
    active, cur, used = torch.arange(W), starts, first_len + 2  # [BON] seq [EON]
    while active.numel():
        nxt, is_edge, moved = walk_step(graph, cur, p_neg, generator)
        cost = plen[nxt].clamp_max(max_protein_len)
        room = body - used - 3  # residues that fit after a separator, [BON] and [EON]
        fits = moved & (cost <= room)
        take = fits | (moved & (room >= MIN_FILL_RESIDUES)) if fill_budget else fits
        keep = torch.where(fits, cost, room)[take]
        taken = nxt[take]
        rows.append(active[take])
        nodes.append(taken)
        edges.append(is_edge[take])
        crop_from.append(crop_starts(taken, keep))
        crop_len.append(keep)
        counts.append(taken.numel())
        active, cur, used = active[fits], nxt[fits], (used + cost + 3)[fits]
    S = sum(1 for c in counts if c)
    r = torch.cat(rows)
    c = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    plan = ContextPlan(
        torch.full((W, S), -1), torch.full((W, S), PAD), torch.zeros(W, S, dtype=torch.long), torch.zeros(W, S, dtype=torch.long)
    )
    plan.nodes[r, c] = torch.cat(nodes)
    plan.crop_start[r, c] = torch.cat(crop_from)
    plan.crop_len[r, c] = torch.cat(crop_len)
    links = torch.where(torch.cat(edges), EDGE, NO_EDGE)
    plan.links[r[W:], c[W:]] = links[W:]
    return plan


def _segment_arange(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``arange(s, s + n)`` over (s, n) pairs (all n >= 1), by one cumsum: (sum(n),)."""
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    steps = torch.ones(total, dtype=torch.long)
    first = torch.cumsum(lengths, 0) - lengths  # where each segment begins in the output
    steps[first[1:]] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    steps[0] = starts[0]
    return torch.cumsum(steps, 0)


def assemble_contexts(plan: ContextPlan, proteins: ProteinTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens of every planned context: ``(input_ids (W, L), lengths (W,))``, right-padded with PAD.

    Vectorised: specials are scattered at computed positions and all residues of the batch
    are copied by one gather/scatter pair over a flat view of the output.
    """
    W, S = plan.nodes.shape
    valid = plan.nodes >= 0  # (W, S)
    sep = torch.zeros(W, S, dtype=torch.long)
    sep[:, 1:] = 1
    seg = torch.where(valid, sep + plan.crop_len + 2, 0)  # [sep] [BON] residues [EON]
    seg_start = 1 + torch.cumsum(seg, 1) - seg  # after <cls>
    lengths = seg.sum(1) + 2
    L = int(lengths.max()) if W else 0
    out = torch.full((W, L), PAD, dtype=torch.long)
    flat = out.view(-1)
    row = (torch.arange(W) * L).unsqueeze(1).expand(W, S)
    flat[row[:, 0]] = CLS
    flat[torch.arange(W) * L + lengths - 1] = EOS
    has_sep = valid & (sep > 0)
    flat[(row + seg_start)[has_sep]] = plan.links[has_sep]
    bon = row + seg_start + sep
    flat[bon[valid]] = BON
    flat[(bon + 1 + plan.crop_len)[valid]] = EON
    lens = plan.crop_len[valid]
    nonempty = lens > 0
    src_start = (proteins.offsets[plan.nodes[valid]] + plan.crop_start[valid])[nonempty]
    dst_start = (bon + 1)[valid][nonempty]
    lens = lens[nonempty]
    src = _segment_arange(src_start, lens)
    dst = _segment_arange(dst_start, lens)
    flat[dst] = proteins.residues[src].long()
    return out, lengths


def assemble_contexts_reference(plan: ContextPlan, proteins: ProteinTable) -> tuple[torch.Tensor, torch.Tensor]:
    """The same tokens built one context and one protein at a time (test reference)."""
    seqs = []
    for w in range(plan.nodes.shape[0]):
        toks = [CLS]
        for j in range(plan.nodes.shape[1]):
            node = int(plan.nodes[w, j])
            if node < 0:
                break
            if j > 0:
                toks.append(int(plan.links[w, j]))
            a = int(proteins.offsets[node]) + int(plan.crop_start[w, j])
            toks += [BON, *proteins.residues[a : a + int(plan.crop_len[w, j])].tolist(), EON]
        toks.append(EOS)
        seqs.append(toks)
    lengths = torch.tensor([len(t) for t in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if seqs else 0), PAD, dtype=torch.long)
    for w, t in enumerate(seqs):
        out[w, : len(t)] = torch.tensor(t)
    return out, lengths


def walk_contexts(
    graph: CSRGraph,
    proteins: ProteinTable,
    starts: torch.Tensor,
    context_len: int,
    max_protein_len: int,
    p_neg: float,
    generator: torch.Generator,
    fill_budget: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, ContextPlan]:
    """Plan and assemble: ``(input_ids (W, L), lengths (W,), plan)`` for walks from ``starts``."""
    plan = plan_contexts(graph, proteins, starts, context_len, max_protein_len, p_neg, generator, fill_budget)
    ids, lengths = assemble_contexts(plan, proteins)
    return ids, lengths, plan
