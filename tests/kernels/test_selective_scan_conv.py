"""Causal depthwise conv + SiLU (lcplm_kernels.selective_scan.conv): the PyTorch op against
torch's conv1d and gradcheck, packed-sequence boundaries, and the C op against the PyTorch one
(forward and every gradient, 1e-5: same fp32 arithmetic, different summation order). The C
tests skip without a compiler, unless LCPLM_REQUIRE_NATIVE_SCAN=1."""

from __future__ import annotations

import os

import pytest
import torch

from lcplm_kernels.selective_scan import conv, interface
from lcplm_kernels.selective_scan.conv import causal_conv1d_cpu
from lcplm_kernels.selective_scan.cpu import build


@pytest.fixture
def kernel():
    reason = build.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("LCPLM_REQUIRE_NATIVE_SCAN") == "1":
        pytest.fail(f"the native CPU conv is required here but unavailable: {reason}")
    pytest.skip(f"native CPU conv unavailable: {reason}")


needs_kernel = pytest.mark.usefixtures("kernel")


def test_causal_conv_matches_conv1d_and_respects_boundaries():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 6, 37, generator=g)
    w = torch.randn(6, 4, generator=g)
    b = torch.randn(6, generator=g)
    expect = torch.nn.functional.silu(
        torch.nn.functional.conv1d(x, w[:, None, :], b, padding=3, groups=6)[..., :37]
    )
    torch.testing.assert_close(interface.causal_conv1d(x, w, b), expect, rtol=1e-5, atol=1e-6)
    # packed: [0, 5) [5, 6) [6, 37) in one row; each segment equals its own conv
    positions = torch.cat([torch.arange(5), torch.arange(1), torch.arange(31)])
    packed = interface.causal_conv1d(x[:1], w, b, positions=positions)
    for s, e in ((0, 5), (5, 6), (6, 37)):
        alone = interface.causal_conv1d(x[:1, :, s:e], w, b)
        # same arithmetic; only SiLU's vectorised vs scalar tail loop may differ by an ulp
        torch.testing.assert_close(packed[..., s:e], alone, rtol=1e-6, atol=1e-7)
    assert interface.causal_conv1d(x[:, :, :2], w, b).shape == (2, 6, 2)


@pytest.mark.parametrize("silu", [True, False])
def test_causal_conv_gradients(silu):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 5, 23, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    positions = torch.cat([torch.arange(2), torch.arange(9), torch.arange(12)])
    for pos in (None, positions):
        assert torch.autograd.gradcheck(lambda *t: interface.causal_conv1d(*t, positions=pos, silu=silu), (x, w, b))
    short = x[:, :, :2].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: interface.causal_conv1d(*t, silu=silu), (short, w, b))


def _conv_case(batch, dim, length, k, pos_kind, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=g)
    w = torch.randn(dim, k, generator=g)
    b = torch.randn(dim, generator=g) if bias else None
    pos = None
    if pos_kind == "L":  # packed: segments [0, 7), [7, L)
        pos = torch.cat([torch.arange(min(7, length)), torch.arange(max(0, length - 7))])
    elif pos_kind == "BL":
        pos = torch.stack([torch.arange(length)] + [torch.cat([torch.arange(min(5, length)), torch.arange(max(0, length - 5))])] * (batch - 1))
    return x, w, b, pos


def _conv_run(fn, x, w, b, pos, silu, gout):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    out = fn(*leaves, pos, silu)
    (out * gout).sum().backward()
    return [out.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize(
    "batch,dim,length,k,pos_kind,bias",
    [(2, 5, 63, 4, None, True), (1, 3, 1, 4, None, True), (2, 4, 30, 3, "L", False), (3, 4, 30, 4, "BL", True),
     (1, 6, 3, 5, None, True), (1, 6, 40, 2, "L", True), (2, 3, 1000, 4, "L", True)],
)
@pytest.mark.parametrize("silu", [True, False])
@needs_kernel
def test_causal_conv_matches_pytorch(batch, dim, length, k, pos_kind, bias, silu):
    x, w, b, pos = _conv_case(batch, dim, length, k, pos_kind, bias)
    gout = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))
    got = _conv_run(causal_conv1d_cpu, x, w, b, pos, silu, gout)
    ref = _conv_run(conv.causal_conv1d_torch, x, w, b, pos, silu, gout)
    for name, p, q in zip(("out", "dx", "dw", "dbias"), got, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@needs_kernel
def test_causal_conv_dispatch_threads_and_unwritten_buffers(monkeypatch):
    x, w, b, pos = _conv_case(2, 7, 50, 4, "BL", True, seed=3)
    gout = torch.randn(2, 7, 50, generator=torch.Generator().manual_seed(4))
    ref = _conv_run(conv.causal_conv1d_torch, x, w, b, pos, True, gout)
    # interface.causal_conv1d: auto and native take the C conv on CPU, chunked keeps PyTorch's
    calls = []
    monkeypatch.setattr(interface, "causal_conv1d_cpu", lambda *a, **k: calls.append(1) or causal_conv1d_cpu(*a, **k))
    for backend in ("auto", "native", "chunked"):
        out = interface.causal_conv1d(x, w, b, positions=pos, backend=backend)
        torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-5)
    assert len(calls) == 2
    monkeypatch.undo()
    before = torch.get_num_threads()
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            got = _conv_run(causal_conv1d_cpu, x, w, b, pos, True, gout)
            for p, q in zip(got, ref):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="positions"):
        causal_conv1d_cpu(x, w, b, torch.arange(49))
