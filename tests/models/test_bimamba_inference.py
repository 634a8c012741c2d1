"""BiMamba-S's inference route (lcplm.models.bimamba_inference: no autograd, CPU, native kernels)
against the training path and the sequential reference scan, alone, padded and packed.

fp32: both paths compute every token in fp32 with the same weights; they differ in summation
order and the kernels' polynomial exp/softplus, so outputs agree to 1e-5 relative / 2e-5
absolute (hidden states are RMS-normalised, about 1). bf16: one bf16 rounding of each
activation, compounded over the layers: 3e-2 relative / 5e-2 absolute (mamba-ssm's bf16
tolerances).
"""

from __future__ import annotations

import pytest
import torch

from lcplm.data import tokenizer
from lcplm.models import bimamba_inference
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM, SequenceLayout
from lcplm_kernels import selective_scan as ssm_ops
from lcplm_kernels.selective_scan import interface

TOL = dict(rtol=1e-5, atol=2e-5)
BF16_TOL = dict(rtol=3e-2, atol=5e-2)
LENGTHS = [63, 1, 17, 100, 40, 2]


@pytest.fixture(autouse=True)
def native():
    if (reason := interface.native_scan_unavailable()) is not None:
        pytest.skip(f"native CPU kernels unavailable: {reason}")


def model_of(d_state=16, d_model=40, **kw) -> BiMambaLM:
    """d_model 40: 80 channels, five blocks of 16 (no partial block) ... or a partial one at 36."""
    torch.manual_seed(0)
    return BiMambaLM(BiMambaConfig(d_model=d_model, n_layer=2, d_state=d_state, **kw)).eval()


def batches(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(4, 29, (n,), generator=g) for n in lengths]
    ids, lens = tokenizer.pad_batch(seqs, 8)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return seqs, ids, lens, torch.cat(seqs)[None], cu


def count_route_calls(monkeypatch) -> list:
    calls = []
    real = ssm_ops.bidirectional_scan_cpu
    monkeypatch.setattr(ssm_ops, "bidirectional_scan_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("d_state,d_model", [(16, 40), (8, 36), (5, 16)])  # specialised N; partial channel block; generic N
def test_route_equals_training_path_and_reference(d_state, d_model, monkeypatch):
    model = model_of(d_state, d_model)
    seqs, ids, lens, packed, cu = batches(LENGTHS)
    calls = count_route_calls(monkeypatch)
    with torch.no_grad():
        route = {"padded": model(ids, lengths=lens), "packed": model(packed, cu_seqlens=cu)}
        assert len(calls) == 2 * 2  # two layers, both batches: the route ran
        with bimamba_inference.disabled():
            train = {"padded": model(ids, lengths=lens), "packed": model(packed, cu_seqlens=cu)}
        assert len(calls) == 4  # and the training path did not
        for layer in model.backbone.layers:
            layer.mixer.backend = "reference"
        ref = model(ids, lengths=lens)
    for k in route:
        torch.testing.assert_close(route[k], train[k], **TOL)
    torch.testing.assert_close(route["padded"], ref, **TOL)
    assert not route["padded"][1, 1:].any()  # padding positions are zero


def test_route_alone_padded_packed_agree():
    model = model_of()
    seqs, ids, lens, packed, cu = batches(LENGTHS, seed=1)
    with torch.no_grad():
        pad = model.encode(ids, lengths=lens)
        pack = model.encode(packed, cu_seqlens=cu)
        for i, s in enumerate(seqs):
            alone = model.encode(s[None])[0]
            # the kernels' arithmetic is per token and step; only the matmuls' blocking varies with
            # the batch's row count
            torch.testing.assert_close(pad[i, : len(s)], alone, **TOL)
            torch.testing.assert_close(pack[0, cu[i] : cu[i + 1]], alone, **TOL)


def test_route_taken_only_where_it_applies(monkeypatch):
    model = model_of()
    _, ids, lens, _, _ = batches([30, 7])
    calls = count_route_calls(monkeypatch)
    model(ids, lengths=lens)  # gradients on: training path
    with torch.no_grad(), bimamba_inference.disabled():
        model(ids, lengths=lens)
    for layer in model.backbone.layers:
        layer.mixer.backend = "chunked"  # asked for the PyTorch scan
    with torch.no_grad():
        model(ids, lengths=lens)
    for layer in model.backbone.layers:
        layer.mixer.backend = "auto"
    with torch.no_grad():
        model.double()(ids, lengths=lens)  # fp64: the chunked scan's job
    assert calls == []
    with torch.inference_mode():
        model.float()(ids, lengths=lens)
    assert len(calls) == 2


def test_route_sees_only_its_own_sequence(monkeypatch):
    """Sensitivity check: segments spanning whole padded rows (what flipping the padded tensor
    amounts to) make a short sequence depend on its neighbour's padding; the real segments do not."""
    model = model_of()
    seqs, ids, lens, _, _ = batches([20, 100], seed=2)
    with torch.no_grad():
        alone = model.encode(seqs[0][None])[0]
        monkeypatch.setattr(SequenceLayout, "segments", lambda self, b, n: ssm_ops.sequence_segments(b, n))
        leaked = model.encode(ids, lengths=lens)[0, :20]
    assert (leaked - alone).abs().max() > 1e-2


def test_route_bf16_model_and_autocast_close_to_fp32():
    model = model_of()
    _, ids, lens, _, _ = batches([50, 13], seed=3)
    with torch.no_grad():
        ref = model.encode(ids, lengths=lens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model.encode(ids, lengths=lens)
        bf16 = model.to(torch.bfloat16).encode(ids, lengths=lens)
        with bimamba_inference.disabled():
            bf16_train = model.encode(ids, lengths=lens)
    for out in (auto, bf16):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    torch.testing.assert_close(bf16.float(), bf16_train.float(), **BF16_TOL)
