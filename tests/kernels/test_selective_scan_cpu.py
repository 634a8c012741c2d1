"""The fused C selective scan (lcplm_kernels.selective_scan.cpu) against the sequential reference,
and the library's build (compile on first use, cache, fallbacks).

Same tolerances as test_selective_scan_chunked.py (mamba-ssm's fp32 ones), plus the fp64-oracle
rule: the kernel's error is at most twice the fp32 reference's. The kernel compiles on first
use; without a C compiler these tests skip, unless LCPLM_REQUIRE_NATIVE_SCAN=1 (set by
.ci/run), where a missing kernel is a failure.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from lcplm_kernels import BackendUnavailableError
from lcplm_kernels.selective_scan import interface, naive
from lcplm_kernels.selective_scan.cpu import build, scan, selective_scan_cpu
from scan_cases import ATOLW, NAMES, RTOLW, assert_close_all, assert_error_at_most_twice_the_references, make_inputs, run


def _require_kernel():
    reason = build.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("LCPLM_REQUIRE_NATIVE_SCAN") == "1":
        pytest.fail(f"the native CPU scan is required here but unavailable: {reason}")
    pytest.skip(f"native CPU scan unavailable: {reason}")


@pytest.fixture(autouse=True)
def kernel(request):
    if "no_kernel_needed" not in request.keywords:
        _require_kernel()


def native(**kw):
    """The kernel through the public dispatch, with cu_seqlens turned into keep."""
    return interface.selective_scan(**kw, backend="native")


@pytest.mark.parametrize(
    "batch,dim,nstate,length",
    [(2, 4, 8, 1), (2, 8, 16, 63), (1, 4, 4, 1000), (3, 5, 3, 130), (2, 3, 32, 77), (1, 2, 64, 40), (1, 3, 5, 257)],
)
@pytest.mark.parametrize("softplus", [True, False])
def test_matches_reference_with_all_gradients(batch, dim, nstate, length, softplus):
    # N = 4/8/16/32/64 take the specialised loops, 3 and 5 the generic one
    x = make_inputs(batch, dim, nstate, length)
    g = torch.Generator().manual_seed(1)
    gout = torch.randn(batch, dim, length, generator=g)
    glast = torch.randn(batch, dim, nstate, generator=g)
    ref = run(naive.selective_scan_ref, x, gout, glast, delta_softplus=softplus)
    assert_close_all(run(native, x, gout, glast, delta_softplus=softplus), ref)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 100, 1000])
def test_chunk_sizes(chunk_size):
    x = make_inputs(2, 3, 16, 100, seed=3)
    g = torch.Generator().manual_seed(3)
    gout, glast = torch.randn(2, 3, 100, generator=g), torch.randn(2, 3, 16, generator=g)

    def fn(**kw):
        return selective_scan_cpu(**kw, chunk_size=chunk_size)

    assert_close_all(run(fn, x, gout, glast, delta_softplus=True), run(naive.selective_scan_ref, x, gout, glast, delta_softplus=True))


@pytest.mark.parametrize(
    "has_D,has_z,has_bias",
    [(False, False, False), (True, False, False), (False, True, False), (False, False, True), (True, True, True)],
)
def test_optional_inputs(has_D, has_z, has_bias):
    x = make_inputs(2, 6, 16, 63, has_D=has_D, has_z=has_z, has_bias=has_bias)
    gout = torch.randn(2, 6, 63, generator=torch.Generator().manual_seed(2))
    for softplus in (True, False):
        assert_close_all(run(native, x, gout, delta_softplus=softplus), run(naive.selective_scan_ref, x, gout, delta_softplus=softplus))


def test_error_against_fp64_oracle_is_at_most_twice_the_references():
    assert_error_at_most_twice_the_references(native, naive.selective_scan_ref)


def test_softplus_over_the_whole_range():
    """delta + bias from -30 to 30: the kernel's own exp/log1p must track torch's softplus
    (small dt where log1p(exp(x)) ~ exp(x), and the x > 20 linear regime)."""
    x = make_inputs(1, 4, 16, 240, seed=12)
    x["delta"] = torch.linspace(-30.0, 30.0, 4 * 240).view(1, 4, 240)
    x["delta_bias"] = torch.zeros(4)
    x["A"] = -0.05 * torch.rand(4, 16, generator=torch.Generator().manual_seed(12))  # keep dt A in range
    gout = torch.randn(1, 4, 240, generator=torch.Generator().manual_seed(13))
    assert_close_all(run(native, x, gout, delta_softplus=True), run(naive.selective_scan_ref, x, gout, delta_softplus=True))


def test_large_decays_stay_finite_and_exact():
    x = make_inputs(1, 4, 6, 200, seed=5)
    x["delta"] = 5.0 + 15.0 * torch.rand(1, 4, 200, generator=torch.Generator().manual_seed(5))
    x["A"] = -torch.linspace(1.0, 60.0, 24).view(4, 6)
    gout = torch.randn(1, 4, 200, generator=torch.Generator().manual_seed(6))
    got = run(native, x, gout, delta_softplus=False)
    assert torch.isfinite(got[0]).all() and all(torch.isfinite(v).all() for v in got[2].values())
    assert_close_all(got, run(naive.selective_scan_ref, x, gout, delta_softplus=False))


def test_tiny_decays_carry_state_across_many_chunks():
    x = make_inputs(1, 3, 16, 400, seed=7)
    x["delta"] = torch.full((1, 3, 400), 1e-4)
    gout = torch.randn(1, 3, 400, generator=torch.Generator().manual_seed(7))

    def fn(**kw):
        return selective_scan_cpu(**kw, chunk_size=16)

    assert_close_all(run(fn, x, gout), run(naive.selective_scan_ref, x, gout))


def test_packed_segments_equal_separate_scans():
    lengths = [1, 63, 0, 17, 300]
    total = sum(lengths)
    x = make_inputs(1, 4, 16, total, seed=8)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    gout = torch.randn(1, 4, total, generator=torch.Generator().manual_seed(9))
    got = run(native, x, gout, delta_softplus=True, cu_seqlens=cu)
    assert_close_all(got, run(naive.selective_scan_ref, x, gout, delta_softplus=True, cu_seqlens=cu))
    dA = torch.zeros_like(x["A"])
    for i, n in enumerate(lengths):
        if n == 0:
            continue
        s, e = int(cu[i]), int(cu[i + 1])
        seg = {k: (v[..., s:e] if v.dim() == 3 else v) for k, v in x.items()}
        alone = run(native, seg, gout[..., s:e], delta_softplus=True)
        torch.testing.assert_close(got[0][..., s:e], alone[0], rtol=1e-5, atol=1e-5)
        for k in ("u", "delta", "B", "C", "z"):
            torch.testing.assert_close(got[2][k][..., s:e], alone[2][k], rtol=1e-4, atol=1e-4)
        dA += alone[2]["A"]
    torch.testing.assert_close(got[2]["A"], dA, rtol=RTOLW, atol=ATOLW * 5)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads):
    """Rows split across threads (more threads than rows too); dB and dC sum per-thread buffers."""
    before = torch.get_num_threads()
    x = make_inputs(2, 5, 16, 150, seed=14)
    gout = torch.randn(2, 5, 150, generator=torch.Generator().manual_seed(14))
    try:
        torch.set_num_threads(1)
        one = run(native, x, gout, delta_softplus=True)
        torch.set_num_threads(threads)
        many = run(native, x, gout, delta_softplus=True)
        tiny = run(native, make_inputs(1, 1, 16, 20), delta_softplus=True)  # 1 row, `threads` threads
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(many[0], one[0], rtol=0, atol=0)  # rows are independent: bitwise
    for k in NAMES:
        torch.testing.assert_close(many[2][k], one[2][k], rtol=1e-6, atol=1e-5)
    assert torch.isfinite(tiny[0]).all()


def test_every_output_element_is_written(monkeypatch):
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: real_empty(*a, **k).fill_(float("nan")))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    x = make_inputs(2, 3, 16, 77, seed=11)
    out, last, grads = run(native, x, delta_softplus=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("name", ["u", "delta", "B", "C", "z", "delta_bias", "D", "A"])
def test_nan_input_propagates(name):
    """-ffast-math must not hide a NaN (the model's NaN guard relies on seeing it): a NaN in
    any input makes the outputs it reaches NaN, as in the reference."""
    x = make_inputs(1, 2, 16, 30)
    t = x[name]
    if t.dim() == 3:
        t[0, 1 if name in ("u", "delta", "z") else 0, 10] = float("nan")
    elif t.dim() == 2:
        t[1, 3] = float("nan")
    else:
        t[1] = float("nan")
    for softplus in (True, False):
        got = native(**x, delta_softplus=softplus)
        ref = naive.selective_scan_ref(**x, delta_softplus=softplus)
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), (softplus, torch.isnan(got).sum(), torch.isnan(ref).sum())
        assert torch.isnan(ref).any()
        # and the backward: every gradient the reference makes NaN is NaN somewhere here too
        g_got, g_ref = run(native, x, delta_softplus=softplus)[2], run(naive.selective_scan_ref, x, delta_softplus=softplus)[2]
        for k in g_ref:
            assert bool(torch.isnan(g_got[k]).any()) == bool(torch.isnan(g_ref[k]).any()), (softplus, k)


def test_saved_memory_is_linear():
    batch, dim, nstate, length = 2, 16, 16, 2048
    x = {k: v.requires_grad_() for k, v in make_inputs(batch, dim, nstate, length).items()}
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_cpu(**x, delta_softplus=True)
    inputs = sum(v.numel() * v.element_size() for v in x.values())
    states = -(-length // scan.DEFAULT_CHUNK) * batch * dim * nstate * 4
    pre_gate = batch * dim * length * 4  # y before the silu(z) gate, for dz
    assert sum(saved.values()) <= inputs + states + pre_gate
    assert max(saved.values()) < batch * dim * nstate * length * 4 / 8


def test_bf16_inputs_compute_in_fp32():
    x = make_inputs(2, 4, 16, 50, dtype=torch.bfloat16)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    out = native(**leaves, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(leaves[k].grad.dtype == torch.bfloat16 for k in leaves)
    torch.testing.assert_close(out.float(), naive.selective_scan_ref(**x, delta_softplus=True).float(), rtol=3e-2, atol=5e-2)


def test_non_contiguous_inputs():
    x = make_inputs(2, 4, 16, 40)
    x["u"] = x["u"].transpose(1, 2).contiguous().transpose(1, 2)  # (B, D, L) view of (B, L, D)
    x["B"] = torch.randn(2, 40, 16).transpose(1, 2)
    gout = torch.randn(2, 4, 40)
    assert_close_all(run(native, x, gout, delta_softplus=True), run(naive.selective_scan_ref, x, gout, delta_softplus=True))


def test_empty_and_bad_inputs():
    out, last = native(**make_inputs(2, 3, 16, 0), return_last_state=True)
    assert out.shape == (2, 3, 0) and last.shape == (2, 3, 16) and not last.any()
    with pytest.raises(ValueError, match="keep"):
        selective_scan_cpu(**make_inputs(2, 3, 16, 5), keep=torch.ones(5))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_cpu(**make_inputs(1, 3, 16, 5), chunk_size=0)


def test_auto_picks_native_on_cpu_but_not_for_fp64():
    assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "native"
    assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float64) == "chunked"
    with pytest.raises(BackendUnavailableError, match="CPU kernel"):
        interface.resolve_scan_backend("native", torch.device("cuda"))


# ------------------------------------------------------------------------------- build


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """A clean loader state and a private cache; the real state comes back afterwards."""
    monkeypatch.setenv("LCPLM_KERNEL_CACHE", str(tmp_path / "cache"))
    build.reset()
    yield tmp_path / "cache"
    build.reset()


@pytest.mark.no_kernel_needed
def test_missing_compiler_falls_back_with_a_reason(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "definitely-not-a-compiler")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert build.load() is None
    assert "no C compiler" in build.unavailable_reason()
    monkeypatch.setattr(interface, "_fallback_warned", [])
    with pytest.warns(RuntimeWarning, match="native CPU scan is unavailable .no C compiler"):
        assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not at every layer
        assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "chunked"
    with pytest.raises(BackendUnavailableError, match="'native' is unavailable: no C compiler"):
        interface.resolve_scan_backend("native", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="unavailable"):
        selective_scan_cpu(**make_inputs(1, 2, 4, 3))


@pytest.mark.no_kernel_needed
def test_failing_compiler_and_switch_off(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")
    assert build.load() is None and "exited 1" in build.unavailable_reason()
    assert not list(fresh_build.glob("*.so")) and not list(fresh_build.glob("*.tmp"))  # nothing half-written
    build.reset()
    monkeypatch.delenv("CC")
    monkeypatch.setenv("LCPLM_CPU_SCAN", "0")
    assert build.load() is None and "LCPLM_CPU_SCAN=0" in build.unavailable_reason()
    monkeypatch.setattr(interface, "_fallback_warned", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # switched off on purpose: no warning
        assert interface.resolve_scan_backend("auto", torch.device("cpu"), torch.float32) == "chunked"


def test_cache_is_keyed_by_cpu_features(fresh_build, monkeypatch):
    assert build.load() is not None
    first = sorted(fresh_build.glob("*.so"))
    assert len(first) == 1
    build.reset()
    monkeypatch.setattr(build, "_cpu_flags", lambda: "a-different-cpu")
    assert build.load() is not None
    second = sorted(fresh_build.glob("*.so"))
    assert len(second) == 2  # one build per CPU generation, never shared between them
    build.reset()
    monkeypatch.undo()
    monkeypatch.setenv("LCPLM_KERNEL_CACHE", str(fresh_build))
    assert build.load() is not None and sorted(fresh_build.glob("*.so")) == second  # reused, not rebuilt


def test_cc_may_carry_flags(fresh_build, monkeypatch):
    """CC="gcc -O1"-style values (a command plus flags) are split like a shell would."""
    cc = build.compiler()
    assert cc is not None
    monkeypatch.setenv("CC", f"{cc[0]} -DLCPLM_TEST_FLAG=1")
    assert build.load() is not None, build.unavailable_reason()
    assert len(list(fresh_build.glob("*.so"))) == 1
    x = make_inputs(1, 3, 16, 20)
    torch.testing.assert_close(selective_scan_cpu(**x), naive.selective_scan_ref(**x), rtol=6e-4, atol=2e-3)


def test_unwritable_cache_falls_back_to_the_temp_dir(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LCPLM_KERNEL_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(build.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert build.load() is not None, build.unavailable_reason()
    assert str(tmp_path / "tmp") in build.library_info()
