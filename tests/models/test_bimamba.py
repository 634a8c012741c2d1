"""BiMamba-S: padding / packing invariance in both directions, backends, activation
checkpointing, initialisation, config validation and the shipped model sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lcplm.config import load_config
from lcplm.data import tokenizer
from lcplm.errors import UserError
from lcplm.models import bimamba_inference, build_model
from lcplm_kernels.selective_scan import interface
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM, SequenceLayout

REPO = Path(__file__).resolve().parents[2]
# fp32, same arithmetic per token: differences are reduction-order rounding only
TOL = dict(rtol=1e-5, atol=2e-5)
# the released LC-PLM model.safetensors (git-lfs pointer in the public HF-layout repo):
# fp32 weights with tied projections stored once, plus a JSON header
RELEASED_SAFETENSORS_BYTES = 3_011_271_376


def tiny(**kw) -> BiMambaLM:
    torch.manual_seed(0)
    cfg = BiMambaConfig(d_model=32, n_layer=2, d_state=8, **kw)
    return BiMambaLM(cfg).eval()


def random_ids(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 29, (n,), generator=g) for n in lengths]


def padded(seqs, pad_to_multiple_of=1):
    return tokenizer.pad_batch(seqs, pad_to_multiple_of)


LENGTHS = [63, 1, 17, 100, 40]


def test_padding_invariance_both_directions():
    model = tiny()
    seqs = random_ids(LENGTHS)
    ids, lengths = padded(seqs, pad_to_multiple_of=8)  # every row padded, the longest too
    with torch.no_grad():
        batch = model(ids, lengths=lengths)
        for i, s in enumerate(seqs):
            alone = model(s[None])[0]
            torch.testing.assert_close(batch[i, : len(s)], alone, **TOL)


def test_flipping_the_padded_tensor_would_leak(monkeypatch):
    """Sensitivity check: with LC-PLM's flip of the whole padded tensor, a short sequence next to
    a longer one changes; only the per-sequence reversal keeps it equal to itself alone. (The
    training path's reversal; the inference route's own check is in test_bimamba_inference.py.)"""
    model = tiny()
    seqs = random_ids([20, 100])
    ids, lengths = padded(seqs)
    monkeypatch.setattr(SequenceLayout, "reverse", lambda self, x: x.flip(-1))
    with torch.no_grad(), bimamba_inference.disabled():
        leaked = model(ids, lengths=lengths)[0, :20]
        alone = model(seqs[0][None])[0]
    assert (leaked - alone).abs().max() > 1e-2


def test_reverse_direction_sees_the_future():
    """Changing the last residue changes the first position's output (the reverse scan reaches
    it), and changing the first changes the last (the forward scan)."""
    model = tiny()
    (s,) = random_ids([30])
    t = s.clone()
    t[-1] = 4 if s[-1] != 4 else 5
    u = s.clone()
    u[0] = 4 if s[0] != 4 else 5
    with torch.no_grad():
        base, last_changed, first_changed = model(s[None])[0], model(t[None])[0], model(u[None])[0]
    assert (base[0] - last_changed[0]).abs().max() > 1e-4
    assert (base[-1] - first_changed[-1]).abs().max() > 1e-4


def test_packed_equals_alone_and_padded_with_gradients():
    model = tiny()
    model.train()
    seqs = random_ids(LENGTHS, seed=1)
    cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32)
    packed_ids = torch.cat(seqs)[None]
    ids, lengths = padded(seqs)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(n, tokenizer.PADDED_VOCAB_SIZE, generator=g) for n in LENGTHS]

    out_packed = model(packed_ids, cu_seqlens=cu)
    loss_packed = sum((out_packed[0, cu[i] : cu[i + 1]] * w).sum() for i, w in enumerate(weights))
    grads_packed = torch.autograd.grad(loss_packed, list(model.parameters()))

    out_pad = model(ids, lengths=lengths)
    loss_pad = sum((out_pad[i, :n] * w).sum() for i, (n, w) in enumerate(zip(LENGTHS, weights)))
    grads_pad = torch.autograd.grad(loss_pad, list(model.parameters()))

    with torch.no_grad():
        for i, s in enumerate(seqs):
            alone = model(s[None])[0]
            torch.testing.assert_close(out_packed[0, cu[i] : cu[i + 1]].detach(), alone, **TOL)
            torch.testing.assert_close(out_pad[i, : len(s)].detach(), alone, **TOL)
    for (name, _), gp, gq in zip(model.named_parameters(), grads_packed, grads_pad):
        torch.testing.assert_close(gp, gq, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_padding_positions_are_zero_and_shapes():
    model = tiny()
    ids, lengths = padded(random_ids([5, 9]))
    with torch.no_grad():
        h = model.encode(ids, lengths=lengths)
        logits = model(ids, lengths=lengths)
    assert h.shape == (2, 9, 32) and logits.shape == (2, 9, tokenizer.PADDED_VOCAB_SIZE)
    assert not h[0, 5:].any() and h[0, :5].abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "chunked", "native", "auto"])
def test_scan_backends_agree(backend):
    if backend == "native" and (reason := interface.native_scan_unavailable()) is not None:
        pytest.skip(f"native CPU scan unavailable: {reason}")
    seqs = random_ids([33, 12], seed=3)
    ids, lengths = padded(seqs)
    ref_model = tiny(scan_backend="reference")
    model = tiny(scan_backend=backend)
    model.load_state_dict(ref_model.state_dict())
    out_ref = ref_model(ids, lengths=lengths)
    out = model(ids, lengths=lengths)
    torch.testing.assert_close(out, out_ref, rtol=6e-4, atol=2e-3)
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")


def test_activation_checkpointing_gives_identical_gradients():
    """trainer.activation_checkpointing's per-block recomputation (the model has no switch of its own)."""
    from lcplm.train.strategies import apply_activation_checkpointing

    seqs = random_ids([25, 14], seed=4)
    ids, lengths = padded(seqs)
    grads = []
    for ckpt in (False, True):
        model = tiny().train()
        if ckpt:
            assert apply_activation_checkpointing(model, BiMambaLM.block_classes) == model.cfg.n_layer
        model(ids, lengths=lengths).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_mamba_initialisation():
    cfg = BiMambaConfig(d_model=48, n_layer=6, d_state=16)
    torch.manual_seed(0)
    model = BiMambaLM(cfg)
    mixer = model.backbone.layers[0].mixer
    assert mixer.fwd.dt_proj.weight.shape == (96, 3) and cfg.resolved_dt_rank == 3
    torch.testing.assert_close(mixer.fwd.A_log[5], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    dt = torch.nn.functional.softplus(mixer.rev.dt_proj.bias)
    assert dt.min() >= cfg.dt_init_floor * 0.999 and dt.max() <= cfg.dt_max * 1.001
    assert torch.equal(mixer.fwd.D, torch.ones(96))
    # out_proj: kaiming-uniform bound 1/sqrt(fan_in), then / sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= 1 / math.sqrt(96) / math.sqrt(6) + 1e-6
    assert abs(model.backbone.embedding.weight.std().item() - cfg.initializer_range) < 0.005
    assert model.lm_head.weight is not model.backbone.embedding.weight


def test_tied_embeddings_share_storage():
    model = BiMambaLM(BiMambaConfig(d_model=16, n_layer=1, tie_embeddings=True))
    assert model.lm_head.weight is model.backbone.embedding.weight


def test_bad_batch_inputs():
    model = tiny()
    ids = torch.randint(4, 29, (2, 10))
    with pytest.raises(ValueError, match="lengths"):
        model(ids, lengths=torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="not both"):
        model(ids[:1], lengths=torch.tensor([10]), cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(ids[:1], cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32))
    with pytest.raises(ValueError, match="packed"):
        model(ids, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))


@pytest.mark.parametrize(
    "override,key",
    [("model.scan_backend=fast", "scan_backend"), ("model.d_model=0", "d_model"), ("model.vocab_size=33", "vocab_size")],
)
def test_config_errors_name_the_key(override, key):
    with pytest.raises(UserError, match=key):
        load_config(REPO / "experiments" / "model" / "tiny.yaml", [override])


def _param_count(path: str, **overrides) -> int:
    cfg = load_config(REPO / "experiments" / "model" / path).model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def test_lcplm_790m_size_matches_the_released_checkpoint():
    n128 = _param_count("lcplm_790m.yaml", vocab_size=128)  # LC-PLM's padded vocabulary
    # with our 40-row vocabulary the embedding and the LM head each lose 88 rows of 1536
    n = n128 - 2 * (128 - tokenizer.PADDED_VOCAB_SIZE) * 1536
    assert n == 752_518_656
    assert abs(n - 790e6) / 790e6 < 0.05  # the paper's "790M" label
    # 4 bytes per parameter leave ~115 kB of the released file for its JSON header
    assert 50_000 < RELEASED_SAFETENSORS_BYTES - 4 * n128 < 200_000


def test_shipped_model_sizes():
    assert 50_000 < _param_count("tiny.yaml") < 150_000
    assert 80e6 < _param_count("small_gpu.yaml") < 200e6


def test_build_model_registry():
    model = build_model(load_config(REPO / "experiments" / "model" / "tiny.yaml").model)
    assert isinstance(model, BiMambaLM) and model.cfg.n_layer == 2
