"""Triton kernels against the fp32 dense reference: forward and all three gradients.

Without a GPU the kernels run in Triton's interpreter on CPU. TRITON_INTERPRET must be set
before the kernel modules define their kernels; this module sets it at import, i.e. while
pytest collects, before any test runs, and lcplm_kernels imports the Triton modules only
on the first Triton call, so the ordering holds in one process and under xdist. The
interpreter's bf16 tl.dot is broken, so CPU runs cover fp32 and fp16; bf16 runs on GPU.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from block_sparse_cases import random_allowed, random_pid  # noqa: E402

from lcplm_kernels.block_sparse_attn import (  # noqa: E402
    block_sparse_attn,
    build_layout,
    naive_block_sparse_attn,
    window_allowed,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32 against fp32: the interpreter's fp32 tl.dot is exact and GPU runs use IEEE fp32 dots
# (TF32 off, as in PyTorch's default), so only the summation order differs
FP32_TOL = dict(atol=1e-5, rtol=1e-4)


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty / empty_like return NaN-filled float tensors, so an unwritten output fails."""

    def poison(alloc):
        def wrapped(*args, **kwargs):
            t = alloc(*args, **kwargs)
            if t.is_floating_point():
                t.fill_(float("nan"))
            return t

        return wrapped

    monkeypatch.setattr(torch, "empty", poison(torch.empty))
    monkeypatch.setattr(torch, "empty_like", poison(torch.empty_like))


def _case(B, H, L, D, P, density, pad_last, split, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    pid = random_pid(B, L, P, gen, pad_last=pad_last, split_protein=split)
    allowed = random_allowed(B, P, density, gen)
    q, k, v, dout = (torch.randn(B, H, L, D, generator=gen) for _ in range(4))
    q, k, v = (x.to(DEVICE, dtype).requires_grad_() for x in (q, k, v))
    return pid.to(DEVICE), allowed.to(DEVICE), q, k, v, dout.to(DEVICE, dtype)


def _fwd_bwd(fn, q, k, v, dout):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


def _check(got, ref, same_dtype_torch, dtype):
    """fp32: close to the reference. fp16/bf16: error at most 2x PyTorch's in the same dtype
    (flash-attention's rule), plus 1e-6 so that exact agreement of both is not a failure."""
    for name, g, r, t in zip(("out", "dq", "dk", "dv"), got, ref, same_dtype_torch):
        assert torch.isfinite(g).all(), f"{name} has NaN/inf (an unwritten element?)"
        if dtype == torch.float32:
            torch.testing.assert_close(g.float(), r, **FP32_TOL, msg=lambda m: f"{name}: {m}")
        else:
            err = (g.float() - r).abs().max().item()
            err_torch = (t.float() - r).abs().max().item()
            assert err <= 2 * err_torch + 1e-6, f"{name}: kernel error {err:.3g} > 2 x PyTorch {dtype} error {err_torch:.3g}"


def _run_and_check(B, H, L, D, P, bm, bn, density, pad_last, split, dtype, seed=0):
    pid, allowed, q, k, v, dout = _case(B, H, L, D, P, density, pad_last, split, dtype, seed)
    layout = build_layout(pid, allowed, bm, bn)
    got = _fwd_bwd(lambda *x: block_sparse_attn(*x, layout, backend="triton"), q, k, v, dout)
    assert got[0].dtype == dtype and all(g.dtype == dtype for g in got[1:])
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = _fwd_bwd(lambda *x: naive_block_sparse_attn(*x, pid, allowed), q32, k32, v32, dout.float())
    same = ref if dtype == torch.float32 else _fwd_bwd(
        lambda *x: naive_block_sparse_attn(*x, pid, allowed, upcast=False), q, k, v, dout
    )
    _check(got, ref, same, dtype)
    return pid, got


CASES = [
    # B, H, L, D, P, block_m, block_n, density, pad_last, split_protein
    pytest.param(1, 1, 1, 32, 1, 64, 64, 1.0, 0, False, id="L1"),
    pytest.param(2, 2, 63, 48, 4, 32, 32, 0.6, 9, False, id="L63-D48-pad"),
    pytest.param(1, 1, 1000, 32, 12, 64, 64, 0.3, 101, True, id="L1000-split-pad"),
    pytest.param(2, 2, 200, 80, 9, 16, 64, 0.4, 0, True, id="L200-D80-16x64"),
    pytest.param(1, 2, 300, 64, 25, 64, 16, 0.15, 30, False, id="L300-64x16"),
    pytest.param(2, 1, 130, 128, 5, 32, 32, 0.5, 7, False, id="L130-D128"),
    pytest.param(1, 1, 96, 32, 3, 32, 32, 0.0, 0, False, id="all-masked"),
]


@pytest.mark.parametrize("B,H,L,D,P,bm,bn,density,pad_last,split", CASES)
def test_triton_fp32_matches_reference(poisoned_empty, B, H, L, D, P, bm, bn, density, pad_last, split):
    _run_and_check(B, H, L, D, P, bm, bn, density, pad_last, split, torch.float32)


@pytest.mark.parametrize(
    "B,H,L,D,P,bm,bn,density,pad_last,split",
    [CASES[1], CASES[3], pytest.param(1, 1, 257, 64, 6, 64, 32, 0.5, 17, True, id="L257-D64-64x32")],
)
def test_triton_fp16_within_twice_torch_error(poisoned_empty, B, H, L, D, P, bm, bn, density, pad_last, split):
    _run_and_check(B, H, L, D, P, bm, bn, density, pad_last, split, torch.float16)


def test_triton_masked_rows_are_zero_with_zero_grads(poisoned_empty):
    P = 3
    pid = torch.repeat_interleave(torch.arange(P), torch.tensor([40, 60, 30]))
    pid = torch.cat([pid, torch.full((20,), -1)])[None].to(DEVICE)
    allowed = torch.ones(1, P, P, dtype=torch.bool, device=DEVICE)
    allowed[0, 1, :] = False
    q, k, v = (torch.randn(1, 2, 150, 32, device=DEVICE, requires_grad=True) for _ in range(3))
    out = block_sparse_attn(q, k, v, build_layout(pid, allowed, 32, 32), backend="triton")
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    dead = (pid[0] == 1) | (pid[0] == -1)
    assert all(bool(torch.isfinite(t).all()) for t in (out, dq, dk, dv))
    assert bool((out[:, :, dead] == 0).all()) and bool((dq[:, :, dead] == 0).all())
    assert bool((dk[:, :, pid[0] == -1] == 0).all()) and bool((dv[:, :, pid[0] == -1] == 0).all())


def test_triton_non_contiguous_inputs(poisoned_empty):
    gen = torch.Generator().manual_seed(4)
    B, L, H, D, P = 2, 100, 2, 32, 5
    pid = random_pid(B, L, P, gen, pad_last=11).to(DEVICE)
    allowed = random_allowed(B, P, 0.5, gen).to(DEVICE)
    qkv = torch.randn(B, L, 3, H, D, generator=gen).to(DEVICE).requires_grad_()
    q, k, v = (x.transpose(1, 2) for x in qkv.unbind(2))
    layout = build_layout(pid, allowed, 32, 32)
    out = block_sparse_attn(q, k, v, layout, backend="triton")
    ref = naive_block_sparse_attn(q, k, v, pid, allowed)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    (g,) = torch.autograd.grad(out.sum(), qkv)
    (g_ref,) = torch.autograd.grad(ref.sum(), qkv)
    torch.testing.assert_close(g, g_ref, **FP32_TOL)


def test_length_bucket_for_autotuning():
    from lcplm_kernels.block_sparse_attn.fwd import l_bucket

    assert [l_bucket(n) for n in (1, 1000, 1024, 1025, 61_000, 61_440)] == [1024, 1024, 1024, 2048, 65536, 65536]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "B,H,L,D,P,bm,bn,density,pad_last,split",
    [
        pytest.param(2, 4, 1000, 64, 12, 64, 64, 0.3, 101, True, id="L1000-D64"),
        pytest.param(1, 4, 4099, 128, 40, 64, 64, 0.2, 0, True, id="L4099-D128"),
        pytest.param(2, 2, 2050, 96, 16, 128, 64, 0.4, 300, False, id="L2050-D96-128x64"),
        pytest.param(1, 2, 777, 32, 7, 128, 128, 1.0, 0, False, id="L777-dense-128x128"),
    ],
)
def test_gpu_all_dtypes_within_twice_torch_error(poisoned_empty, dtype, B, H, L, D, P, bm, bn, density, pad_last, split):
    _run_and_check(B, H, L, D, P, bm, bn, density, pad_last, split, dtype)


@pytest.mark.gpu
def test_gpu_layout_built_on_device_equals_cpu_layout():
    gen = torch.Generator().manual_seed(9)
    pid = random_pid(2, 3000, 20, gen, pad_last=123, split_protein=True)
    allowed = random_allowed(2, 20, 0.2, gen)
    on_gpu = build_layout(pid.cuda(), allowed.cuda())
    moved = build_layout(pid, allowed).to("cuda")
    for a, b in zip(on_gpu.tile_matrix(), moved.tile_matrix()):
        assert torch.equal(a, b)
    assert torch.equal(on_gpu.q_order, moved.q_order)


@pytest.mark.gpu
def test_gpu_genome_scale_bf16():
    # 61,440 tokens, 300 proteins. The forward is held to the 2x rule on sampled query rows,
    # where dense attention in bf16 and fp32 is affordable; the gradients against the fp32
    # block-wise reference, relative to their norm: bf16 keeps 8 mantissa bits (2^-8 = 3.9e-3
    # per rounding), accumulation is fp32, so 1e-2 leaves room for a few roundings, not for a bug
    gen = torch.Generator().manual_seed(0)
    L, P, H, D = 61_440, 300, 2, 64
    pid = random_pid(1, L, P, gen).cuda()
    allowed = window_allowed(P, 2, device="cuda")
    layout = build_layout(pid, allowed)
    q, k, v, dout = (torch.randn(1, H, L, D, generator=gen).cuda().to(torch.bfloat16) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, dq, dk, dv = _fwd_bwd(lambda *x: block_sparse_attn(*x, layout), q, k, v, dout)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = _fwd_bwd(lambda *x: block_sparse_attn(*x, layout, backend="reference"), q32, k32, v32, dout.float())
    for name, got, want in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[1:]):
        assert torch.isfinite(got).all(), name
        rel = ((got.float() - want).norm() / want.norm()).item()
        assert rel < 1e-2, f"{name}: relative error {rel:.3g}"
    rows = torch.randperm(L, generator=gen)[:256].cuda()
    err, err_torch = 0.0, 0.0
    for i in rows.tolist():
        keys = allowed[pid[0, i], pid[0]].nonzero().squeeze(1)
        for dtype in (torch.float32, torch.bfloat16):
            qi, ki, vi = q[0, :, i : i + 1].to(dtype), k[0, :, keys].to(dtype), v[0, :, keys].to(dtype)
            o = torch.softmax((qi @ ki.transpose(-1, -2)) / math.sqrt(D), dim=-1) @ vi
            if dtype == torch.float32:
                exact = o.squeeze(1)
            else:
                err_torch = max(err_torch, (o.squeeze(1).float() - exact).abs().max().item())
        err = max(err, (out[0, :, i].float() - exact).abs().max().item())
    assert err <= 2 * err_torch + 1e-6, f"forward error {err:.3g} > 2 x PyTorch bf16 error {err_torch:.3g}"
