"""The forward-only, channels-last, bidirectional conv and scan of BiMamba-S's inference route
(lcplm_kernels.selective_scan.cpu.bidirectional) against their PyTorch references
(naive.bidirectional_conv1d_ref / bidirectional_scan_ref, built on conv1d and the sequential
scan with each segment flipped for the reverse direction).

fp32 tolerances: the references compute in fp32 too, so differences are summation order and the
kernel's polynomial exp/softplus (2e-7 relative): 1e-5 relative, 2e-5 absolute on outputs of
order 1-100. bf16: both sides read the same bf16 inputs and round once at the end, so one bf16
ulp (2^-8 relative). The kernels compile with the scan's library; without a compiler these
tests skip, unless LCPLM_REQUIRE_NATIVE_SCAN=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from lcplm_kernels.selective_scan import (
    add_rms_norm_cpu,
    add_rms_norm_ref,
    bidirectional_conv1d_cpu,
    bidirectional_conv1d_ref,
    bidirectional_scan_cpu,
    bidirectional_scan_ref,
    mixer_weights,
    sequence_segments,
)
from lcplm_kernels.selective_scan.cpu import build

FP32 = dict(rtol=1e-5, atol=2e-5)
BF16 = dict(rtol=2**-7, atol=2**-7)


@pytest.fixture(autouse=True)
def kernel(request):
    if "no_kernel_needed" in request.keywords:
        return
    reason = build.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("LCPLM_REQUIRE_NATIVE_SCAN") == "1":
        pytest.fail(f"the native CPU kernels are required here but unavailable: {reason}")
    pytest.skip(f"native CPU kernels unavailable: {reason}")


def conv_fast(x, w, b, seg):
    """The C conv with raw (2, E, K) weights (other weights: any valid stand-ins)."""
    dim = w.shape[1]
    weights = mixer_weights(w, b, torch.zeros(2, dim, 1), None, -torch.ones(2, dim, 1), None)
    return bidirectional_conv1d_cpu(x, weights, seg)


def scan_fast(xc, dbl_fwd, dbl_rev, dt_weight, dt_bias, A, D, z, segments):
    """The C scan with the reference's argument list."""
    weights = mixer_weights(torch.zeros(2, xc.shape[3], 1), None, dt_weight, dt_bias, A, D)
    return bidirectional_scan_cpu(xc, dbl_fwd, dbl_rev, z, weights, segments)


def segments_of(kind: str, batch: int, length: int) -> tuple[int, torch.Tensor]:
    """(batch rows, segments) for a whole-row, padded or packed layout."""
    if kind == "rows":
        return batch, sequence_segments(batch, length)
    if kind == "padded":  # an empty row, a 1-token row, a full row
        lens = torch.tensor([length, 0, 1, length // 2 + 1][:batch])
        return batch, sequence_segments(batch, length, lengths=lens)
    cuts = sorted({0, 1, 2, length // 3, length // 3 + 1, length - 1, length})  # 1-token sequences
    return 1, sequence_segments(1, length, cu_seqlens=torch.tensor(cuts, dtype=torch.int32))


def scan_case(batch, length, dim, nstate, rank, dtype, seed=0, has_D=True, has_bias=True):
    g = torch.Generator().manual_seed(seed)
    xz = torch.randn(batch, length, 2 * dim, generator=g).to(dtype)
    xc = torch.nn.functional.silu(torch.randn(2, batch, length, dim, generator=g)).to(dtype)
    w = torch.randn(2, rank + 2 * nstate, dim, generator=g) / dim**0.5
    dbl_f, dbl_r = (torch.einsum("ble,ke->blk", xc[d].float(), w[d]).to(dtype) for d in (0, 1))
    return dict(
        xc=xc, dbl_fwd=dbl_f, dbl_rev=dbl_r,
        dt_weight=torch.randn(2, dim, rank, generator=g) / rank**0.5,
        dt_bias=(torch.rand(2, dim, generator=g) * 4 - 5) if has_bias else None,  # softplus ~ 0.007-0.3
        A=-torch.exp(torch.randn(2, dim, nstate, generator=g)),
        D=torch.randn(2, dim, generator=g) if has_D else None,
        z=xz[..., dim:],  # a strided view, as the model passes it
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["rows", "padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width,dim", [(4, 40), (3, 16), (2, 7), (5, 33)])
def test_conv_matches_reference(kind, dtype, width, dim):
    batch, seg = segments_of(kind, 4, 37)
    g = torch.Generator().manual_seed(width)
    xz = torch.randn(batch, 37, 2 * dim, generator=g).to(dtype)
    x = xz[..., :dim]  # in_proj's x half, read in place
    w, b = torch.randn(2, dim, width, generator=g), torch.randn(2, dim, generator=g)
    with torch.no_grad():
        got = conv_fast(x, w, b, seg)
        ref = bidirectional_conv1d_ref(x, w, b, seg)
        no_bias = conv_fast(x, w, None, seg)
    assert got.dtype == dtype and got.shape == (2, batch, 37, dim)
    torch.testing.assert_close(got.float(), ref.float(), **(FP32 if dtype == torch.float32 else BF16))
    torch.testing.assert_close(no_bias.float(), bidirectional_conv1d_ref(x, w, None, seg).float(), **(FP32 if dtype == torch.float32 else BF16))


@pytest.mark.parametrize("kind", ["rows", "padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "dim,nstate,rank", [(64, 16, 4), (40, 16, 20), (24, 8, 1), (17, 5, 3)]  # N = 16 specialised, others generic; partial blocks
)
def test_scan_matches_reference(kind, dtype, dim, nstate, rank):
    batch, seg = segments_of(kind, 4, 150)  # longer than one 64-step chunk of the kernel
    x = scan_case(batch, 150, dim, nstate, rank, dtype)
    with torch.no_grad():
        got = scan_fast(**x, segments=seg)
        ref = bidirectional_scan_ref(**x, segments=seg)
    assert got.dtype == dtype and got.shape == (batch, 150, dim)
    torch.testing.assert_close(got.float(), ref.float(), **(FP32 if dtype == torch.float32 else BF16))


@pytest.mark.parametrize("has_D,has_bias", [(False, True), (True, False), (False, False)])
def test_scan_optional_inputs(has_D, has_bias):
    _, seg = segments_of("rows", 2, 70)
    x = scan_case(2, 70, 32, 16, 4, torch.float32, has_D=has_D, has_bias=has_bias)
    with torch.no_grad():
        torch.testing.assert_close(scan_fast(**x, segments=seg), bidirectional_scan_ref(**x, segments=seg), **FP32)


def test_large_and_tiny_decays():
    """dt A from -1e3 (state forgotten each step; no overflow anywhere) to ~-1e-5 (carried across
    many 64-step chunks almost unchanged)."""
    _, seg = segments_of("rows", 1, 300)
    for bias, a_scale in ((8.0, 200.0), (-12.0, 1.0)):
        x = scan_case(1, 300, 16, 16, 2, torch.float32, seed=3)
        x["dt_bias"] = torch.full((2, 16), bias)
        x["A"] = x["A"] * a_scale
        with torch.no_grad():
            got = scan_fast(**x, segments=seg)
            ref = bidirectional_scan_ref(**x, segments=seg)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, **FP32)


def test_rows_outside_segments_are_zero_and_every_covered_element_written(monkeypatch):
    """Outputs allocated with torch.empty poisoned by NaN: a covered element the kernels forget
    shows as NaN; rows outside every segment (padding) must be exactly zero."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    batch, seg = segments_of("padded", 4, 90)
    x = scan_case(batch, 90, 40, 16, 4, torch.float32, seed=5)
    w = torch.randn(2, 40, 4)
    with torch.no_grad():
        xc = conv_fast(x["z"], w, None, seg)  # any (B, L, E) input
        out = scan_fast(**x, segments=seg)
    covered = torch.zeros(batch, 90, dtype=torch.bool)
    for b, s, e in seg.tolist():
        covered[b, s:e] = True
    for t in (xc[0], xc[1], out):
        assert torch.isfinite(t[covered]).all() and not t[~covered].any()
    # whole rows: torch.empty outputs, every element written
    _, seg = segments_of("rows", 2, 90)
    x = scan_case(2, 90, 40, 16, 4, torch.float32, seed=6)
    with torch.no_grad():
        assert torch.isfinite(scan_fast(**x, segments=seg)).all()
        assert torch.isfinite(conv_fast(x["z"], w, None, seg)).all()


@pytest.mark.parametrize("threads", [2, 3])
def test_thread_counts_agree_bitwise(threads):
    """Channel blocks are independent: any split among threads gives the same bits (E = 72: five
    blocks, the last partial; more threads than blocks for the tiny case)."""
    before = torch.get_num_threads()
    batch, seg = segments_of("packed", 1, 130)
    x = scan_case(batch, 130, 72, 16, 4, torch.float32, seed=7)
    w = torch.randn(2, 72, 4)
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            one = (scan_fast(**x, segments=seg), conv_fast(x["z"], w, None, seg))
            torch.set_num_threads(threads)
            many = (scan_fast(**x, segments=seg), conv_fast(x["z"], w, None, seg))
            tiny = scan_case(1, 5, 8, 16, 1, torch.float32)
            tiny_out = scan_fast(**tiny, segments=sequence_segments(1, 5))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        assert torch.equal(a, b)
    torch.testing.assert_close(tiny_out, bidirectional_scan_ref(**tiny, segments=sequence_segments(1, 5)), **FP32)


def test_torch_threads_and_own_pool_agree_bitwise(monkeypatch):
    """The ops run on PyTorch's OpenMP threads when the library shares PyTorch's libgomp, else on a
    pool of their own: the same split of the blocks, the same bits."""
    batch, seg = segments_of("padded", 4, 70)
    x = scan_case(batch, 70, 72, 16, 4, torch.float32, seed=10)
    w = torch.randn(2, 72, 4)
    runs = []
    for team in (True, False):
        monkeypatch.setattr(build, "uses_torch_threads", lambda team=team: team)
        with torch.no_grad():
            runs.append((scan_fast(**x, segments=seg), conv_fast(x["z"], w, None, seg)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["xc", "dt", "B", "C", "z", "dt_bias", "D", "A", "conv_x"])
def test_nan_propagates_like_the_reference(name):
    """-ffast-math must not hide a NaN: every output the reference makes NaN is NaN here, and no other."""
    _, seg = segments_of("rows", 1, 40)
    x = scan_case(1, 40, 16, 16, 4, torch.float32, seed=8)
    nan = float("nan")
    if name == "conv_x":
        xz = torch.randn(1, 40, 32)
        xz[0, 10, 3] = nan
        w = torch.randn(2, 16, 4)
        with torch.no_grad():
            got, ref = conv_fast(xz[..., :16], w, None, seg), bidirectional_conv1d_ref(xz[..., :16], w, None, seg)
        assert torch.isnan(ref).any() and torch.equal(torch.isnan(got), torch.isnan(ref))
        return
    if name == "xc":
        x["xc"][1, 0, 10, 3] = nan
    elif name in ("dt", "B", "C"):
        col = {"dt": 1, "B": 4 + 2, "C": 4 + 16 + 5}[name]
        x["dbl_fwd"][0, 10, col] = nan
    elif name == "z":
        x["z"][0, 10, 3] = nan
    elif name in ("dt_bias", "D"):
        x[name][1, 3] = nan
    else:
        x["A"][0, 3, 7] = nan
    with torch.no_grad():
        got = scan_fast(**x, segments=seg)
        ref = bidirectional_scan_ref(**x, segments=seg)
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))


def test_forward_only_and_bad_inputs():
    _, seg = segments_of("rows", 2, 10)
    x = scan_case(2, 10, 16, 16, 4, torch.float32)
    with pytest.raises(RuntimeError, match="forward-only"):
        scan_fast(**{**x, "xc": x["xc"].clone().requires_grad_()}, segments=seg)
    with torch.no_grad():
        with pytest.raises(ValueError, match="inside"):
            scan_fast(**x, segments=torch.tensor([[0, 5, 11]]))
        with pytest.raises(ValueError, match="overlap"):
            scan_fast(**x, segments=torch.tensor([[1, 0, 6], [0, 0, 4], [1, 5, 10]]))
        with pytest.raises(ValueError, match="share one dtype"):
            scan_fast(**{**x, "z": x["z"].to(torch.bfloat16)}, segments=seg)
        with pytest.raises(ValueError, match="A must be"):
            scan_fast(**{**x, "A": x["A"][:1]}, segments=seg)
        with pytest.raises(ValueError, match="conv_weight must be"):
            conv_fast(x["z"], torch.randn(16, 4), None, seg)
        with pytest.raises(ValueError, match="fp32 or bf16"):
            conv_fast(x["z"].double(), torch.randn(2, 16, 4), None, seg)


@pytest.mark.parametrize("hidden_dtype,norm_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm_matches_reference(hidden_dtype, norm_dtype, with_residual):
    """The block's residual add + RMSNorm: fp32 residual exact (one add), normed within one
    rounding of its dtype; in place on the residual (as the route uses it) gives the same."""
    g = torch.Generator().manual_seed(11)
    hidden = (torch.randn(3, 37, 40, generator=g) * 3).to(hidden_dtype)
    residual = torch.randn(3, 37, 40, generator=g) if with_residual else None
    weight = torch.randn(40, generator=g)
    with torch.no_grad():
        r, normed = add_rms_norm_cpu(hidden, residual, weight, 1e-5, norm_dtype)
        r_ref, normed_ref = add_rms_norm_ref(hidden, residual, weight, 1e-5, norm_dtype)
        torch.testing.assert_close(r, r_ref, rtol=0, atol=0)
        assert normed.dtype == norm_dtype
        torch.testing.assert_close(normed.float(), normed_ref.float(), **(FP32 if norm_dtype == torch.float32 else BF16))
        if residual is not None:
            buf = residual.clone()
            r_in_place, _ = add_rms_norm_cpu(hidden, buf, weight, 1e-5, norm_dtype, res_out=buf)
            assert r_in_place is buf and torch.equal(buf, r_ref)
        with pytest.raises(ValueError, match="residual must be fp32"):
            add_rms_norm_cpu(hidden, torch.zeros(3, 37, 40, dtype=torch.bfloat16), weight, 1e-5, norm_dtype)
        poisoned = hidden.clone()
        poisoned[1, 5, 7] = float("nan")  # -ffast-math must not hide it: the whole row goes NaN, as in PyTorch
        got, want = add_rms_norm_cpu(poisoned, residual, weight, 1e-5, norm_dtype)[1], add_rms_norm_ref(poisoned, residual, weight, 1e-5, norm_dtype)[1]
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want[1, 5]).all()


def test_sequence_segments():
    assert sequence_segments(2, 5).tolist() == [[0, 0, 5], [1, 0, 5]]
    assert sequence_segments(3, 5, lengths=torch.tensor([5, 0, 2])).tolist() == [[0, 0, 5], [2, 0, 2]]
    cu = torch.tensor([0, 2, 2, 7], dtype=torch.int32)
    assert sequence_segments(1, 7, cu_seqlens=cu).tolist() == [[0, 0, 2], [0, 2, 7]]
    with pytest.raises(ValueError, match="cu_seqlens"):
        sequence_segments(1, 8, cu_seqlens=cu)
    with pytest.raises(ValueError, match="lengths"):
        sequence_segments(2, 5, lengths=torch.tensor([6, 1]))


@pytest.mark.slow
@pytest.mark.no_kernel_needed
def test_generic_vector_path_without_avx512(tmp_path, monkeypatch):
    """The kernels' portable path (no AVX-512: integer exponent instead of scalef, 256-bit halves):
    built with -mno-avx512f (GCC/Clang on x86-64 only) in a private cache, against the references."""
    cc = build.compiler()
    if cc is None or "x86_64" not in os.uname().machine or shutil.which(cc[0]) is None:
        pytest.skip("needs a C compiler on x86-64")
    probe = subprocess.run([*cc, "-mno-avx512f", "-x", "c", "-c", "-", "-o", os.devnull], input="int x;", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{cc[0]} does not take -mno-avx512f")
    monkeypatch.setenv("LCPLM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", " ".join([*cc, "-mno-avx512f"]))
    build.reset()
    try:
        assert build.load() is not None, build.unavailable_reason()
        batch, seg = segments_of("padded", 4, 100)
        for dtype in (torch.float32, torch.bfloat16):
            x = scan_case(batch, 100, 40, 16, 4, dtype, seed=9)
            w = torch.randn(2, 40, 4)
            tol = FP32 if dtype == torch.float32 else BF16
            with torch.no_grad():
                torch.testing.assert_close(scan_fast(**x, segments=seg).float(), bidirectional_scan_ref(**x, segments=seg).float(), **tol)
                torch.testing.assert_close(
                    conv_fast(x["z"], w, None, seg).float(), bidirectional_conv1d_ref(x["z"], w, None, seg).float(), **tol
                )
    finally:
        build.reset()
