"""Downstream heads: probes on pooled embeddings, a pair decoder, a GNN over a PPI graph, and
the wrappers that turn them into one ``net(**batch) -> logits`` for :mod:`lcplm.tasks.downstream`.

Plain nn.Modules (no Lightning). Every wrapper's ``forward`` takes the batch's keyword inputs
and returns logits: ``(B, C)`` for sequence/node tasks, ``(B,)`` for links, ``(B, C)`` for interaction types.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lcplm.data import tokenizer as tok


def residue_mean(hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` over residue positions (no special tokens, no padding).

    hidden: (B, L, D), input_ids: (B, L) -> (B, D) in float32. A row without residues is zero.
    """
    mask = tok.is_residue(input_ids).to(hidden.device)
    h = hidden.float() * mask.unsqueeze(-1)
    return h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)


class LinearProbe(nn.Module):
    """x: (B, D) -> (B, C)."""

    def __init__(self, d_in: int, n_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class MLPHead(nn.Module):
    """x: (B, D) -> (B, C): ``n_layers`` hidden layers of Linear -> GELU -> Dropout, then Linear."""

    def __init__(self, d_in: int, n_out: int, hidden: int = 256, n_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        layers.append(nn.Linear(d, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PairDecoder(nn.Module):
    """Interaction logits of two proteins from the Hadamard product of their vectors.

    a, b: (B, D) -> (B,) with ``n_out=1`` (a link), else (B, n_out) (e.g. interaction types).
    Symmetric in a and b by construction.
    """

    def __init__(self, d_in: int, hidden: int = 256, n_layers: int = 1, dropout: float = 0.1, n_out: int = 1):
        super().__init__()
        self.n_out = n_out
        self.mlp = MLPHead(d_in, n_out, hidden=hidden, n_layers=n_layers, dropout=dropout)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = self.mlp(a * b)
        return out.squeeze(-1) if self.n_out == 1 else out


class GraphSAGE(nn.Module):
    """GraphSAGE (mean aggregation) over a PPI graph: x: (N, D), edge_index: (2, E) -> (N, hidden)."""

    def __init__(self, d_in: int, hidden: int = 256, n_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        from torch_geometric.nn import SAGEConv  # optional heavy import, only where a GNN is used

        self.convs = nn.ModuleList(SAGEConv(d_in if i == 0 else hidden, hidden) for i in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = self.dropout(self.act(x))
        return x


class FeatureNet(nn.Module):
    """A head on precomputed features: ``forward(x) -> head(x)``; x: (B, D)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class SequenceNet(nn.Module):
    """Fine-tuning: an lcplm encoder, residue-mean pooling, then a head.

    ``forward(input_ids, **inputs)`` passes the encoder's own keyword inputs (``lengths`` or
    ``cu_seqlens``) through to ``encoder.encode``; input_ids: (B, L) -> (B, C).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder.encode(input_ids, **inputs)
        return self.head(residue_mean(hidden, input_ids))


class GraphNodeNet(nn.Module):
    """Node prediction over a fixed graph: GNN (optional) on node features, then a head.

    The node features (N, D) and the graph are buffers; ``forward(node)`` scores the nodes
    indexed by ``node`` (B,) -> (B, C). The whole graph is propagated each call (full-batch
    GNN), which suits graphs whose features fit in memory.
    """

    def __init__(self, features: torch.Tensor, head: nn.Module, gnn: Optional[nn.Module] = None,
                 edge_index: Optional[torch.Tensor] = None):
        super().__init__()
        if gnn is not None and edge_index is None:
            raise ValueError("GraphNodeNet: a GNN needs edge_index")
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("edge_index", edge_index if edge_index is not None else torch.empty(2, 0, dtype=torch.long),
                             persistent=False)
        self.gnn = gnn
        self.head = head

    def node_vectors(self) -> torch.Tensor:
        return self.features if self.gnn is None else self.gnn(self.features, self.edge_index)

    def forward(self, node: torch.Tensor) -> torch.Tensor:
        return self.head(self.node_vectors()[node])


class GraphPairNet(GraphNodeNet):
    """Pair prediction: node vectors (features, optionally through a GNN) -> pair decoder.

    ``forward(a, b)`` scores the pairs (a[i], b[i]) of node indices (B,) -> the decoder's logits
    ((B,) for links, (B, n_out) for interaction types). The GNN
    must only see training edges (the caller builds ``edge_index`` from them).
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.node_vectors()
        return self.head(h[a], h[b])
