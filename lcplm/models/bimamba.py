"""BiMamba-S, LC-PLM's encoder: bidirectional Mamba-1 with shared in/out projections.

Per layer: residual add -> RMSNorm -> mixer. The mixer projects the normed input once
(``in_proj``: d -> 2E, giving x and z); each direction has its own causal depthwise conv1d,
x_proj, dt_proj, A and D and runs a selective scan, the reverse direction over each
sequence reversed within its own length; then y = (y_fwd + reverse(y_rev)) * silu(z) goes
through one shared ``out_proj``.

That equals LC-PLM's two weight-tied ``Mamba`` calls on the input and its flip: each call
gates its own scan with silu of its own z, and the reverse call's z is z flipped, so
flip(y_rev' * silu(flip z)) = reverse(y_rev') * silu(z); the shared out_proj is linear, so
the two out_proj calls become one on the sum (an out_proj bias, which LC-PLM adds once per
direction, is stored doubled by the converter). The projections, most of the FLOPs, run
once instead of twice.

``share_projections: false`` gives each direction its own ``in_proj``/``out_proj`` (two
untied Mamba calls): the control of LC-PLM's shared-projection ablation. It has about twice
the projection parameters at the same width, so equal-parameter pairs use a narrower model
(``lcplm params`` prints the counts). LC-PLM's released format has shared projections only.

Batches: padded ``input_ids (B, L)`` with ``lengths (B,)``, or packed ``input_ids (1, T)``
with ``cu_seqlens (n+1,)``. A sequence's outputs are the same alone, in a padded batch or
packed: it is reversed within its own extent, conv windows and scan states restart at its
start, and everything else is per token. Hidden states at padding positions are zero.

On CUDA with mamba-ssm (``scan_backend`` auto or cuda), padded batches run the kernels
directly: after the per-sequence reversal the padding still sits after every sequence, so
the causal conv and scan never carry it into real positions. Packed batches are unpacked
into a right-padded batch for the scan kernel and packed back (``lcplm_kernels.selective_scan``),
and their conv runs in PyTorch with per-sequence masking.

Without gradients on CPU (``scan_backend`` auto or native), each mixer takes the forward-only
inference route of :mod:`lcplm.models.bimamba_inference` instead: same outputs within fp32
rounding, no transposes or flips, nothing kept for a backward (``bimamba_inference.disabled()``
forces the path above, to compare them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import bimamba_inference
from lcplm_kernels import selective_scan as ssm_ops


@dataclass
class BiMambaConfig:
    """BiMamba-S hyper-parameters (mamba-ssm's ``Mamba`` defaults where they overlap)."""

    name: str = "bimamba"
    d_model: int = 128  # width of the residual stream
    n_layer: int = 4  # residual blocks
    d_state: int = 16  # N: SSM state size per channel
    d_conv: int = 4  # causal depthwise conv window (steps, the current one included)
    expand: int = 2  # E = expand * d_model channels inside each mixer
    dt_rank: int = 0  # rank of the step-size (delta) projection; 0 = ceil(d_model / 16)
    dt_min: float = 0.001  # initial step sizes are log-uniform in [dt_min, dt_max] ...
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # ... and at least this
    dt_scale: float = 1.0  # dt_proj weights start uniform in +-dt_scale / sqrt(dt_rank)
    conv_bias: bool = True  # bias in the depthwise convs
    bias: bool = False  # biases in in_proj and out_proj
    share_projections: bool = True  # one in_proj/out_proj for both directions (BiMamba-S); false: one pair per direction
    vocab_size: int = tokenizer.PADDED_VOCAB_SIZE  # embedding / LM-head rows
    norm_eps: float = 1e-5  # RMSNorm epsilon
    residual_in_fp32: bool = True  # keep the residual stream in fp32 under bf16 autocast
    scan_backend: str = "auto"  # auto | native | chunked | reference | cuda (lcplm_kernels.selective_scan)
    chunk_size: int = 0  # chunked scan: steps per chunk; 0 = picked from the state size
    tie_embeddings: bool = False  # LM head shares the embedding matrix (LC-PLM unties them)
    initializer_range: float = 0.02  # std of the embedding initialisation

    def __post_init__(self) -> None:
        for key in ("d_model", "n_layer", "d_state", "d_conv", "expand"):
            if getattr(self, key) < 1:
                raise UserError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("dt_rank", "chunk_size"):
            if getattr(self, key) < 0:
                raise UserError(f"model.{key} must be >= 0 (0 = automatic), got {getattr(self, key)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise UserError(f"model: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        if self.norm_eps <= 0:
            raise UserError(f"model.norm_eps must be > 0, got {self.norm_eps}")
        if self.vocab_size < tokenizer.VOCAB_SIZE:
            raise UserError(f"model.vocab_size must be >= {tokenizer.VOCAB_SIZE} (the tokenizer), got {self.vocab_size}")
        if self.scan_backend not in ssm_ops.SCAN_BACKENDS:
            raise UserError(f"model.scan_backend must be one of {list(ssm_ops.SCAN_BACKENDS)}, got {self.scan_backend!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank or math.ceil(self.d_model / 16)


@dataclass
class SequenceLayout:
    """Where each sequence of a batch sits, shared by all layers of one forward.

    rev_index: (B, L) long, the position each token moves to when every sequence is reversed
    within its own extent (an involution; padding stays put), None for a plain flip.
    positions: (L,) long, each token's index within its own sequence (packed batches only).
    cu_seqlens: (n+1,) int32 (packed batches only). valid: (B, L) bool (padded batches only).
    The inference route adds, on first use, the sequences as (batch row, start, end) segments
    and buffers its layers share (:meth:`segments`, :meth:`workspace`).
    """

    rev_index: Optional[Tensor] = None
    positions: Optional[Tensor] = None
    cu_seqlens: Optional[Tensor] = None
    valid: Optional[Tensor] = None
    _segments: Optional[Tensor] = None
    _workspace: dict = field(default_factory=dict)

    @staticmethod
    def build(input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> "SequenceLayout":
        bsz, length = input_ids.shape
        dev = input_ids.device
        t = torch.arange(length, device=dev)
        if lengths is not None and cu_seqlens is not None:
            raise ValueError("give lengths (padded batch) or cu_seqlens (packed batch), not both")
        if cu_seqlens is not None:
            if bsz != 1:
                raise ValueError(f"a packed batch has input_ids of shape (1, T), got {tuple(input_ids.shape)}")
            cu = cu_seqlens.to(device=dev, dtype=torch.long)
            if cu.ndim != 1 or cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != length or bool((cu[1:] < cu[:-1]).any()):
                raise ValueError(f"cu_seqlens must rise from 0 to the packed length {length}, got {cu.tolist()}")
            lens = cu[1:] - cu[:-1]
            starts = cu[:-1].repeat_interleave(lens)  # (T,) start of each token's sequence
            ends = cu[1:].repeat_interleave(lens)
            return SequenceLayout(
                rev_index=(starts + ends - 1 - t)[None], positions=t - starts, cu_seqlens=cu_seqlens.to(dev, torch.int32)
            )
        if lengths is not None:
            lengths = lengths.to(device=dev, dtype=torch.long)
            if lengths.shape != (bsz,) or bool(((lengths < 0) | (lengths > length)).any()):
                raise ValueError(f"lengths must be ({bsz},) values in [0, {length}], got {lengths.tolist()}")
            valid = t[None, :] < lengths[:, None]
            rev = torch.where(valid, lengths[:, None] - 1 - t[None, :], t[None, :])
            return SequenceLayout(rev_index=rev, valid=valid)
        return SequenceLayout()

    def segments(self, batch: int, length: int) -> Tensor:
        """(S, 3) int64 CPU rows (batch row, start, end) of the sequences, for the inference route;
        computed on first use (it reads the lengths back to the host) and kept for every layer."""
        if self._segments is None:
            lengths = None if self.valid is None else self.valid.sum(1)
            self._segments = ssm_ops.sequence_segments(batch, length, lengths, self.cu_seqlens)
        return self._segments

    def workspace(self, name: str, shape: tuple, dtype: torch.dtype, zeroed: bool) -> Tensor:
        """A buffer the inference route reuses in every layer of this forward (zeros if asked:
        where padding rows must stay zero; the kernels never write them)."""
        buf = self._workspace.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = self._workspace[name] = (torch.zeros if zeroed else torch.empty)(shape, dtype=dtype)
        return buf

    def reverse(self, x: Tensor) -> Tensor:
        """x: (B, E, L) with every sequence reversed within its own extent."""
        if self.rev_index is None:
            return x.flip(-1)
        return x.gather(-1, self.rev_index[:, None, :].expand(x.shape[0], x.shape[1], -1))

    def zero_padding(self, h: Tensor) -> Tensor:
        """h: (B, L, d) with padding positions zeroed."""
        return h if self.valid is None else h * self.valid[:, :, None].to(h.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32, returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(x.dtype)


class SSMDirection(nn.Module):
    """One scan direction: depthwise causal conv, x_proj, dt_proj, A = -exp(A_log), D.

    Parameter names and shapes are mamba-ssm ``Mamba``'s, so LC-PLM weights map one to one.
    """

    def __init__(self, cfg: BiMambaConfig):
        super().__init__()
        e, n, r = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.d_state, self.dt_rank = n, r
        self.conv1d = nn.Conv1d(e, e, cfg.d_conv, groups=e, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        # mamba-ssm's initialisation: dt_proj weights small uniform, its bias the inverse
        # softplus of step sizes log-uniform in [dt_min, dt_max]; A = -(1..N) per channel
        std = cfg.dt_scale * r**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(e) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, x: Tensor, layout: SequenceLayout, backend: str, chunk_size: Optional[int]) -> Tensor:
        """x: (B, E, L) -> scan output y (B, E, L), D skip included, not gated."""
        x = ssm_ops.causal_conv1d(x, self.conv1d.weight[:, 0, :], self.conv1d.bias, positions=layout.positions, backend=backend)
        dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, E, L); bias goes in as delta_bias
        return ssm_ops.selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            cu_seqlens=layout.cu_seqlens,
            backend=backend,
            chunk_size=chunk_size,
        )


class BiMambaMixer(nn.Module):
    """in_proj -> forward and per-sequence-reversed scans -> gate -> out_proj.

    Shared (``share_projections``, BiMamba-S): one ``in_proj`` gives x and z for both
    directions, y = (y_fwd + reverse(y_rev)) * silu(z) goes through one ``out_proj``.
    Unshared (the control of LC-PLM's shared-projection ablation, two untied Mamba calls):
    ``in_proj``/``out_proj`` serve the forward direction and ``in_proj_rev``/``out_proj_rev``
    the reverse one, each direction gated by its own z:
    out = out_proj(y_fwd * silu(z)) + out_proj_rev(reverse(y_rev) * silu(z_rev)).
    """

    def __init__(self, cfg: BiMambaConfig):
        super().__init__()
        self.backend = cfg.scan_backend
        self.chunk_size = cfg.chunk_size or None
        self.share_projections = cfg.share_projections
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=cfg.bias)
        self.fwd = SSMDirection(cfg)
        self.rev = SSMDirection(cfg)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
        projections = [(self.in_proj, self.out_proj)]
        if not cfg.share_projections:
            self.in_proj_rev = nn.Linear(cfg.d_model, 2 * cfg.d_inner, bias=cfg.bias)
            self.out_proj_rev = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.bias)
            projections.append((self.in_proj_rev, self.out_proj_rev))
        for in_proj, out_proj in projections:
            # GPT-2 / mamba-ssm: residual-branch output weights scaled by 1/sqrt(n_layer)
            with torch.no_grad():
                out_proj.weight /= math.sqrt(cfg.n_layer)
            for lin in (in_proj, out_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    def forward(self, h: Tensor, layout: SequenceLayout) -> Tensor:
        """h: (B, L, d) -> (B, L, d)."""
        if bimamba_inference.applies(self, h):  # no autograd, CPU: the fused forward-only route
            return bimamba_inference.mixer_forward(self, h, layout)
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # (B, E, L)
        y_fwd = self.fwd(x, layout, self.backend, self.chunk_size)
        if self.share_projections:
            y_rev = layout.reverse(self.rev(layout.reverse(x), layout, self.backend, self.chunk_size))
            y = (y_fwd.float() + y_rev.float()) * F.silu(z.transpose(1, 2).float())
            return self.out_proj(y.transpose(1, 2).to(h.dtype))
        x_rev, z_rev = self.in_proj_rev(h).chunk(2, dim=-1)
        y_rev = layout.reverse(self.rev(layout.reverse(x_rev.transpose(1, 2)), layout, self.backend, self.chunk_size))
        y_fwd = y_fwd.float() * F.silu(z.transpose(1, 2).float())
        y_rev = y_rev.float() * F.silu(z_rev.transpose(1, 2).float())
        return self.out_proj(y_fwd.transpose(1, 2).to(h.dtype)) + self.out_proj_rev(y_rev.transpose(1, 2).to(h.dtype))


class BiMambaBlock(nn.Module):
    """Residual add -> RMSNorm -> BiMamba-S mixer (mamba-ssm's ``Block`` ordering)."""

    def __init__(self, cfg: BiMambaConfig):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = BiMambaMixer(cfg)

    def forward(self, hidden: Tensor, residual: Optional[Tensor], layout: SequenceLayout) -> tuple[Tensor, Tensor]:
        """hidden, residual: (B, L, d) -> (mixer output, updated residual)."""
        if bimamba_inference.block_applies(self, hidden, residual):  # no autograd, CPU
            return bimamba_inference.block_forward(self, hidden, residual, layout)
        residual = hidden if residual is None else hidden + residual
        hidden = self.mixer(self.norm(residual.to(self.norm.weight.dtype)), layout)
        if self.residual_in_fp32:
            residual = residual.float()
        return hidden, residual


class BiMambaEncoder(nn.Module):
    """Embedding -> n_layer BiMamba-S blocks -> final RMSNorm."""

    def __init__(self, cfg: BiMambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embedding.weight, std=cfg.initializer_range)
        self.layers = nn.ModuleList(BiMambaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """input_ids: (B, L) padded with lengths (B,), or (1, T) packed with cu_seqlens -> (B, L, d)."""
        layout = SequenceLayout.build(input_ids, lengths, cu_seqlens)
        hidden, residual = self.embedding(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, layout)
        residual = hidden if residual is None else hidden + residual
        return layout.zero_padding(self.norm_f(residual.to(self.norm_f.weight.dtype)))

    def layer_states(self, input_ids: Tensor, layers: Sequence[int], lengths: Optional[Tensor] = None,
                     cu_seqlens: Optional[Tensor] = None) -> dict[int, Tensor]:
        """``{k: (B, L, d)}`` for each k in ``layers`` (see :meth:`BiMambaLM.encode_layers`); the
        blocks after the highest k are not run."""
        n = len(self.layers)
        bad = [k for k in layers if not 0 <= k <= n]
        if bad:
            raise ValueError(f"layer {bad[0]} outside 0..{n}")
        wanted = set(layers)
        layout = SequenceLayout.build(input_ids, lengths, cu_seqlens)
        hidden, residual = self.embedding(input_ids), None
        out = {0: layout.zero_padding(hidden)} if 0 in wanted else {}
        for k, layer in enumerate(self.layers[: max(wanted)], 1):
            hidden, residual = layer(hidden, residual, layout)
            if k in wanted and k < n:
                out[k] = layout.zero_padding(hidden + residual)  # the residual stream the next block reads
        if n in wanted:
            stream = hidden if residual is None else hidden + residual
            out[n] = layout.zero_padding(self.norm_f(stream.to(self.norm_f.weight.dtype)))
        return out


class BiMambaLM(nn.Module):
    """BiMamba-S encoder + (untied by default) LM head: logits over the token vocabulary."""

    config_class = BiMambaConfig
    block_classes = (BiMambaBlock,)
    # FSDP2 all-gathers in fp32 under bf16 mixed precision: A_log, D and the dt bias feed
    # exp/softplus in the scan, where bf16 rounding (8-bit mantissa) shifts the decay rates;
    # autocast still runs the matmuls in bf16
    fsdp_param_dtype = None
    keyword_inputs = ("lengths", "cu_seqlens")

    def __init__(self, cfg: BiMambaConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = BiMambaEncoder(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def encode(self, input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """Hidden states after the final norm: (B, L, d_model)."""
        return self.backbone(input_ids, lengths=lengths, cu_seqlens=cu_seqlens)

    @property
    def num_layers(self) -> int:
        return self.cfg.n_layer

    def encode_layers(self, input_ids: Tensor, layers: Sequence[int], lengths: Optional[Tensor] = None,
                      cu_seqlens: Optional[Tensor] = None) -> dict[int, Tensor]:
        """Representations numbered as ESM's ``repr_layers``: 0 = the embedding output, k = the
        residual stream after block k, ``num_layers`` = :meth:`encode` (after the final norm).
        ``{k: (B, L, d_model)}``, zero at padding."""
        return self.backbone.layer_states(input_ids, layers, lengths, cu_seqlens)

    def forward(self, input_ids: Tensor, lengths: Optional[Tensor] = None, cu_seqlens: Optional[Tensor] = None) -> Tensor:
        """Logits (B, L, vocab_size)."""
        return self.lm_head(self.encode(input_ids, lengths=lengths, cu_seqlens=cu_seqlens))
