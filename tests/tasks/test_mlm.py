"""The MLM loss, optimiser parameter groups and learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lcplm.config import OptimConfig
from lcplm.tasks.mlm import MLMTask, masked_lm_loss
from lcplm.tasks.optim import param_groups, warmup_cosine


def test_masked_loss_counts_only_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 40, generator=g)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = 7, 12, 4
    loss, n, correct = masked_lm_loss(logits, labels)
    sel = torch.stack([logits[0, 1], logits[1, 3], logits[1, 4]])
    ref = F.cross_entropy(sel, torch.tensor([7, 12, 4]))
    assert n == 3 and torch.allclose(loss, ref)
    assert correct == (sel.argmax(-1) == torch.tensor([7, 12, 4])).sum()


def test_masked_loss_without_targets_is_zero_not_nan():
    loss, n, _ = masked_lm_loss(torch.randn(1, 4, 40), torch.full((1, 4), -100))
    assert n == 0 and loss.item() == 0.0


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.norm = nn.LayerNorm(8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 40, bias=False)
        self.A_log = nn.Parameter(torch.zeros(8, 4))

    def forward(self, input_ids, lengths=None):
        return self.head(self.proj(self.norm(self.emb(input_ids))))


def test_no_weight_decay_on_norms_biases_embeddings_and_A_log():
    m = _Toy()
    decay, no_decay = param_groups(m, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(m.proj.weight), id(m.head.weight)}
    assert no_decay["weight_decay"] == 0.0
    assert {id(m.emb.weight), id(m.norm.weight), id(m.norm.bias), id(m.proj.bias), id(m.A_log)} == {
        id(p) for p in no_decay["params"]
    }


def test_warmup_then_cosine():
    f = [warmup_cosine(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))  # increasing warm-up
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))  # non-increasing decay


def test_nan_loss_stops_with_a_clear_message():
    task = MLMTask(_Toy(), OptimConfig())
    with torch.no_grad():
        task.model.head.weight.fill_(math.nan)
    batch = {"input_ids": torch.tensor([[0, 5, 6, 2]]), "labels": torch.tensor([[-100, 5, -100, -100]])}
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        task.training_step(batch, 0)


def test_nan_on_another_rank_stops_this_rank_too():
    """Under DDP the non-finite flag is all-reduced: a rank with a finite loss raises at the same
    step as the rank that saw NaN, instead of waiting for it in the next collective."""
    seen = []

    class FakeStrategy:
        def reduce(self, t, reduce_op=None):
            seen.append((t.clone(), reduce_op))
            return torch.ones_like(t)  # another rank reported NaN

    class FakeTrainer:
        world_size = 2
        global_step = 7
        strategy = FakeStrategy()

    task = MLMTask(_Toy(), OptimConfig())
    task._trainer = FakeTrainer()
    batch = {"input_ids": torch.tensor([[0, 5, 6, 2]]), "labels": torch.tensor([[-100, 5, -100, -100]])}
    with pytest.raises(FloatingPointError, match="not finite on another rank at global step 7"):
        task.training_step(batch, 0)
    assert seen and seen[0][0].item() == 0.0 and seen[0][1] == "max"  # this rank's own loss was finite
