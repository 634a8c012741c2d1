"""The cuda backend of lcplm_kernels.selective_scan: mamba-ssm's selective scan and causal-conv1d
against our references (the BiMamba-S model on CUDA: tests/models/test_bimamba_gpu.py).

Tolerances are mamba-ssm's (tests/ops/test_selective_scan.py): outputs fp32 rtol 6e-4 /
atol 2e-3, bf16 3e-2 / 5e-2; gradients du x2, ddelta rtol x5 / atol x10, dA (rtolw, 5 atolw),
dB / dC as the outputs, dD / dz / ddelta_bias (rtolw, atolw) with rtolw = max(1e-3, rtol),
atolw = max(1e-3, atol). Every test here needs a CUDA GPU (skipped otherwise) and mamba-ssm
(``pip install -e .[gpu]``; skipped with that hint when missing).
"""

from __future__ import annotations

import pytest
import torch

from lcplm_kernels.selective_scan import chunked, interface, naive

pytestmark = pytest.mark.gpu

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _need_mamba():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if interface.mamba_scan_fn() is None:
        pytest.skip(f"mamba-ssm not importable: {interface.GPU_INSTALL_HINT}")


def tolerances(dtype):
    rtol, atol = (6e-4, 2e-3) if dtype == torch.float32 else (3e-2, 5e-2)
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)
    grads = {
        "u": (rtol * 2, atol * 2),
        "delta": (rtol * 5, atol * 10),
        "A": (rtolw, atolw * 5),
        "B": (rtol, atol),
        "C": (rtol, atol),
        "D": (rtolw, atolw),
        "z": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
    }
    return (rtol, atol), grads


def make(batch, dim, nstate, length, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kw = dict(device="cuda", generator=g)
    return {
        "u": torch.randn(batch, dim, length, **kw).to(dtype),
        "delta": (0.5 * torch.rand(batch, dim, length, **kw)).to(dtype),
        "A": -0.5 * torch.rand(dim, nstate, **kw),
        "B": torch.randn(batch, nstate, length, **kw).to(dtype),
        "C": torch.randn(batch, nstate, length, **kw).to(dtype),
        "D": torch.randn(dim, **kw),
        "z": torch.randn(batch, dim, length, **kw).to(dtype),
        "delta_bias": 0.5 * torch.rand(dim, **kw),
    }


def run(fn, x, gout, **kw):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out = fn(**leaves, delta_softplus=True, **kw)
    out.backward(gout)
    return out.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, 63, 128, 1000, 4096])
def test_cuda_kernel_matches_reference(dtype, length):
    _need_mamba()
    x = make(2, 64, 16, length, dtype)
    gout = torch.randn(2, 64, length, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).to(dtype)
    out, grads = run(interface.selective_scan, x, gout, backend="cuda")
    out_ref, grads_ref = run(naive.selective_scan_ref, x, gout)
    (rtol, atol), gtol = tolerances(dtype)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    for k in NAMES:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=gtol[k][0], atol=gtol[k][1], msg=lambda m: f"d{k}: {m}")


def test_chunked_scan_on_gpu_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = make(2, 32, 8, 777, torch.float32)
    gout = torch.randn(2, 32, 777, device="cuda")
    out, grads = run(chunked.selective_scan_chunked, x, gout, chunk_size=64)
    out_ref, grads_ref = run(naive.selective_scan_ref, x, gout)
    (rtol, atol), gtol = tolerances(torch.float32)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    for k in NAMES:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=gtol[k][0], atol=gtol[k][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_batches_through_the_kernel(dtype):
    _need_mamba()
    lengths = [5, 1, 300, 63]
    x = make(1, 32, 16, sum(lengths), dtype)
    cu = torch.tensor([0, 5, 6, 306, 369], dtype=torch.int32, device="cuda")
    gout = torch.randn(1, 32, sum(lengths), device="cuda").to(dtype)
    out, grads = run(interface.selective_scan, x, gout, cu_seqlens=cu, backend="cuda")
    out_ref, grads_ref = run(naive.selective_scan_ref, x, gout, cu_seqlens=cu)
    (rtol, atol), gtol = tolerances(dtype)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    for k in NAMES:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=gtol[k][0], atol=gtol[k][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_kernel_matches_torch(dtype):
    if not torch.cuda.is_available() or interface.causal_conv1d_fn() is None:
        pytest.skip("needs a CUDA GPU and causal-conv1d")
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(2, 64, 257, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(64, 4, device="cuda", generator=g, requires_grad=True)
    b = torch.randn(64, device="cuda", generator=g, requires_grad=True)
    out = interface.causal_conv1d(x, w, b, backend="cuda")
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), gout)
    ref = interface.causal_conv1d(x, w, b, backend="chunked")  # the PyTorch path
    grads_ref = torch.autograd.grad(ref, (x, w, b), gout)
    (rtol, atol), _ = tolerances(dtype)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=rtol * 2, atol=atol * 2)
