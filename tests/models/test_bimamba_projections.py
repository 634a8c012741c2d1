"""BiMamba with unshared projections (``share_projections: false``, the control of LC-PLM's
shared-projection ablation): two untied Mamba calls, padding / packing invariance, the
equal-parameter tiny experiment, and the LC-PLM converter's refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lcplm.config import load_config
from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import build_model, count_parameters
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM, SequenceLayout

REPO = Path(__file__).resolve().parents[2]
TOL = dict(rtol=1e-5, atol=2e-5)  # fp32, same arithmetic per token: reduction order only


def _model(share: bool, **kw) -> BiMambaLM:
    torch.manual_seed(0)
    return BiMambaLM(BiMambaConfig(d_model=32, n_layer=2, d_state=8, share_projections=share, **kw)).eval()


def _ids(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 29, (n,), generator=g) for n in lengths]


def test_unshared_mixer_is_two_untied_mamba_calls():
    """out = Mamba_fwd(h) + flip(Mamba_rev(flip(h))), each call with its own in/out projections."""
    model = _model(False, bias=True)
    mixer = model.backbone.layers[0].mixer
    assert mixer.in_proj.weight.data_ptr() != mixer.in_proj_rev.weight.data_ptr()
    with torch.no_grad():
        for lin in (mixer.in_proj_rev, mixer.out_proj_rev, mixer.in_proj, mixer.out_proj):
            lin.bias.normal_()

    def mamba(h, in_proj, direction, out_proj):
        x, z = in_proj(h).chunk(2, dim=-1)
        y = direction(x.transpose(1, 2), SequenceLayout(), mixer.backend, mixer.chunk_size)
        return out_proj((y * F.silu(z.transpose(1, 2))).transpose(1, 2))

    h = torch.randn(2, 37, 32)
    with torch.no_grad():
        want = mamba(h, mixer.in_proj, mixer.fwd, mixer.out_proj) + mamba(
            h.flip(1), mixer.in_proj_rev, mixer.rev, mixer.out_proj_rev
        ).flip(1)
        got = mixer(h, SequenceLayout())
    torch.testing.assert_close(got, want, **TOL)


def test_unshared_with_tied_copies_equals_shared():
    shared, unshared = _model(True), _model(False)
    state = shared.state_dict()
    for i in range(2):
        for name in ("in_proj", "out_proj"):
            state[f"backbone.layers.{i}.mixer.{name}_rev.weight"] = state[f"backbone.layers.{i}.mixer.{name}.weight"]
    unshared.load_state_dict(state)
    ids = torch.stack(_ids([50, 50]))
    with torch.no_grad():
        torch.testing.assert_close(unshared(ids), shared(ids), **TOL)
    # sensitivity: untied reverse projections change the output
    with torch.no_grad():
        unshared.backbone.layers[0].mixer.in_proj_rev.weight.add_(0.1)
        assert (unshared(ids) - shared(ids)).abs().max() > 1e-3


def test_unshared_padding_and_packing_invariance_and_gradients():
    model = _model(False)
    seqs = _ids([63, 1, 17, 100])
    ids, lengths = tokenizer.pad_batch(seqs, 8)
    cu = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0).to(torch.int32)
    with torch.no_grad():
        pad = model(ids, lengths=lengths)
        pack = model(torch.cat(seqs)[None], cu_seqlens=cu)[0]
        for b, s in enumerate(seqs):
            alone = model(s[None])[0]
            torch.testing.assert_close(pad[b, : len(s)], alone, **TOL)
            torch.testing.assert_close(pack[int(cu[b]) : int(cu[b + 1])], alone, **TOL)
    model.train()
    model(ids, lengths=lengths).pow(2).mean().backward()
    for name in ("in_proj", "out_proj", "in_proj_rev", "out_proj_rev"):
        assert getattr(model.backbone.layers[1].mixer, name).weight.grad.abs().sum() > 0, name


def test_tiny_unshared_matches_the_tiny_size_and_shares_its_recipe():
    cfgs = {n: load_config(REPO / "experiments" / "pretrain" / f"{n}.yaml") for n in ("tiny", "tiny_unshared", "tiny_esm2")}
    assert cfgs["tiny"].model.share_projections and not cfgs["tiny_unshared"].model.share_projections
    counts = {n: count_parameters(build_model(c.model)) for n, c in cfgs.items()}
    assert counts["tiny"] == 86_720 and counts["tiny_unshared"] == 82_704
    assert abs(counts["tiny_unshared"] - counts["tiny"]) / counts["tiny"] < 0.10, counts
    # the unshared model at tiny's own width would be far larger: the width is what equalises
    wide = build_model(load_config(REPO / "experiments" / "pretrain" / "tiny_unshared.yaml", ["model.d_model=64"]).model)
    assert count_parameters(wide) > 1.5 * counts["tiny"]
    for other in ("tiny_unshared", "tiny_esm2"):  # same data, optimiser and trainer sections
        for section in ("data", "optim", "trainer", "task"):
            assert getattr(cfgs[other], section) == getattr(cfgs["tiny"], section), (other, section)


def test_lcplm_converter_refuses_unshared(tmp_path):
    from lcplm.models import convert

    model = _model(False)
    with pytest.raises(UserError, match="share_projections is false: LC-PLM's format has shared"):
        convert.save_lcplm(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    shared = _model(True)
    convert.save_lcplm(shared, tmp_path / "shared")
    with pytest.raises(UserError, match="share_projections is false"):
        convert.load_lcplm(tmp_path / "shared", share_projections=False)
    assert isinstance(convert.load_lcplm(tmp_path / "shared"), BiMambaLM)
