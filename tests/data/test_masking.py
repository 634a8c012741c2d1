"""mask_tokens: rate, 80/10/10 split, only residues, seeded; binomial bounds, not eyeballed ones."""

from __future__ import annotations

import math

import pytest
import torch

from lcplm.data import tokenizer as tok
from lcplm.data.masking import IGNORE_INDEX, mask_tokens


def batch(B: int = 64, L: int = 500, seed: int = 0) -> torch.Tensor:
    """Random residues framed by <cls>/<eos>, right-padded to ragged lengths, with some specials inside."""
    g = torch.Generator().manual_seed(seed)
    ids = tok.RESIDUE_IDS[torch.randint(len(tok.RESIDUE_IDS), (B, L), generator=g)]
    lengths = torch.randint(3, L + 1, (B,), generator=g)
    pos = torch.arange(L)[None]
    ids = torch.where(pos >= lengths[:, None], tok.PAD, ids)
    ids[:, 0] = tok.CLS
    ids[torch.arange(B), lengths - 1] = tok.EOS
    ids[:, 1::37] = torch.where(ids[:, 1::37] != tok.PAD, tok.EDGE, tok.PAD)  # separators are never targets
    return ids


def within(k: int, n: int, p: float, z: float = 5.0) -> bool:
    """k is within z standard deviations of Binomial(n, p)'s mean (5 sigma: a false alarm ~1 in 3.5M)."""
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p))


def test_rate_split_and_only_residues():
    ids = batch()
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(1))
    assert masked.shape == ids.shape == labels.shape and masked.dtype == labels.dtype == torch.long
    residue = tok.is_residue(ids)
    target = labels != IGNORE_INDEX
    assert not (target & ~residue).any()  # never specials, separators or padding
    assert torch.equal(labels[target], ids[target])
    assert torch.equal(masked[~target], ids[~target])  # non-targets untouched
    n_res, n_t = int(residue.sum()), int(target.sum())
    assert within(n_t, n_res, 0.15)
    n_mask = int((masked[target] == tok.MASK).sum())
    changed = target & (masked != tok.MASK) & (masked != ids)
    assert within(n_mask, n_t, 0.8)
    # random replacements: 10% of targets, 19/20 of which differ from the original
    assert within(int(changed.sum()), n_t, 0.1 * 19 / 20)
    assert torch.isin(masked[changed], tok.STANDARD_AA_IDS).all()
    assert not (masked[~target] == tok.MASK).any()


def test_random_replacements_are_uniform_standard_amino_acids():
    ids = torch.full((1, 200_000), tok.TOKEN_TO_ID["X"])  # X is a residue but never drawn as a replacement
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(2), mask_prob=1.0, mask_token_frac=0.0, random_token_frac=1.0)
    assert (labels == ids).all()
    counts = torch.bincount(masked[0], minlength=tok.PADDED_VOCAB_SIZE)
    assert counts[tok.STANDARD_AA_IDS].sum() == ids.numel()
    for c in counts[tok.STANDARD_AA_IDS].tolist():
        assert within(c, ids.numel(), 1 / 20)


def test_seeded_reproducible_and_seeds_differ():
    ids = batch(8, 300)
    a = mask_tokens(ids, torch.Generator().manual_seed(5))
    b = mask_tokens(ids, torch.Generator().manual_seed(5))
    c = mask_tokens(ids, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


@pytest.mark.parametrize("shape", [(1, 1), (1, 63), (3, 1000), (1, 4097)])
def test_packed_and_odd_shapes(shape):
    ids = tok.RESIDUE_IDS[torch.randint(len(tok.RESIDUE_IDS), shape, generator=torch.Generator().manual_seed(0))]
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(0))
    assert masked.shape == labels.shape == shape
    assert ((labels == IGNORE_INDEX) | (labels == ids)).all()


def test_zero_and_full_rate():
    ids = batch(4, 100)
    _, labels = mask_tokens(ids, torch.Generator().manual_seed(0), mask_prob=0.0)
    assert (labels == IGNORE_INDEX).all()
    masked, labels = mask_tokens(ids, torch.Generator().manual_seed(0), mask_prob=1.0, mask_token_frac=1.0, random_token_frac=0.0)
    assert torch.equal(labels != IGNORE_INDEX, tok.is_residue(ids))
    assert (masked[tok.is_residue(ids)] == tok.MASK).all()


@pytest.mark.parametrize("kw", [{"mask_prob": 1.5}, {"mask_token_frac": 0.95, "random_token_frac": 0.1}, {"random_token_frac": -0.1}])
def test_bad_fractions(kw):
    with pytest.raises(ValueError):
        mask_tokens(batch(1, 10), torch.Generator(), **kw)


@pytest.mark.gpu
def test_cuda_tensor_with_cuda_generator():
    ids = batch(4, 200).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    masked, labels = mask_tokens(ids, g)
    assert masked.is_cuda and labels.is_cuda
    assert not ((labels != IGNORE_INDEX) & ~tok.is_residue(ids)).any()
