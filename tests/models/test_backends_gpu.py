"""GPU backends: mamba-ssm's CUDA selective scan and causal-conv1d against our references.

Tolerances are mamba-ssm's (tests/ops/test_selective_scan.py): outputs fp32 rtol 6e-4 /
atol 2e-3, bf16 3e-2 / 5e-2; gradients du x2, ddelta rtol x5 / atol x10, dA (rtolw, 5 atolw),
dB / dC as the outputs, dD / dz / ddelta_bias (rtolw, atolw) with rtolw = max(1e-3, rtol),
atolw = max(1e-3, atol). Every test here needs a CUDA GPU (skipped otherwise) and mamba-ssm
(``pip install -e .[gpu]``; skipped with that hint when missing).
"""

from __future__ import annotations

import pytest
import torch

from lcplm.data import tokenizer
from lcplm.models import backends, ssm
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

pytestmark = pytest.mark.gpu

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _need_mamba():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if backends.mamba_scan_fn() is None:
        pytest.skip(f"mamba-ssm not importable: {backends.GPU_INSTALL_HINT}")


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
    out, grads = run(backends.selective_scan, x, gout, backend="cuda")
    out_ref, grads_ref = run(ssm.selective_scan_ref, x, gout)
    (rtol, atol), gtol = tolerances(dtype)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    for k in NAMES:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=gtol[k][0], atol=gtol[k][1], msg=lambda m: f"d{k}: {m}")


def test_chunked_scan_on_gpu_matches_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = make(2, 32, 8, 777, torch.float32)
    gout = torch.randn(2, 32, 777, device="cuda")
    out, grads = run(ssm.selective_scan_chunked, x, gout, chunk_size=64)
    out_ref, grads_ref = run(ssm.selective_scan_ref, x, gout)
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
    out, grads = run(backends.selective_scan, x, gout, cu_seqlens=cu, backend="cuda")
    out_ref, grads_ref = run(ssm.selective_scan_ref, x, gout, cu_seqlens=cu)
    (rtol, atol), gtol = tolerances(dtype)
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    for k in NAMES:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=gtol[k][0], atol=gtol[k][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_kernel_matches_torch(dtype):
    if not torch.cuda.is_available() or backends.causal_conv1d_fn() is None:
        pytest.skip("needs a CUDA GPU and causal-conv1d")
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(2, 64, 257, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.randn(64, 4, device="cuda", generator=g, requires_grad=True)
    b = torch.randn(64, device="cuda", generator=g, requires_grad=True)
    out = backends.causal_conv1d(x, w, b, backend="cuda")
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w, b), gout)
    ref = backends.causal_conv1d(x, w, b, backend="chunked")  # the PyTorch path
    grads_ref = torch.autograd.grad(ref, (x, w, b), gout)
    (rtol, atol), _ = tolerances(dtype)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=rtol * 2, atol=atol * 2)


def _tiny(backend):
    torch.manual_seed(0)
    return BiMambaLM(BiMambaConfig(d_model=64, n_layer=2, scan_backend=backend)).cuda()


def test_bimamba_cuda_backend_matches_chunked_and_keeps_invariances():
    _need_mamba()
    model, ref = _tiny("cuda"), _tiny("chunked")
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(3)
    lengths = [300, 17, 1, 129]
    seqs = [torch.randint(4, 29, (n,), generator=g) for n in lengths]
    ids, lens = tokenizer.pad_batch(seqs)
    ids, lens = ids.cuda(), lens.cuda()
    out = model(ids, lengths=lens)
    out_ref = ref(ids, lengths=lens)
    torch.testing.assert_close(out, out_ref, rtol=6e-4, atol=2e-3)
    out.square().mean().backward()
    out_ref.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-3, msg=lambda m: f"{name}: {m}")
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    with torch.no_grad():
        packed = model(torch.cat(seqs).cuda()[None], cu_seqlens=cu)
        for i, s in enumerate(seqs):
            alone = model(s.cuda()[None])[0]
            torch.testing.assert_close(out[i, : len(s)].detach(), alone, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(packed[0, cu[i] : cu[i + 1]], alone, rtol=1e-4, atol=1e-4)


def test_bimamba_bf16_autocast_close_to_fp32():
    _need_mamba()
    model = _tiny("auto")
    ids = torch.randint(4, 29, (2, 500), device="cuda")
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=1e-1)


def test_mixer_equals_two_tied_mamba_modules():
    """Our BiMamba-S mixer vs LC-PLM's formulation built from mamba-ssm's own Mamba modules."""
    _need_mamba()
    from mamba_ssm.modules.mamba_simple import Mamba

    from lcplm.models import convert

    torch.manual_seed(4)
    d = 64
    fwd, rev = Mamba(d_model=d).cuda(), Mamba(d_model=d).cuda()
    rev.in_proj.weight = fwd.in_proj.weight
    rev.out_proj.weight = fwd.out_proj.weight
    state = {}
    for name, mod in (("mamba_fwd", fwd), ("mamba_rev", rev)):
        for k, v in mod.state_dict().items():
            state[f"backbone.layers.0.mixer.{name}.{k}"] = v
    cfg = BiMambaConfig(d_model=d, n_layer=1, scan_backend="cuda")
    model = BiMambaLM(cfg).cuda()
    own = model.state_dict()
    for k in ("backbone.embedding.weight", "backbone.layers.0.norm.weight", "backbone.norm_f.weight", "lm_head.weight"):
        state[k] = own[k]
    model.load_state_dict(convert.lcplm_state_to_ours(state, cfg))
    mixer = model.backbone.layers[0].mixer
    h = torch.randn(2, 333, d, device="cuda")
    from lcplm.models.bimamba import SequenceLayout

    ids = torch.zeros(2, 333, dtype=torch.long, device="cuda")
    ours = mixer(h, SequenceLayout.build(ids))
    theirs = fwd(h) + rev(h.flip(1)).flip(1)
    torch.testing.assert_close(ours, theirs, rtol=6e-4, atol=2e-3)
