"""BiMamba-S on CUDA with mamba-ssm: the cuda scan backend against the chunked one (outputs,
gradients, padding/packing invariance), bf16 autocast, and our mixer against LC-PLM's two
weight-tied mamba-ssm ``Mamba`` calls. Needs a CUDA GPU and mamba-ssm (skipped otherwise)."""

from __future__ import annotations

import pytest
import torch

from lcplm.data import tokenizer
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
from lcplm_kernels.selective_scan import interface

pytestmark = pytest.mark.gpu


def _need_mamba():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if interface.mamba_scan_fn() is None:
        pytest.skip(f"mamba-ssm not importable: {interface.GPU_INSTALL_HINT}")


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
