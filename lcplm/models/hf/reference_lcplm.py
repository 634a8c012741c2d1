"""Pure-PyTorch reference networks of lcplm's model kinds (shipped in exported directories).

Imports torch only. Every network is built from the plain dict of its lcplm config dataclass
(``config.json``'s ``lcplm_config``) and has lcplm's parameter names, so an exported
``model.safetensors`` loads one to one. The computations are the slow, obvious versions of
lcplm's: BiMamba-S runs the sequential selective scan in fp32 (CPU friendly; O(L) Python steps),
the genome transformer runs dense attention with its protein-pair mask (L x L scores). Outputs
equal lcplm's up to floating-point summation order.

Networks: ``encode(input_ids, lengths=None, **inputs) -> (B, L, d)`` and ``logits(hidden) ->
(B, L, V)``. ``lengths`` (B,) marks right padding; padding never changes a sequence's outputs.

- ``bimamba``: BiMamba-S (LC-PLM): residual add -> RMSNorm -> mixer; the mixer's in/out
  projections are shared by a forward scan and a scan over each sequence reversed within its
  own length (or, ``share_projections: false``, one pair per direction).
- ``sparse_transformer``: ESM-2 layers; query i attends key j iff ``pid[i] >= 0``,
  ``pid[j] >= 0`` and ``allowed[b, pid[i], pid[j]]`` (``pid`` (B, L) protein index per token,
  -1 padding; ``allowed`` (B, P, P)). Without ``pid`` each row is one protein.
- ``esm2``: ESM-2, the same layers, one protein per row.
- :class:`ReleasedBiMambaNetwork`: the same BiMamba-S in LC-PLM's released parameter layout
  (``bimamba.backbone.*``, tied ``mamba_fwd``/``mamba_rev`` projections stored once).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

PAD, MASK = 1, 32  # ESM-2 token ids (lcplm keeps them)
ESM_MASK_RATIO_TRAIN = 0.15 * 0.8  # ESM-2's token dropout: the <mask> share it was trained with


def lengths_from_attention_mask(attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, L) 0/1 right-padding mask -> lengths (B,); None stays None."""
    if attention_mask is None:
        return None
    mask = attention_mask.bool()
    lengths = mask.sum(-1)
    if not torch.equal(mask, torch.arange(mask.shape[-1], device=mask.device)[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must mark right padding (1s, then 0s) in every row")
    return lengths


def reverse_index(lengths: Optional[torch.Tensor], length: int, device: torch.device) -> Optional[torch.Tensor]:
    """(B, L) position each token moves to when each sequence is reversed within its length."""
    if lengths is None:
        return None
    t = torch.arange(length, device=device)
    valid = t[None, :] < lengths[:, None]
    return torch.where(valid, lengths[:, None] - 1 - t[None, :], t[None, :])


def reverse(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    """x: (B, E, L), every sequence reversed within its own length (a plain flip without lengths)."""
    if index is None:
        return x.flip(-1)
    return x.gather(-1, index[:, None, :].expand(x.shape[0], x.shape[1], -1))


def selective_scan(u, delta, A, B, C, D, delta_bias):
    """Sequential selective scan in fp32, Mamba-1's recurrence.

    u, delta: (B, E, L); A: (E, N); B, C: (B, N, L); D, delta_bias: (E,) -> y (B, E, L):
    dt = softplus(delta + delta_bias); x_t = exp(dt_t A) x_{t-1} + dt_t B_t u_t; y_t = C_t x_t + D u_t.
    """
    u, A, B, C = u.float(), A.float(), B.float(), C.float()
    dt = F.softplus(delta.float() + delta_bias.float()[None, :, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, E, N)
    ys = []
    for t in range(u.shape[-1]):
        state = torch.exp(dt[:, :, t, None] * A) * state + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + D.float()[None, :, None] * u


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class SSM(nn.Module):
    """One scan direction: causal depthwise conv + SiLU, x_proj, dt_proj, A = -exp(A_log), D."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        e, n, r = c["expand"] * c["d_model"], c["d_state"], c["dt_rank"] or math.ceil(c["d_model"] / 16)
        self.d_state, self.dt_rank = n, r
        self.conv1d = nn.Conv1d(e, e, c["d_conv"], groups=e, padding=c["d_conv"] - 1, bias=c["conv_bias"])
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.A_log = nn.Parameter(torch.zeros(e, n))
        self.D = nn.Parameter(torch.ones(e))

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, E, L) -> y (B, E, L), D skip included, not gated."""
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])
        dt, b, c = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)
        return selective_scan(x, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                              self.D, self.dt_proj.bias).to(x.dtype)


def bimamba_mix(h, index, in_proj, fwd: SSM, rev: SSM, out_weight, out_bias):
    """Shared in_proj -> forward and per-sequence-reversed scans -> sum, gate by silu(z) -> out projection."""
    x, z = in_proj(h).chunk(2, dim=-1)
    x = x.transpose(1, 2)
    y = fwd.scan(x).float() + reverse(rev.scan(reverse(x, index)), index).float()
    y = y * F.silu(z.transpose(1, 2).float())
    return F.linear(y.transpose(1, 2).to(h.dtype), out_weight, out_bias)


class BiMambaMixer(nn.Module):
    """Shared projections (BiMamba-S), or with ``share_projections: false`` one in/out projection
    pair per direction, each direction gated by its own z (two untied Mamba calls)."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d, e = c["d_model"], c["expand"] * c["d_model"]
        self.share_projections = c.get("share_projections", True)
        self.in_proj = nn.Linear(d, 2 * e, bias=c["bias"])
        self.fwd = SSM(c)
        self.rev = SSM(c)
        self.out_proj = nn.Linear(e, d, bias=c["bias"])
        if not self.share_projections:
            self.in_proj_rev = nn.Linear(d, 2 * e, bias=c["bias"])
            self.out_proj_rev = nn.Linear(e, d, bias=c["bias"])

    def forward(self, h, index):
        if self.share_projections:
            return bimamba_mix(h, index, self.in_proj, self.fwd, self.rev, self.out_proj.weight, self.out_proj.bias)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x_rev, z_rev = self.in_proj_rev(h).chunk(2, dim=-1)
        y_fwd = self.fwd.scan(x.transpose(1, 2)).float() * F.silu(z.transpose(1, 2).float())
        y_rev = reverse(self.rev.scan(reverse(x_rev.transpose(1, 2), index)), index).float()
        y_rev = y_rev * F.silu(z_rev.transpose(1, 2).float())
        return self.out_proj(y_fwd.transpose(1, 2).to(h.dtype)) + self.out_proj_rev(y_rev.transpose(1, 2).to(h.dtype))


class BiMambaBlock(nn.Module):
    def __init__(self, c: Mapping[str, Any], mixer: nn.Module):
        super().__init__()
        self.norm = RMSNorm(c["d_model"], c["norm_eps"])
        self.mixer = mixer


class BiMambaBackbone(nn.Module):
    def __init__(self, c: Mapping[str, Any], mixer_class: type, vocab_rows: int):
        super().__init__()
        self.residual_in_fp32 = c["residual_in_fp32"]
        self.embedding = nn.Embedding(vocab_rows, c["d_model"])
        self.layers = nn.ModuleList(BiMambaBlock(c, mixer_class(c)) for _ in range(c["n_layer"]))
        self.norm_f = RMSNorm(c["d_model"], c["norm_eps"])

    def forward(self, input_ids, lengths=None):
        index = reverse_index(lengths, input_ids.shape[1], input_ids.device)
        hidden, residual = self.embedding(input_ids), None
        for layer in self.layers:
            residual = hidden if residual is None else hidden + residual
            hidden = layer.mixer(layer.norm(residual.to(layer.norm.weight.dtype)), index)
            if self.residual_in_fp32:
                residual = residual.float()
        out = self.norm_f((hidden + residual).to(self.norm_f.weight.dtype))
        if lengths is not None:
            valid = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
            out = out * valid[:, :, None].to(out.dtype)
        return out


class BiMambaNetwork(nn.Module):
    """lcplm's ``bimamba`` (BiMambaLM): ``backbone.*`` and ``lm_head``."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.backbone = BiMambaBackbone(c, BiMambaMixer, c["vocab_size"])
        self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
        if c["tie_embeddings"]:
            self.lm_head.weight = self.backbone.embedding.weight

    def encode(self, input_ids, lengths=None):
        return self.backbone(input_ids, lengths)

    def logits(self, hidden):
        return self.lm_head(hidden)

    def input_embeddings(self) -> nn.Module:
        return self.backbone.embedding

    def output_embeddings(self) -> nn.Module:
        return self.lm_head


class ReleasedMamba(SSM):
    """LC-PLM's ``mamba_fwd`` (owns the shared projections) or ``mamba_rev`` (does not)."""

    def __init__(self, c: Mapping[str, Any], projections: bool):
        super().__init__(c)
        if projections:
            d, e = c["d_model"], c["expand"] * c["d_model"]
            self.in_proj = nn.Linear(d, 2 * e, bias=c["bias"])
            self.out_proj = nn.Linear(e, d, bias=c["bias"])


class ReleasedBiMambaWrapper(nn.Module):
    """Two weight-tied Mamba mixers, the reverse one over each sequence reversed; LC-PLM adds the
    out_proj bias once per direction."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.mamba_fwd = ReleasedMamba(c, projections=True)
        self.mamba_rev = ReleasedMamba(c, projections=False)

    def forward(self, h, index):
        out = self.mamba_fwd.out_proj
        bias = None if out.bias is None else 2 * out.bias
        return bimamba_mix(h, index, self.mamba_fwd.in_proj, self.mamba_fwd, self.mamba_rev, out.weight, bias)


class ReleasedBiMambaNetwork(nn.Module):
    """BiMamba-S in LC-PLM's released layout: ``bimamba.backbone.*`` and ``lm_head``.

    Built from the released config (``d_model``, ``n_layer``, ``ssm_cfg``, ``vocab_size``,
    ``pad_vocab_size_multiple``, ``norm_epsilon``, ``residual_in_fp32``, ``tie_embeddings``).
    Unlike LC-PLM's own code, padded rows are reversed within their lengths.
    """

    def __init__(self, released: Mapping[str, Any]):
        super().__init__()
        ssm = dict(released.get("ssm_cfg") or {})
        mult = int(released.get("pad_vocab_size_multiple", 8) or 1)
        rows = int(math.ceil(int(released["vocab_size"]) / mult) * mult)
        dt_rank = ssm.get("dt_rank", "auto")
        c = {
            "d_model": released["d_model"],
            "n_layer": released["n_layer"],
            "d_state": ssm.get("d_state", 16),
            "d_conv": ssm.get("d_conv", 4),
            "expand": ssm.get("expand", 2),
            "dt_rank": 0 if dt_rank == "auto" else dt_rank,
            "conv_bias": ssm.get("conv_bias", True),
            "bias": ssm.get("bias", False),
            "norm_eps": released.get("norm_epsilon", 1e-5),
            "residual_in_fp32": released.get("residual_in_fp32", True),
        }
        self.bimamba = nn.Module()
        self.bimamba.backbone = BiMambaBackbone(c, ReleasedBiMambaWrapper, rows)
        self.lm_head = nn.Linear(c["d_model"], rows, bias=False)
        if released.get("tie_embeddings", False):
            self.lm_head.weight = self.bimamba.backbone.embedding.weight

    def encode(self, input_ids, lengths=None):
        return self.bimamba.backbone(input_ids, lengths)

    def logits(self, hidden):
        return self.lm_head(hidden)

    def input_embeddings(self) -> nn.Module:
        return self.bimamba.backbone.embedding

    def output_embeddings(self) -> nn.Module:
        return self.lm_head


# ----------------------------------------------------------------------------- genome transformer


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """ESM-2 rotary embedding (rotate-half) of x: (B, H, L, D); positions: (B, L) or (L,)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    pos = positions.float()
    if pos.dim() == 1:
        pos = pos[None]
    freqs = pos[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, L, D)
    x1, x2 = x.chunk(2, dim=-1)
    return (x * emb.cos().to(x.dtype) + torch.cat((-x2, x1), dim=-1) * emb.sin().to(x.dtype)).to(x.dtype)


def protein_positions(pid: torch.Tensor) -> torch.Tensor:
    """(B, L) offset of each token inside its protein (pid runs are contiguous)."""
    b, length = pid.shape
    ar = torch.arange(length, device=pid.device).expand(b, length)
    start = torch.ones_like(pid, dtype=torch.bool)
    start[:, 1:] = pid[:, 1:] != pid[:, :-1]
    return ar - torch.where(start, ar, torch.zeros_like(ar)).cummax(dim=1).values


class SparseTransformerBlock(nn.Module):
    """ESM-2 layer: x + Attn(LN(x)); x + FFN(LN(x))."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        d = c["hidden"]
        self.heads, self.head_dim = c["heads"], d // c["heads"]
        self.attn_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.fc1 = nn.Linear(d, c["ffn"])
        self.fc2 = nn.Linear(c["ffn"], d)
        self.drop = nn.Dropout(c["dropout"])

    def forward(self, x, positions, base, mask):
        b, length, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, positions, base), rotary(k, positions, base)
        scores = (q.float() @ k.float().transpose(-1, -2)) * self.head_dim**-0.5
        probs = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
        o = (probs @ v.float()).to(x.dtype)  # a query without any allowed key gets zeros
        x = x + self.drop(self.out(o.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ffn_norm(x)))))


class SparseTransformerNetwork(nn.Module):
    """lcplm's ``sparse_transformer`` (SparseGenomeLM), dense attention under the pair mask."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__()
        self.c = dict(c)
        d, v = c["hidden"], c["vocab_size"]
        self.embed = nn.Embedding(v, d, padding_idx=PAD)
        self.layers = nn.ModuleList(SparseTransformerBlock(c) for _ in range(c["num_layers"]))
        self.final_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.head_dense = nn.Linear(d, d)
        self.head_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.decoder = nn.Linear(d, v, bias=False)
        self.head_bias = nn.Parameter(torch.zeros(v))
        if c["tie_embeddings"]:
            self.decoder.weight = self.embed.weight

    def encode(self, input_ids, lengths=None, pid=None, allowed=None):
        b, length = input_ids.shape
        dev = input_ids.device
        ar = torch.arange(length, device=dev)
        if pid is None:
            pid = torch.zeros(b, length, dtype=torch.long, device=dev)
        if lengths is not None:
            pid = pid.masked_fill(ar[None, :] >= lengths.to(dev)[:, None], -1)
        if allowed is None:
            p = max(int(pid.max()) + 1 if pid.numel() else 1, 1)
            allowed = torch.ones(b, p, p, dtype=torch.bool, device=dev)
        allowed = allowed.bool()
        p = allowed.shape[-1]
        valid = pid >= 0
        pc = pid.clamp_min(0)
        x = self.embed(input_ids)
        if self.c["token_dropout"]:  # ESM-2: <mask> embeddings zeroed, the rest rescaled, per protein
            is_mask = input_ids == MASK
            x = x.masked_fill(is_mask[..., None], 0.0)
            flat = (pc + p * torch.arange(b, device=dev)[:, None])[valid]
            n_tok = torch.zeros(b * p, device=dev).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
            n_mask = torch.zeros(b * p, device=dev).index_add_(0, flat, is_mask[valid].float())
            scale = (1 - ESM_MASK_RATIO_TRAIN) / (1 - n_mask / n_tok.clamp_min(1))
            tok_scale = torch.ones(b, length, device=dev)
            tok_scale[valid] = scale[flat]
            x = x * tok_scale[..., None].to(x.dtype)
        x = x * valid[..., None].to(x.dtype)
        positions = protein_positions(pid) if self.c["positions"] == "protein" else ar
        rows = allowed.gather(1, pc[..., None].expand(-1, -1, p))  # (B, L, P)
        mask = rows.gather(2, pc[:, None, :].expand(-1, length, -1)) & valid[:, :, None] & valid[:, None, :]
        for layer in self.layers:
            x = layer(x, positions, self.c["rotary_base"], mask)
        return self.final_norm(x)

    def logits(self, hidden):
        return self.decoder(self.head_norm(F.gelu(self.head_dense(hidden)))) + self.head_bias

    def input_embeddings(self) -> nn.Module:
        return self.embed

    def output_embeddings(self) -> nn.Module:
        return self.decoder


class ESM2Network(SparseTransformerNetwork):
    """lcplm's ``esm2`` (ESM2LM): ESM-2, one protein per row, hidden states zero at padding."""

    def __init__(self, c: Mapping[str, Any]):
        super().__init__({**c, "positions": "genome"})  # rotary offsets from each row's start

    def encode(self, input_ids, lengths=None):
        hidden = super().encode(input_ids, lengths=lengths)
        if lengths is None:
            return hidden
        valid = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
        return hidden * valid[..., None].to(hidden.dtype)


NETWORKS: dict[str, type] = {
    "bimamba": BiMambaNetwork,
    "sparse_transformer": SparseTransformerNetwork,
    "esm2": ESM2Network,
}


def build_network(lcplm_config: Mapping[str, Any]) -> nn.Module:
    """The reference network of an lcplm model config (``{"name": kind, ...fields}``)."""
    kind = lcplm_config.get("name")
    if kind not in NETWORKS:
        raise ValueError(f"no reference network for lcplm model kind {kind!r} (have {sorted(NETWORKS)})")
    return NETWORKS[kind](lcplm_config)
