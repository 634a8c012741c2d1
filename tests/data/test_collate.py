"""MLMCollator: crops, <cls>/<eos> after cropping, padded/packed layouts, seeding by batch key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcplm.data import tokenizer as tok
from lcplm.data.collate import MLMCollator, crop_residues
from lcplm.data.masking import IGNORE_INDEX


def residues(lengths, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [tok.STANDARD_AA_IDS.numpy()[rng.integers(0, 20, n)] for n in lengths]


def collator(pack: bool, random_crop: bool = True, max_length: int = 64, seed: int = 0, **kw) -> MLMCollator:
    return MLMCollator(max_length, pack, random_crop, seed=seed, stream=0, **kw)


def test_crop_windows():
    ids = np.arange(100)
    assert crop_residues(ids, 200, None) is ids
    assert crop_residues(ids, 10, None).tolist() == list(range(10))  # validation: the start
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        w = crop_residues(ids, 10, g)
        assert len(w) == 10 and (np.diff(w) == 1).all()  # one contiguous window
        starts.add(int(w[0]))
    assert min(starts) == 0 and max(starts) == 90 and len(starts) > 50  # every offset is possible


@pytest.mark.parametrize("random_crop", [False, True])
def test_long_sequences_are_cropped_then_framed(random_crop: bool):
    seqs = residues([5, 62, 63, 500])
    out = collator(False, random_crop, max_length=64, mask_prob=1e-9)(seqs, 0, 0)
    ids, lengths = out["input_ids"], out["lengths"]
    assert lengths.tolist() == [7, 64, 64, 64]
    assert ids.shape == (4, 64)
    for row, n, src in zip(ids, lengths.tolist(), seqs):
        assert row[0] == tok.CLS and row[n - 1] == tok.EOS  # specials added after cropping
        body = row[1 : n - 1].numpy()
        if len(src) <= 62:
            assert (body == src).all()
        elif random_crop:
            windows = np.lib.stride_tricks.sliding_window_view(src, 62)
            assert (windows == body).all(1).any()  # some contiguous window of the protein
        else:
            assert (body == src[:62]).all()


def test_padded_layout_contract():
    out = collator(False)(residues([3, 40, 17]), epoch=0, position=0)
    assert set(out) == {"input_ids", "lengths", "labels"}
    ids, lengths, labels = out["input_ids"], out["lengths"], out["labels"]
    assert ids.dtype == lengths.dtype == labels.dtype == torch.long
    assert ids.shape == labels.shape == (3, 42) and lengths.tolist() == [5, 42, 19]
    pad = torch.arange(42)[None] >= lengths[:, None]
    assert (ids[pad] == tok.PAD).all() and (labels[pad] == IGNORE_INDEX).all()
    assert (labels != IGNORE_INDEX).any()


def test_packed_layout_contract():
    out = collator(True)(residues([3, 40, 17]), epoch=0, position=0)
    assert set(out) == {"input_ids", "cu_seqlens", "labels"}
    assert out["input_ids"].shape == out["labels"].shape == (1, 5 + 42 + 19)
    assert out["cu_seqlens"].dtype == torch.int32 and out["cu_seqlens"].tolist() == [0, 5, 47, 66]
    ids = out["input_ids"][0]
    assert ids[[0, 5, 47]].tolist() == [tok.CLS] * 3 and ids[[4, 46, 65]].tolist() == [tok.EOS] * 3


@pytest.mark.parametrize("random_crop", [False, True])
def test_padded_and_packed_carry_the_same_targets(random_crop: bool):
    seqs = residues([1, 63, 1000, 7])
    padded = collator(False, random_crop, max_length=128)(seqs, 3, 11)
    packed = collator(True, random_crop, max_length=128)(seqs, 3, 11)
    valid = torch.arange(padded["input_ids"].shape[1])[None] < padded["lengths"][:, None]
    assert torch.equal(padded["input_ids"][valid], packed["input_ids"][0])
    assert torch.equal(padded["labels"][valid], packed["labels"][0])


def test_seeded_by_seed_epoch_and_position():
    seqs = residues([300, 200, 90])
    c = collator(False, max_length=128)
    a, b = c(seqs, 1, 4), c(seqs, 1, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for other in (c(seqs, 2, 4), c(seqs, 1, 5), collator(False, max_length=128, seed=1)(seqs, 1, 4)):
        assert not torch.equal(a["labels"], other["labels"])
    val = MLMCollator(128, False, False, seed=0, stream=1)(seqs, 1, 4)
    assert not torch.equal(a["labels"], val["labels"])  # validation draws from its own stream


def test_mask_rate_over_a_batch():
    out = collator(True, max_length=1024)(residues([1000] * 20), 0, 0)
    targets = int((out["labels"] != IGNORE_INDEX).sum())
    n = 20 * 1000
    assert abs(targets - 0.15 * n) < 5 * (n * 0.15 * 0.85) ** 0.5
