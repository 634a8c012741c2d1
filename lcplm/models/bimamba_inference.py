"""BiMamba-S's inference route on CPU: the mixer's forward without autograd, in three C calls.

Taken by :class:`~lcplm.models.bimamba.BiMambaMixer` when gradients are off (``torch.no_grad``
or ``inference_mode``: embedding, evaluation), the tensors are on the CPU, ``scan_backend`` is
``auto`` or ``native`` with the native library built, the activations are fp32 or bf16 and the
projections are shared. It computes what the training path computes (the tests hold it to the
training path and the sequential reference within fp32 tolerance, alone, padded and packed):

    xz  = in_proj(h)                                  (B, L, 2E): x, z are strided views
    xc  = conv + SiLU of x, both directions           (2, B, L, E)   one C call
    dbl = fwd.x_proj(xc[0]), rev.x_proj(xc[1])        (B, L, R + 2N) each
    y   = (scan_fwd + scan_rev) * silu(z)             (B, L, E)      one C call, dt_proj fused
    out = out_proj(y)

Each block's residual add and RMSNorm run as one C pass too (``block_forward``). The training
path instead transposes to (B, E, L) and back, flips the reverse direction's
inputs and outputs, runs dt_proj as its own matmul and keeps everything autograd needs. Here
the reverse direction runs backwards through each sequence instead, and nothing is kept.
Under bf16 (a bf16 model, or CPU autocast) the projections run in bf16 and the C ops read and
write bf16, computing in fp32.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from lcplm_kernels import selective_scan as ssm_ops

if TYPE_CHECKING:
    from lcplm.models.bimamba import BiMambaBlock, BiMambaMixer, SequenceLayout


_switch = threading.local()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside, mixers take the training path even without gradients (to compare the two)."""
    before = getattr(_switch, "off", False)
    _switch.off = True
    try:
        yield
    finally:
        _switch.off = before


def applies(mixer: "BiMambaMixer", h: Tensor) -> bool:
    """Whether ``mixer(h, ...)`` takes the inference route (see the module docstring)."""
    if getattr(_switch, "off", False) or torch.is_grad_enabled() or h.device.type != "cpu" or mixer.backend not in ("auto", "native"):
        return False
    if not getattr(mixer, "share_projections", True):
        return False
    weight = mixer.in_proj.weight
    act = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    if act not in ssm_ops.cpu.bidirectional.ACTIVATION_DTYPES or h.dtype not in (torch.float32, torch.bfloat16):
        return False
    return ssm_ops.native_scan_unavailable() is None


# per mixer: (the parameters' identity and version, their kernel layout); rebuilt after any
# change to a parameter (an optimizer step bumps its version, .to() gives new storage)
_weights: "weakref.WeakKeyDictionary[BiMambaMixer, tuple]" = weakref.WeakKeyDictionary()
_weights_lock = threading.Lock()


def _kernel_weights(mixer: "BiMambaMixer") -> ssm_ops.MixerWeights:
    fwd, rev = mixer.fwd, mixer.rev
    params = [
        t for d in (fwd, rev) for t in (d.conv1d.weight, d.conv1d.bias, d.dt_proj.weight, d.dt_proj.bias, d.A_log, d.D)
        if t is not None
    ]  # fmt: skip
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in params)
    with _weights_lock:
        cached = _weights.get(mixer)
    if cached is not None and cached[0] == key:
        return cached[1]
    weights = ssm_ops.mixer_weights(
        torch.stack([fwd.conv1d.weight[:, 0], rev.conv1d.weight[:, 0]]),  # (2, E, K)
        None if fwd.conv1d.bias is None else torch.stack([fwd.conv1d.bias, rev.conv1d.bias]),
        torch.stack([fwd.dt_proj.weight, rev.dt_proj.weight]),
        torch.stack([fwd.dt_proj.bias, rev.dt_proj.bias]),
        -torch.exp(torch.stack([fwd.A_log, rev.A_log]).float()),
        torch.stack([fwd.D, rev.D]),
    )
    with _weights_lock:
        _weights[mixer] = (key, weights)
    return weights


def mixer_forward(mixer: "BiMambaMixer", h: Tensor, layout: "SequenceLayout") -> Tensor:
    """The mixer's output (B, L, d) for h (B, L, d), forward only (see the module docstring)."""
    bsz, length, _ = h.shape
    weights = _kernel_weights(mixer)
    xz = mixer.in_proj(h)
    x, z = xz[..., : weights.dim], xz[..., weights.dim :]
    segments = layout.segments(bsz, length)
    act, shape = xz.dtype, (bsz, length, weights.dim)
    padded = int((segments[:, 2] - segments[:, 1]).sum()) < bsz * length  # rows the kernels skip
    # buffers shared by the layers of one forward (the layout lives as long as the forward):
    # fresh tens-of-MB tensors per layer would make the allocator return and re-fault pages
    xc = ssm_ops.bidirectional_conv1d_cpu(x, weights, segments, out=layout.workspace("xc", (2, *shape), act, padded))
    dbl_fwd, dbl_rev = mixer.fwd.x_proj(xc[0]), mixer.rev.x_proj(xc[1])
    y = ssm_ops.bidirectional_scan_cpu(
        xc, dbl_fwd.to(act), dbl_rev.to(act), z, weights, segments,
        out=layout.workspace("y", shape, act, padded),
        scratch=None if act == torch.float32 else layout.workspace("y_fwd", shape, torch.float32, False),
    )  # fmt: skip
    # under autocast out_proj casts y to bf16 again: skip the round trip through h's dtype
    return mixer.out_proj(y if torch.is_autocast_enabled("cpu") else y.to(h.dtype))


def block_applies(block: "BiMambaBlock", hidden: Tensor, residual: Tensor | None) -> bool:
    """Whether ``block`` runs on the route, its residual add and RMSNorm fused as well: the mixer's
    route applies and the residual stream is fp32 (``residual_in_fp32``, or an fp32 model)."""
    return (
        applies(block.mixer, hidden)
        and (residual is None or residual.dtype == torch.float32)
        and (block.residual_in_fp32 or hidden.dtype == torch.float32)
        and block.norm.weight.dtype in ssm_ops.cpu.bidirectional.ACTIVATION_DTYPES
    )


def block_forward(block: "BiMambaBlock", hidden: Tensor, residual: Tensor | None, layout: "SequenceLayout") -> tuple[Tensor, Tensor]:
    """The block's (mixer output, fp32 residual): residual add and RMSNorm in one C pass, then the
    mixer's route. The residual lives in a buffer the next layer updates in place."""
    norm = block.norm
    residual, normed = ssm_ops.add_rms_norm_cpu(
        hidden, residual, norm.weight, norm.eps, norm.weight.dtype,
        res_out=layout.workspace("residual", tuple(hidden.shape), torch.float32, False),
        out=layout.workspace("normed", tuple(hidden.shape), norm.weight.dtype, False),
    )  # fmt: skip
    return mixer_forward(block.mixer, normed, layout), residual
