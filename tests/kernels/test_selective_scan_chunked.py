"""The chunked PyTorch selective scan (lcplm_kernels.selective_scan.chunked) against the sequential reference.

Tolerances are mamba-ssm's fp32 ones (tests/ops/test_selective_scan.py): outputs rtol 6e-4,
atol 2e-3; du x2, ddelta rtol x5 / atol x10, dA (rtol 1e-3, atol 1e-2), dB and dC as the
outputs, dD / dz / ddelta_bias (1e-3, 2e-3). Both sides compute in fp32, so the observed
differences are ~1e-5; the stricter fp64-oracle test bounds the chunked scan's error by
twice the reference's own fp32 error.
"""

from __future__ import annotations

import pytest
import torch

from lcplm_kernels.selective_scan import chunked, naive

from scan_cases import (  # noqa: F401
    ATOL, ATOLW, GRAD_TOL, NAMES, RTOL, RTOLW, assert_close_all, assert_error_at_most_twice_the_references, make_inputs, run,
)


@pytest.mark.parametrize(
    "batch,dim,nstate,length",
    [(2, 4, 8, 1), (2, 8, 16, 63), (1, 4, 4, 1000), (3, 5, 3, 130)],
)
@pytest.mark.parametrize("softplus", [True, False])
def test_chunked_matches_reference(batch, dim, nstate, length, softplus):
    x = make_inputs(batch, dim, nstate, length)
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(batch, dim, length, generator=g)
    glast = torch.randn(batch, dim, nstate, generator=g)
    ref = run(naive.selective_scan_ref, x, gout, glast, delta_softplus=softplus)
    got = run(chunked.selective_scan_chunked, x, gout, glast, delta_softplus=softplus)
    assert_close_all(got, ref)


@pytest.mark.parametrize(
    "has_D,has_z,has_bias", [(False, False, False), (True, False, False), (False, True, False), (False, False, True)]
)
def test_optional_inputs(has_D, has_z, has_bias):
    x = make_inputs(2, 6, 5, 63, has_D=has_D, has_z=has_z, has_bias=has_bias)
    gout = torch.randn(2, 6, 63, generator=torch.Generator().manual_seed(2))
    assert_close_all(
        run(chunked.selective_scan_chunked, x, gout, delta_softplus=True),
        run(naive.selective_scan_ref, x, gout, delta_softplus=True),
    )


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 16, 64, 1000])
def test_chunk_sizes_and_sub_chunks(chunk_size):
    # every chunk size hits a different mix of full chunks, padded tails and sub-chunk counts
    x = make_inputs(1, 3, 4, 100, seed=3)
    gout = torch.randn(1, 3, 100, generator=torch.Generator().manual_seed(3))
    assert_close_all(
        run(chunked.selective_scan_chunked, x, gout, delta_softplus=True, chunk_size=chunk_size),
        run(naive.selective_scan_ref, x, gout, delta_softplus=True),
    )


def test_error_against_fp64_oracle_is_at_most_twice_the_references():
    """Flash-attention's rule: the fast path's error vs an fp64 oracle <= 2x the fp32 reference's."""
    assert_error_at_most_twice_the_references(chunked.selective_scan_chunked, naive.selective_scan_ref)


def test_large_decays_stay_finite_and_exact():
    """delta * A of -1000 per step: a cumsum-of-exponentials scan would overflow to inf/NaN."""
    x = make_inputs(1, 4, 6, 200, seed=5)
    x["delta"] = 5.0 + 15.0 * torch.rand(1, 4, 200, generator=torch.Generator().manual_seed(5))
    x["A"] = -torch.linspace(1.0, 60.0, 24).view(4, 6)
    gout = torch.randn(1, 4, 200, generator=torch.Generator().manual_seed(6))
    got = run(chunked.selective_scan_chunked, x, gout, delta_softplus=False)
    ref = run(naive.selective_scan_ref, x, gout, delta_softplus=False)
    assert torch.isfinite(got[0]).all() and all(torch.isfinite(v).all() for v in got[2].values())
    assert_close_all(got, ref)


def test_tiny_decays_carry_state_across_many_chunks():
    """delta ~ 0: the state carries through every chunk boundary almost unchanged."""
    x = make_inputs(1, 3, 4, 400, seed=7)
    x["delta"] = torch.full((1, 3, 400), 1e-4)
    gout = torch.randn(1, 3, 400, generator=torch.Generator().manual_seed(7))
    assert_close_all(
        run(chunked.selective_scan_chunked, x, gout, chunk_size=16),
        run(naive.selective_scan_ref, x, gout),
    )


def _packed(lengths, dim=4, nstate=5, seed=8):
    total = sum(lengths)
    x = make_inputs(1, dim, nstate, total, seed=seed)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    return x, cu


@pytest.mark.parametrize("fn", [naive.selective_scan_ref, chunked.selective_scan_chunked])
def test_segment_resets_equal_separate_scans(fn):
    lengths = [1, 63, 0, 17, 100]
    x, cu = _packed(lengths)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = fn(**leaves, delta_softplus=True, cu_seqlens=cu)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * gout).sum().backward()
    dA_total = torch.zeros_like(x["A"])
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        s, e = int(cu[i]), int(cu[i + 1])
        seg = {k: (v[..., s:e] if v.dim() == 3 else v).clone().requires_grad_() for k, v in x.items()}
        o = naive.selective_scan_ref(**seg, delta_softplus=True)
        (o * gout[..., s:e]).sum().backward()
        torch.testing.assert_close(out[..., s:e].detach(), o.detach(), rtol=RTOL, atol=ATOL)
        for k in ("u", "delta", "B", "C", "z"):
            torch.testing.assert_close(leaves[k].grad[..., s:e], seg[k].grad, rtol=GRAD_TOL[k][0], atol=GRAD_TOL[k][1])
        dA_total += seg["A"].grad
    torch.testing.assert_close(leaves["A"].grad, dA_total, rtol=RTOLW, atol=ATOLW * 5)


def test_segment_resets_chunked_vs_reference_with_small_chunks():
    x, cu = _packed([5, 40, 1, 33, 21])
    gout = torch.randn(1, 4, 100, generator=torch.Generator().manual_seed(10))
    for chunk in (3, 8, 32):
        got = run(chunked.selective_scan_chunked, x, gout, cu_seqlens=cu, chunk_size=chunk)
        ref = run(naive.selective_scan_ref, x, gout, cu_seqlens=cu)
        assert_close_all(got, ref)


def test_bad_cu_seqlens_is_rejected():
    x, _ = _packed([3, 4])
    with pytest.raises(ValueError, match="cu_seqlens"):
        chunked.selective_scan_chunked(**x, cu_seqlens=torch.tensor([0, 3, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="batch"):
        y = make_inputs(2, 4, 5, 7)
        chunked.selective_scan_chunked(**y, cu_seqlens=torch.tensor([0, 7], dtype=torch.int32))


def test_unwritten_buffers_would_show(monkeypatch):
    """torch.empty poisoned with NaN: any element the scan forgets to write makes the test fail."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    x = make_inputs(2, 3, 4, 77, seed=11)
    out, last, grads = run(chunked.selective_scan_chunked, x, delta_softplus=True, chunk_size=10)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_saved_memory_is_inputs_plus_chunk_states():
    """The autograd graph keeps the inputs and one (B, D, N) state per chunk, nothing (B, D, L, N)."""
    batch, dim, nstate, length, chunk = 2, 16, 16, 2048, 128
    x = {k: v.requires_grad_() for k, v in make_inputs(batch, dim, nstate, length).items()}
    saved = {}

    def pack(t):
        # count whole storages: a small view can keep a large buffer alive
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked.selective_scan_chunked(**x, delta_softplus=True, chunk_size=chunk)
    inputs = sum(v.numel() * v.element_size() for v in x.values())
    states = (length // chunk) * batch * dim * nstate * 4
    assert sum(saved.values()) <= inputs + states
    assert max(saved.values()) < batch * dim * nstate * length * 4 / 8  # far below one full state tensor


def test_bf16_inputs_compute_in_fp32():
    x = make_inputs(2, 4, 8, 50, dtype=torch.bfloat16)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = chunked.selective_scan_chunked(**leaves, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(leaves[k].grad.dtype == torch.bfloat16 for k in leaves)
    ref = naive.selective_scan_ref(**x, delta_softplus=True)
    torch.testing.assert_close(out.float(), ref.float(), rtol=3e-2, atol=5e-2)


def test_empty_sequence():
    x = make_inputs(2, 3, 4, 0)
    out, last = chunked.selective_scan_chunked(**x, return_last_state=True)
    assert out.shape == (2, 3, 0) and last.shape == (2, 3, 4) and not last.any()
