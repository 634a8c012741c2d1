"""FlexAttention over our block layout (``lcplm_kernels.block_sparse_attn.flex``) against the
dense fp32 reference: same tiles, same token rule, zeros for rows without a key. On CPU
PyTorch runs Flex eagerly and forward only; the GPU test adds gradients."""

from __future__ import annotations

import pytest
import torch

from lcplm_kernels.block_sparse_attn import build_layout, flex, naive_block_sparse_attn, window_allowed


def _case(device="cpu", L=700, B=2, H=2, D=32, P=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(30, 120, (P,), generator=g)
    pid = torch.repeat_interleave(torch.arange(P), lens)[:L]
    pid = torch.cat([pid, torch.full((L - len(pid),), -1)])[None].repeat(B, 1)
    pid[-1, L - 100 :] = -1  # padding in the last sample
    allowed = window_allowed(P, 1).clone()
    allowed[3] = False  # protein 3 attends nothing: its rows must be zeros
    allowed = allowed[None].expand(B, -1, -1).contiguous()
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(device) for _ in range(3))
    return pid.to(device), allowed.to(device), q, k, v


def test_flex_equals_reference_with_empty_and_padded_rows():
    pid, allowed, q, k, v = _case()
    layout = build_layout(pid, allowed, 128, 128)
    rows = flex.has_key(layout)
    out = flex.flex_block_sparse_attn(q, k, v, flex.flex_block_mask(layout), 32**-0.5, rows)
    ref = naive_block_sparse_attn(q, k, v, pid, allowed, scale=32**-0.5)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    # the rows without keys (protein 3, padding) are exactly the zero rows of the reference
    assert torch.equal(~rows, (pid < 0) | (pid == 3))
    assert (out[~rows[:, None].expand_as(out[..., 0])] == 0).all()
    assert torch.isfinite(out).all()


def test_flex_block_mask_has_the_layout_tiles():
    pid, allowed, *_ = _case(L=1000, P=12, seed=1)
    layout = build_layout(pid, allowed, 128, 128)
    bm = flex.flex_block_mask(layout)
    computed, full = layout.tile_matrix()
    dense = bm.to_dense()  # (B, 1, nq, nk): computed tiles, partial and full
    assert torch.equal(dense[:, 0].bool(), computed)
    assert int(bm.full_kv_num_blocks.sum()) == int(full.sum())


def test_genome_model_flex_backend_matches_dense():
    from lcplm.models.sparse_transformer import SparseGenomeLM, SparseTransformerConfig

    pid, allowed, *_ = _case(L=520, B=1, P=6, seed=2)
    ids = torch.randint(4, 24, pid.shape)
    torch.manual_seed(0)
    cfg = SparseTransformerConfig(num_layers=2, hidden=64, heads=2, ffn=128, attention_backend="flex")
    model = SparseGenomeLM(cfg).eval()
    dense = SparseGenomeLM(SparseTransformerConfig(**{**cfg.__dict__, "attention_backend": "dense"})).eval()
    dense.load_state_dict(model.state_dict())
    lengths = (pid >= 0).sum(1)
    with torch.no_grad():
        a = model(ids, lengths=lengths, pid=pid, allowed=allowed)
        b = dense(ids, lengths=lengths, pid=pid, allowed=allowed)
    valid = pid[0] >= 0
    assert torch.allclose(a[0, valid], b[0, valid], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_flex_gradients_on_gpu():
    pid, allowed, q, k, v = _case("cuda", L=1500, P=15)
    q, k, v = (x.to(torch.float32).requires_grad_() for x in (q, k, v))
    layout = build_layout(pid, allowed, 128, 128)
    out = flex.flex_block_sparse_attn(q, k, v, flex.flex_block_mask(layout), 32**-0.5, flex.has_key(layout))
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), gout)
    qr, kr, vr = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref = naive_block_sparse_attn(qr, kr, vr, pid, allowed, scale=32**-0.5)
    want = torch.autograd.grad(ref, (qr, kr, vr), gout)
    # Flex and the reference both run fp32 on the GPU (TF32 off by default for matmuls)
    assert torch.allclose(out, ref, atol=2e-3, rtol=2e-3)
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, atol=5e-3, rtol=5e-3)
