"""ESM-2 architecture over whole genomes, with block-sparse attention in every layer.

Each layer is ESM-2's: pre-LayerNorm self-attention with rotary embeddings (queries scaled by
head_dim^-0.5, q/k/v/out with biases), then pre-LayerNorm GELU (erf) FFN; a final LayerNorm;
ESM-2's LM head (dense -> GELU -> LayerNorm -> decoder + bias, decoder tied to the input
embedding or not). ESM-2's token dropout is applied as ESM does, at training and inference:
``<mask>`` embeddings are zeroed and the rest scaled by ``(1 - 0.15*0.8) / (1 - r)``, where r
is the observed share of ``<mask>`` tokens. ESM computes r per sequence; here it is per
protein (the tokens with one pid), which is the same for a single protein and keeps the
single-protein arm free of any coupling between proteins.

Attention from token i to token j is allowed iff ``pid[i] >= 0``, ``pid[j] >= 0`` and
``allowed[b, pid[i], pid[j]]``; the block layout is built once per batch and shared by all
layers and heads (``lcplm.models.attention``); nothing of size L x L is formed by the
``kernel`` backend (``auto`` picks it on CUDA, and on CPU once L x L scores stop being small). Rotary positions are token offsets inside the whole window
(``positions="genome"``) or inside each protein (``"protein"``); rotary scores depend only on
i - j, so attention inside a protein is the same either way and equals ESM-2 on that protein
alone; they differ only across proteins (genomic distance in tokens, or none). Genome windows
frame every protein ``<cls> P <eos>`` (``lcplm.data.genomes``), so under the single-protein
pair source every protein's logits are ESM-2's on that protein.

The network itself (:class:`ESM2StyleLM`) is shared with the stage-1 ESM-2 model
(``lcplm.models.esm2``): one block, one attention dispatch, one set of parameter names.

Vocabulary: our ids 0..32 are ESM-2's 33 tokens (``lcplm.models.convert_esm`` copies those
rows); the rows after them (graph tokens, ``<sep>`` = 37 (no longer in windows), padding rows) are
lcplm's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import attention

ESM_MASK_RATIO_TRAIN = 0.15 * 0.8  # the <mask> share ESM-2 was trained with (token dropout)


@dataclass
class SparseTransformerConfig:
    name: str = "sparse_transformer"
    num_layers: int = 2
    hidden: int = 64
    heads: int = 4
    ffn: int = 256  # FFN inner size (ESM-2: 4 * hidden)
    vocab_size: int = tokenizer.PADDED_VOCAB_SIZE  # ESM-2's 33 ids map to our first 33 rows
    tie_embeddings: bool = True  # LM-head decoder shares the input embedding (as ESM-2)
    token_dropout: bool = True  # ESM-2's <mask> zeroing and rescaling
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0  # on the attention and FFN residual branches (ESM-2: 0)
    positions: str = "genome"  # rotary positions: genome (offset in the window) | protein
    rotary_base: float = 10000.0
    attention_backend: str = "auto"  # auto | kernel (block-sparse) | flex (FlexAttention, same tiles) | dense (SDPA + L x L mask) | reference (tests)
    init_std: float = 0.02


def rotary_tables(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ESM-2 rotary cos/sin. positions: (B, L) or (L,) -> cos, sin: (B or 1, 1, L, head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    pos = positions.float()
    if pos.dim() == 1:
        pos = pos.unsqueeze(0)
    freqs = pos.unsqueeze(-1) * inv_freq  # (B, L, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, L, D); rotate-half convention (ESM-2). Returns x's dtype (under autocast
    q/k are bf16 while the tables follow the fp32 residual stream)."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def protein_positions(pid: torch.Tensor) -> torch.Tensor:
    """(B, L) offset of each token inside its protein (pid runs are contiguous)."""
    B, L = pid.shape
    ar = torch.arange(L, device=pid.device).expand(B, L)
    start = torch.ones_like(pid, dtype=torch.bool)
    start[:, 1:] = pid[:, 1:] != pid[:, :-1]
    first = torch.where(start, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return ar - first


def protein_pair_mass(
    q: torch.Tensor, k: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor, scale: float, chunk_elems: int = 1 << 25
) -> torch.Tensor:
    """Attention mass between protein pairs, blockwise over queries (no L x L tensor).

    q, k: (B, H, L, D); pid: (B, L); allowed: (B, P, P).
    Returns (B, P, P) fp32: ``M[b, p, r]`` = mean over heads of the attention a token of p
    pays to the tokens of r, averaged over p's tokens (rows sum to 1 over allowed r).
    """
    B, H, L, _ = q.shape
    P = allowed.shape[-1]
    valid = pid >= 0
    pc = pid.clamp_min(0)
    onehot = F.one_hot(pc, P).float() * valid.unsqueeze(-1)  # (B, L, P)
    out = torch.zeros(B, H, P, P, dtype=torch.float32, device=q.device)
    C = max(1, min(L, chunk_elems // max(1, B * H * L)))
    kf = k.float()
    for s in range(0, L, C):
        qs = q[:, :, s : s + C].float()  # (B, H, C, D)
        scores = torch.einsum("bhcd,bhld->bhcl", qs, kf) * scale
        rows = allowed.gather(1, pc[:, s : s + C, None].expand(-1, -1, P))  # (B, C, P)
        m = rows.gather(2, pc[:, None, :].expand(-1, rows.shape[1], -1))  # (B, C, L)
        m = m & valid[:, s : s + C, None] & valid[:, None, :]
        probs = torch.softmax(scores.masked_fill(~m[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
        to_protein = probs @ onehot[:, None]  # (B, H, C, P)
        out += torch.einsum("bcp,bhcr->bhpr", onehot[:, s : s + C], to_protein)
    counts = onehot.sum(1).clamp_min(1.0)  # (B, P)
    return (out / counts[:, None, :, None]).mean(1)


class SparseTransformerBlock(nn.Module):
    """ESM-2 layer: x + Attn(LN(x)); x + FFN(LN(x)). x: (B, L, d)."""

    def __init__(self, cfg: SparseTransformerConfig):
        super().__init__()
        d = cfg.hidden
        self.heads, self.head_dim = cfg.heads, d // cfg.heads
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)  # ESM's query, key, value rows stacked
        self.out = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(d, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, d)
        self.drop = nn.Dropout(cfg.dropout)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        B, L, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v  # (B, H, L, Dh) each

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout, mass: Optional[list] = None) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self._qkv(x, cos, sin)
        scale = self.head_dim**-0.5
        if mass is not None:
            mass.append(protein_pair_mass(q, k, layout.pid, layout.allowed, scale))
        o = attention.sparse_attention(q, k, v, layout, scale=scale)
        x = x + self.drop(self.out(o.transpose(1, 2).reshape(B, L, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ffn_norm(x)))))


class ESM2StyleLM(nn.Module):
    """ESM-2's network over tokens grouped into proteins: the part both ESM-2 models share.

    Embedding with ESM-2's token dropout (per protein), pre-LN rotary layers
    (:class:`SparseTransformerBlock`) under a protein-pair pattern (``pid``, ``allowed``,
    through ``lcplm.models.attention``), final LayerNorm, ESM-2's LM head. Subclasses map their
    own inputs onto ``pid`` (B, L), ``allowed`` (B, P, P) and rotary ``positions`` ((L,) or
    (B, L)) and call :meth:`_hidden`: :class:`SparseGenomeLM` (genome windows under a pair
    source) and :class:`lcplm.models.esm2.ESM2LM` (one protein per row, or packed). Both
    have the same parameter names, which ``lcplm.models.convert_esm`` maps to ESM-2's.

    ``cfg`` needs: num_layers, hidden, heads, ffn, vocab_size, tie_embeddings, token_dropout,
    layer_norm_eps, dropout, rotary_base, attention_backend, init_std.
    """

    block_classes = (SparseTransformerBlock,)
    fsdp_param_dtype = torch.bfloat16  # nothing precision-critical outside autocast's fp32 ops

    def __init__(self, cfg, min_vocab: int = tokenizer.VOCAB_SIZE):
        super().__init__()
        if cfg.hidden % cfg.heads or (cfg.hidden // cfg.heads) % 2:
            raise UserError(f"model: hidden ({cfg.hidden}) must split into {cfg.heads} heads of even size")
        if cfg.attention_backend not in attention.SPARSE_ATTENTION_BACKENDS:
            raise UserError(
                f"model.attention_backend must be one of {list(attention.SPARSE_ATTENTION_BACKENDS)}, "
                f"got {cfg.attention_backend!r}"
            )
        if cfg.vocab_size < min_vocab:
            raise UserError(f"model.vocab_size must be >= {min_vocab}, got {cfg.vocab_size}")
        self.cfg = cfg
        d = cfg.hidden
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=tokenizer.PAD)
        self.layers = nn.ModuleList(SparseTransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head_dense = nn.Linear(d, d)
        self.head_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(d, cfg.vocab_size, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.decoder.weight = self.embed.weight

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                with torch.no_grad():
                    m.weight[tokenizer.PAD].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head_bias)

    def _embed(self, input_ids: torch.Tensor, pid: torch.Tensor, P: int) -> torch.Tensor:
        x = self.embed(input_ids)
        valid = pid >= 0
        if self.cfg.token_dropout:
            is_mask = input_ids == tokenizer.MASK
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            B = input_ids.shape[0]
            flat = (pid.clamp_min(0) + P * torch.arange(B, device=pid.device)[:, None])[valid]
            n_tok = torch.zeros(B * P, device=x.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
            n_mask = torch.zeros(B * P, device=x.device).index_add_(0, flat, is_mask[valid].float())
            scale = (1 - ESM_MASK_RATIO_TRAIN) / (1 - n_mask / n_tok.clamp_min(1))
            tok_scale = torch.ones(input_ids.shape, device=x.device)
            tok_scale[valid] = scale[flat]
            x = x * tok_scale.unsqueeze(-1).to(x.dtype)
        return x * valid.unsqueeze(-1).to(x.dtype)

    def _hidden(
        self, input_ids: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor,
        mass: Optional[list] = None,
    ) -> torch.Tensor:
        """Hidden states after the final LayerNorm (B, L, hidden); ``mass`` collects each
        layer's :func:`protein_pair_mass` when given."""
        x = self._embed(input_ids, pid, allowed.shape[-1])
        cos, sin = rotary_tables(positions, self.cfg.hidden // self.cfg.heads, self.cfg.rotary_base, x.dtype)
        layout = attention.sparse_attention_layout(pid, allowed, self.cfg.attention_backend, self.cfg.heads)
        for layer in self.layers:
            x = layer(x, cos, sin, layout, mass)
        return self.final_norm(x)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _layer_states(self, input_ids: torch.Tensor, pid: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor,
                      layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """ESM's ``repr_layers`` numbering: 0 = the embedding output (token dropout applied), k = the
        output of layer k, ``num_layers`` = after the final LayerNorm (:meth:`_hidden`). Zero at
        padding; the layers after the highest k are not run."""
        n = len(self.layers)
        bad = [k for k in layers if not 0 <= k <= n]
        if bad:
            raise ValueError(f"layer {bad[0]} outside 0..{n}")
        wanted = set(layers)
        valid = (pid >= 0).unsqueeze(-1)
        x = self._embed(input_ids, pid, allowed.shape[-1])
        out = {0: x * valid.to(x.dtype)} if 0 in wanted else {}
        cos, sin = rotary_tables(positions, self.cfg.hidden // self.cfg.heads, self.cfg.rotary_base, x.dtype)
        layout = attention.sparse_attention_layout(pid, allowed, self.cfg.attention_backend, self.cfg.heads)
        for k, layer in enumerate(self.layers[: max(wanted)], 1):
            x = layer(x, cos, sin, layout)
            if k in wanted and k < n:
                out[k] = x * valid.to(x.dtype)
        if n in wanted:
            h = self.final_norm(x)
            out[n] = h * valid.to(h.dtype)
        return out

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden) -> (B, L, vocab_size)."""
        return self.decoder(self.head_norm(F.gelu(self.head_dense(h)))) + self.head_bias


class SparseGenomeLM(ESM2StyleLM):
    """ESM-2-style masked LM over genome windows with pair-source sparse attention.

    forward(input_ids (B, L), lengths (B,), pid (B, L), allowed (B, P, P)) -> logits (B, L, V).
    Without ``pid`` each row is one protein (tokens before ``lengths``; ESM-2 on a batch of
    proteins); without ``allowed`` all pairs of proteins are allowed.
    """

    config_class = SparseTransformerConfig
    keyword_inputs = ("lengths", "pid", "allowed")

    def __init__(self, cfg: SparseTransformerConfig):
        if cfg.positions not in ("genome", "protein"):
            raise UserError(f"model.positions must be 'genome' or 'protein', got {cfg.positions!r}")
        super().__init__(cfg)

    # ------------------------------------------------------------------ inputs

    def _inputs(self, input_ids: torch.Tensor, lengths, pid, allowed) -> tuple[torch.Tensor, torch.Tensor]:
        """pid (B, L) and allowed (B, P, P) for any accepted combination of keywords."""
        B, L = input_ids.shape
        if pid is None:
            if lengths is None:
                pid = torch.zeros(B, L, dtype=torch.long, device=input_ids.device)
            else:
                ar = torch.arange(L, device=input_ids.device)
                pid = torch.where(ar < lengths.to(input_ids.device)[:, None], 0, -1)
        elif lengths is not None:
            ar = torch.arange(L, device=input_ids.device)
            pid = pid.masked_fill(ar >= lengths.to(pid.device)[:, None], -1)
        if allowed is None:
            P = int(pid.max().item()) + 1 if pid.numel() else 1
            allowed = torch.ones(B, max(P, 1), max(P, 1), dtype=torch.bool, device=input_ids.device)
        return pid, allowed.bool()

    # ------------------------------------------------------------------ passes

    def _run(self, input_ids, lengths, pid, allowed, mass: Optional[list] = None) -> torch.Tensor:
        pid, allowed = self._inputs(input_ids, lengths, pid, allowed)
        if self.cfg.positions == "protein":
            positions = protein_positions(pid)
        else:
            positions = torch.arange(input_ids.shape[1], device=pid.device)
        return self._hidden(input_ids, pid, allowed, positions, mass)

    def encode(
        self,
        input_ids: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        pid: Optional[torch.Tensor] = None,
        allowed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states after the final LayerNorm: (B, L, hidden)."""
        return self._run(input_ids, lengths, pid, allowed)

    def encode_layers(
        self,
        input_ids: torch.Tensor,
        layers: Sequence[int],
        lengths: Optional[torch.Tensor] = None,
        pid: Optional[torch.Tensor] = None,
        allowed: Optional[torch.Tensor] = None,
    ) -> dict[int, torch.Tensor]:
        """``{k: (B, L, hidden)}`` for ESM's ``repr_layers`` k (:meth:`ESM2StyleLM._layer_states`)."""
        pid, allowed = self._inputs(input_ids, lengths, pid, allowed)
        positions = protein_positions(pid) if self.cfg.positions == "protein" else torch.arange(input_ids.shape[1], device=pid.device)
        return self._layer_states(input_ids, pid, allowed, positions, layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        pid: Optional[torch.Tensor] = None,
        allowed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.lm_head(self.encode(input_ids, lengths, pid, allowed))

    @torch.no_grad()
    def protein_pair_attention(
        self,
        input_ids: torch.Tensor,
        lengths: Optional[torch.Tensor] = None,
        pid: Optional[torch.Tensor] = None,
        allowed: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Symmetrised attention mass between protein pairs, averaged over heads and layers.

        Returns (B, P, P) fp32, ``(M + M^T) / 2`` with M as in :func:`protein_pair_mass`;
        the first pass of the ``scored`` pair source. Computed blockwise over queries.
        """
        mass: list[torch.Tensor] = []
        self._run(input_ids, lengths, pid, allowed, mass)
        m = torch.stack(mass).mean(0)
        return (m + m.transpose(1, 2)) / 2
