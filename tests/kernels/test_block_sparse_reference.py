"""The block-wise PyTorch path (the CPU backend) against dense masked attention in fp32."""

from __future__ import annotations

import math

import pytest
import torch
from block_sparse_cases import random_allowed, random_pid

from lcplm_kernels.block_sparse_attn import (
    block_sparse_attn,
    blockwise_block_sparse_attn,
    build_layout,
    naive_block_sparse_attn,
    window_allowed,
)
from lcplm_kernels.block_sparse_attn import naive as naive_mod

# fp32 vs fp32: the two paths only sum in different orders over at most ~1000 keys
FP32_TOL = dict(atol=1e-5, rtol=1e-4)

CASES = [
    # B, H, L, D, P, block_m, block_n, density, pad_last, split_protein
    (1, 1, 1, 32, 1, 64, 64, 1.0, 0, False),
    (2, 3, 63, 48, 4, 32, 32, 0.6, 9, False),
    (1, 2, 1000, 32, 12, 64, 64, 0.3, 101, True),
    (3, 2, 333, 80, 7, 16, 64, 0.5, 0, True),
    (2, 1, 200, 64, 20, 64, 16, 0.15, 30, False),
    (1, 1, 96, 16, 3, 32, 32, 0.0, 0, False),
]


def _inputs(B, H, L, D, P, density, pad_last, split, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    pid = random_pid(B, L, P, gen, pad_last=pad_last, split_protein=split)
    allowed = random_allowed(B, P, density, gen)
    q, k, v = (torch.randn(B, H, L, D, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    dout = torch.randn(B, H, L, D, generator=gen).to(dtype)
    return pid, allowed, q, k, v, dout


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


@pytest.mark.parametrize("chunk_elems", [1 << 22, 1 << 12])
@pytest.mark.parametrize("B,H,L,D,P,bm,bn,density,pad_last,split", CASES)
def test_blockwise_matches_dense(monkeypatch, chunk_elems, B, H, L, D, P, bm, bn, density, pad_last, split):
    # a tiny chunk budget forces one query row per chunk and many chunks
    monkeypatch.setattr(naive_mod, "_CHUNK_ELEMS", chunk_elems)
    pid, allowed, q, k, v, dout = _inputs(B, H, L, D, P, density, pad_last, split, seed=L + D)
    layout = build_layout(pid, allowed, bm, bn)
    out = blockwise_block_sparse_attn(q, k, v, layout)
    ref = naive_block_sparse_attn(q, k, v, pid, allowed)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    for got, want in zip(_grads(out, (q, k, v), dout), _grads(ref, (q, k, v), dout)):
        torch.testing.assert_close(got, want, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_blockwise_low_precision_inputs_are_computed_in_fp32(dtype):
    pid, allowed, q, k, v, dout = _inputs(2, 2, 300, 32, 6, 0.5, 20, True, seed=1, dtype=dtype)
    layout = build_layout(pid, allowed, 32, 32)
    out = blockwise_block_sparse_attn(q, k, v, layout)
    assert out.dtype == dtype
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = naive_block_sparse_attn(q32, k32, v32, pid, allowed)
    # same inputs, fp32 arithmetic on both sides: only the final rounding to dtype differs
    torch.testing.assert_close(out, ref.to(dtype))
    for got, want in zip(_grads(out, (q, k, v), dout), _grads(ref, (q32, k32, v32), dout.float())):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want.to(dtype))


def test_masked_rows_give_zeros_and_zero_grads():
    B, H, L, D, P = 1, 2, 150, 32, 3
    pid = torch.repeat_interleave(torch.arange(P), torch.tensor([40, 60, 30]))
    pid = torch.cat([pid, torch.full((20,), -1)])[None]
    allowed = torch.ones(1, P, P, dtype=torch.bool)
    allowed[0, 1, :] = False  # protein 1 attends nothing, but is still attended by others
    q, k, v = (torch.randn(B, H, L, D, requires_grad=True) for _ in range(3))
    layout = build_layout(pid, allowed, 32, 32)
    for backend in ("auto", "reference"):
        out = block_sparse_attn(q, k, v, layout, backend=backend)
        dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
        dead = (pid[0] == 1) | (pid[0] == -1)
        assert torch.isfinite(out).all()
        assert bool((out[:, :, dead] == 0).all()) and bool((out[:, :, ~dead] != 0).any(-1).all())
        assert bool((dq[:, :, dead] == 0).all())
        padding = pid[0] == -1
        assert bool((dk[:, :, padding] == 0).all()) and bool((dv[:, :, padding] == 0).all())
        assert bool((dv[:, :, pid[0] == 1] != 0).any())


def test_scale_and_auto_backend_on_cpu():
    pid, allowed, q, k, v, _ = _inputs(1, 2, 130, 32, 5, 0.5, 0, False, seed=2)
    layout = build_layout(pid, allowed, 64, 64)
    out = block_sparse_attn(q, k, v, layout, scale=0.3)
    torch.testing.assert_close(out, naive_block_sparse_attn(q, k, v, pid, allowed, scale=0.3), **FP32_TOL)
    torch.testing.assert_close(
        block_sparse_attn(q, k, v, layout), naive_block_sparse_attn(q, k, v, pid, allowed, scale=1 / math.sqrt(32)), **FP32_TOL
    )


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(4)
    B, L, H, D, P = 2, 170, 3, 32, 6
    pid = random_pid(B, L, P, gen, pad_last=11)
    allowed = random_allowed(B, P, 0.5, gen)
    # (B, L, H, D) projections viewed as (B, H, L, D), the way a model produces them
    qkv = torch.randn(B, L, 3, H, D, generator=gen, requires_grad=True)
    q, k, v = qkv.unbind(2)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    out = block_sparse_attn(q, k, v, build_layout(pid, allowed, 32, 32))
    ref = naive_block_sparse_attn(q, k, v, pid, allowed)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    (g,) = torch.autograd.grad(out.sum(), qkv)
    (g_ref,) = torch.autograd.grad(ref.sum(), qkv)
    torch.testing.assert_close(g, g_ref, **FP32_TOL)


def test_bad_calls_are_one_clear_error():
    pid = torch.zeros(1, 10, dtype=torch.long)
    layout = build_layout(pid, window_allowed(1, 0), 16, 16)
    q = torch.randn(1, 1, 10, 32)
    with pytest.raises(ValueError, match=r"layout was built for \(B, L\) = \(1, 10\), q has \(1, 11\)"):
        block_sparse_attn(*(torch.randn(1, 1, 11, 32) for _ in range(3)), layout)
    with pytest.raises(ValueError, match="one shape"):
        block_sparse_attn(q, q, torch.randn(1, 1, 10, 16), layout)
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        block_sparse_attn(q.double(), q.double(), q.double(), layout)
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_attn(q, q, q, layout, backend="flash")
    with pytest.raises(ValueError, match="head dims 16..128"):
        block_sparse_attn(*(torch.randn(1, 1, 10, 8) for _ in range(3)), layout, backend="triton")


@pytest.mark.slow
def test_forward_backward_at_61k_tokens_spot_checked():
    # the CPU training path at genome scale: 61,440 tokens, 300 proteins, genome-order window
    gen = torch.Generator().manual_seed(0)
    L, P, H, D = 61_440, 300, 1, 32
    pid = random_pid(1, L, P, gen)
    allowed = window_allowed(P, 2)
    layout = build_layout(pid, allowed)
    q, k, v = (torch.randn(1, H, L, D, generator=gen, requires_grad=True) for _ in range(3))
    out = block_sparse_attn(q, k, v, layout)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(bool(torch.isfinite(t).all()) for t in (out, dq, dk, dv))
    # exact dense attention for a few query rows, each over its allowed keys only
    for i in (0, 1, 12_345, 30_000, L - 1):
        keys = allowed[pid[0, i], pid[0]].nonzero().squeeze(1)
        s = (q[0, 0, i] @ k[0, 0, keys].T) / math.sqrt(D)
        want = torch.softmax(s, -1) @ v[0, 0, keys]
        torch.testing.assert_close(out[0, 0, i], want, **FP32_TOL)
