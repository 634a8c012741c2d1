"""ESM-2 as a stage-1 model: one protein per row (or packed), the genome model's layers.

:class:`ESM2LM` is ESM-2 (Lin et al. 2023; ``EsmForMaskedLM`` in transformers): each protein
framed ``<cls> P <eos>``; ESM-2's token dropout (``<mask>`` embeddings zeroed, the rest scaled by
``(1 - 0.15*0.8) / (1 - r)`` with r the protein's observed ``<mask>`` share, ``<cls>``/``<eos>``
counted as ESM does); pre-LayerNorm layers with rotary self-attention (q/k/v/out with biases)
and an erf-GELU FFN; a final LayerNorm; ESM-2's LM head (dense -> GELU -> LayerNorm -> decoder
tied to the embedding + bias). It is built from the genome model's pieces
(:class:`~lcplm.models.sparse_transformer.ESM2StyleLM`: the same blocks, the same attention
dispatch in ``lcplm.models.attention``), so there is one attention implementation: a batch
becomes a protein index ``pid`` per token and an identity protein-pair matrix ``allowed``, and
no token attends across proteins or to padding.

Batches are those of the FASTA pipeline (:mod:`lcplm.data.datamodules.fasta`): padded
``input_ids (B, L)`` with ``lengths (B,)`` (row b is protein 0 of its row, padding pid -1), or
packed ``input_ids (1, T)`` with ``cu_seqlens (n + 1,)`` (segment k is protein k; rotary
positions restart at each segment's start). A protein's logits are the same alone, padded or
packed (up to summation order). Hidden states at padding positions are zero.

Vocabulary: ``vocab_size`` defaults to ESM-2's 33 tokens (ids 0..32, identical to ours), so a
model converts to and from Hugging Face ESM-2 exactly (``lcplm.models.convert_esm``) and has
ESM-2's published parameter counts; the FASTA pipeline emits no other ids. A larger table
(e.g. 40, a multiple of 8) is allowed; ids >= vocab_size are refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from lcplm.errors import UserError
from lcplm.models.sparse_transformer import ESM2StyleLM

ESM2_VOCAB = 33  # ESM-2's alphabet: <cls> <pad> <eos> <unk>, 29 residue/gap tokens, <null_1> <mask>


@dataclass
class ESM2Config:
    """ESM-2 hyper-parameters (defaults: ESM-2 8M, ``esm2_t6_8M_UR50D``)."""

    name: str = "esm2"
    num_layers: int = 6  # transformer layers
    hidden: int = 320  # model width
    heads: int = 20  # attention heads (head size hidden / heads, even)
    ffn: int = 1280  # FFN inner size (ESM-2: 4 * hidden)
    vocab_size: int = ESM2_VOCAB  # embedding / LM-head rows; ESM-2's 33 ids are ours
    tie_embeddings: bool = True  # LM-head decoder shares the input embedding (ESM-2)
    token_dropout: bool = True  # ESM-2's <mask> zeroing and rescaling, per protein
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon (ESM-2)
    dropout: float = 0.0  # on the attention and FFN residual branches (ESM-2: 0)
    rotary_base: float = 10000.0  # rotary frequency base (ESM-2; Hugging Face fixes it at 10000)
    attention_backend: str = "auto"  # auto | kernel | flex | dense | reference (lcplm.models.attention)
    init_std: float = 0.02  # normal init of linear and embedding weights

    def __post_init__(self) -> None:
        for key in ("num_layers", "hidden", "heads", "ffn"):
            if getattr(self, key) < 1:
                raise UserError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0 or self.rotary_base <= 0 or self.init_std <= 0:
            raise UserError("model.layer_norm_eps, model.rotary_base and model.init_std must be > 0")


def packed_segments(cu_seqlens: Tensor, total: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Segment index and offset inside the segment of each packed token: two (T,) long tensors.

    cu_seqlens: (n + 1,) rising from 0 to ``total``; anything else is a ValueError.
    """
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    if cu.ndim != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != total or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must rise from 0 to the packed length {total}, got {cu.tolist()}")
    lens = cu[1:] - cu[:-1]
    seg = torch.repeat_interleave(torch.arange(lens.numel(), device=device), lens)
    return seg, torch.arange(total, device=device) - cu[:-1][seg]


class ESM2LM(ESM2StyleLM):
    """ESM-2 masked LM. forward(input_ids, lengths=None, cu_seqlens=None) -> logits (B, L, V);
    encode(...) -> hidden states after the final LayerNorm (B, L, hidden), zero at padding."""

    config_class = ESM2Config
    keyword_inputs = ("lengths", "cu_seqlens")

    def __init__(self, cfg: ESM2Config):
        super().__init__(cfg, min_vocab=ESM2_VOCAB)

    def _layout(
        self, input_ids: Tensor, lengths: Optional[Tensor], cu_seqlens: Optional[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """pid (B, L), allowed (B, P, P) identity, rotary positions ((L,) or (1, T))."""
        B, L = input_ids.shape
        dev = input_ids.device
        if lengths is not None and cu_seqlens is not None:
            raise ValueError("give lengths (padded batch) or cu_seqlens (packed batch), not both")
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"a packed batch has input_ids of shape (1, T), got {tuple(input_ids.shape)}")
            seg, offset = packed_segments(cu_seqlens, L, dev)
            n = int(cu_seqlens.numel()) - 1
            return seg[None], torch.eye(n, dtype=torch.bool, device=dev)[None], offset[None]
        positions = torch.arange(L, device=dev)
        if lengths is None:
            pid = torch.zeros(B, L, dtype=torch.long, device=dev)
        else:
            lengths = lengths.to(device=dev, dtype=torch.long)
            if lengths.shape != (B,) or bool(((lengths < 0) | (lengths > L)).any()):
                raise ValueError(f"lengths must be ({B},) values in [0, {L}], got {lengths.tolist()}")
            pid = torch.where(positions[None, :] < lengths[:, None], 0, -1)
        return pid, torch.ones(B, 1, 1, dtype=torch.bool, device=dev), positions

    def _check_vocab(self, input_ids: Tensor) -> None:
        if input_ids.numel() and int(input_ids.max()) >= self.cfg.vocab_size:
            raise UserError(
                f"esm2 model: token id {int(input_ids.max())} is outside its vocabulary of {self.cfg.vocab_size} "
                "(ESM-2 reads plain proteins; graph and genome tokens need model.vocab_size >= 38)"
            )

    def encode(self, input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """Hidden states after the final LayerNorm: (B, L, hidden), zero at padding."""
        self._check_vocab(input_ids)
        pid, allowed, positions = self._layout(input_ids, lengths, cu_seqlens)
        h = self._hidden(input_ids, pid, allowed, positions)
        return h * (pid >= 0).unsqueeze(-1).to(h.dtype)

    def encode_layers(self, input_ids: Tensor, layers: Sequence[int], lengths: Optional[Tensor] = None,
                      cu_seqlens: Optional[Tensor] = None) -> dict[int, Tensor]:
        """``{k: (B, L, hidden)}`` for ESM's ``repr_layers`` k: 0 = the embedding output, k = the
        output of layer k, ``num_layers`` = :meth:`encode`; zero at padding."""
        self._check_vocab(input_ids)
        pid, allowed, positions = self._layout(input_ids, lengths, cu_seqlens)
        return self._layer_states(input_ids, pid, allowed, positions, layers)

    def forward(self, input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """Logits (B, L, vocab_size)."""
        return self.lm_head(self.encode(input_ids, lengths=lengths, cu_seqlens=cu_seqlens))
