"""Heads and the downstream LightningModule trained on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from lcplm.data import tokenizer as tok
from lcplm.models.heads import (
    FeatureNet, GraphNodeNet, GraphPairNet, GraphSAGE, LinearProbe, MLPHead, PairDecoder, residue_mean,
)
from lcplm.data.datamodules.downstream import SplitsDataModule
from lcplm.tasks.downstream import DownstreamTask, fit_and_evaluate, prediction_metrics


def _blobs(n=300, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def _data(tensors: dict, n_train: int, n_valid: int, seed: int = 0) -> SplitsDataModule:
    tr = {k: v[:n_train] for k, v in tensors.items()}
    va = {k: v[n_train:n_train + n_valid] for k, v in tensors.items()}
    te = {k: v[n_train + n_valid:] for k, v in tensors.items()}
    return SplitsDataModule({"train": tr, "valid": va, "test": te}, batch_size=64, seed=seed)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_multiclass_probe_learns_separable_classes(head):
    x, y = _blobs()
    net = FeatureNet(LinearProbe(12, 4) if head == "linear" else MLPHead(12, 4, hidden=32))
    task = DownstreamTask(net, "multiclass", lr=1e-2)
    res = fit_and_evaluate(task, _data({"x": x, "y": y}, 200, 50), max_epochs=15)
    assert res["test"]["accuracy"] > 0.9
    assert res["valid"]["accuracy"] == task.best_score
    # the restored weights are those of the best validation epoch
    with torch.no_grad():
        again = prediction_metrics("multiclass", net(x[200:250]), y[200:250])
    assert again["accuracy"] == pytest.approx(res["valid"]["accuracy"])


def test_multilabel_head_reports_ogb_rocauc_aupr_and_fmax():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 10, generator=g)
    w = torch.randn(10, 5, generator=g)
    y = (x @ w > 0.5).float()
    task = DownstreamTask(FeatureNet(LinearProbe(10, 5)), "multilabel", lr=2e-2)
    res = fit_and_evaluate(task, _data({"x": x, "y": y}, 250, 50), max_epochs=15)
    assert set(res["test"]) == {"rocauc", "aupr", "fmax"}
    assert res["test"]["rocauc"] > 0.9 and res["test"]["aupr"] > 0.7 and res["test"]["fmax"] > 0.6


def _group_graph(n=60, seed=0):
    """Proteins in 3 groups; same-group pairs interact. Features: noisy group one-hot."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 3, (n,), generator=g)
    x = torch.eye(3)[group] + 0.3 * torch.randn(n, 3, generator=g)
    a = torch.randint(0, n, (900,), generator=g)
    b = torch.randint(0, n, (900,), generator=g)
    keep = a != b
    a, b = a[keep], b[keep]
    return x, group, a, b, (group[a] == group[b]).float()


@pytest.mark.parametrize("gnn", [False, True])
def test_pair_decoder_with_and_without_graphsage(gnn):
    x, _, a, b, y = _group_graph()
    n_tr = 500
    pos = y[:n_tr] == 1
    edges = torch.stack([torch.cat([a[:n_tr][pos], b[:n_tr][pos]]), torch.cat([b[:n_tr][pos], a[:n_tr][pos]])])
    torch.manual_seed(0)
    if gnn:
        net = GraphPairNet(x, PairDecoder(16, hidden=16), GraphSAGE(3, 16, 2, 0.0), edges)
    else:
        net = GraphPairNet(x, PairDecoder(3, hidden=16))
    task = DownstreamTask(net, "binary", lr=1e-2, hits_k=(5,))
    res = fit_and_evaluate(task, _data({"a": a, "b": b, "y": y}, n_tr, 150), max_epochs=25)
    assert set(res["test"]) == {"auroc", "ap", "hits@5"}
    assert res["test"]["auroc"] > 0.85


def test_graph_node_net_with_graphsage_learns_node_labels_from_the_graph():
    x, group, a, b, y = _group_graph()
    same = y == 1
    edges = torch.stack([torch.cat([a[same], b[same]]), torch.cat([b[same], a[same]])])
    labels = torch.eye(3)[group]
    nodes = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    feats = torch.randn(60, 16, generator=torch.Generator().manual_seed(1))  # uninformative node features
    scores = {}
    for gnn in (True, False):
        torch.manual_seed(0)
        net = (GraphNodeNet(feats, LinearProbe(8, 3), GraphSAGE(16, 8, 2, 0.0), edges) if gnn
               else GraphNodeNet(feats, LinearProbe(16, 3)))
        task = DownstreamTask(net, "multilabel", lr=2e-2)
        res = fit_and_evaluate(task, _data({"node": nodes, "y": labels[nodes]}, 30, 15), max_epochs=40)
        scores[gnn] = res["test"]["rocauc"]
    # only message passing over the graph tells the groups apart
    assert scores[True] > 0.9 and scores[True] > scores[False] + 0.2


def test_pair_decoder_is_symmetric():
    dec = PairDecoder(8, hidden=16).eval()
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.allclose(dec(a, b), dec(b, a))


def test_residue_mean_ignores_specials_padding_and_unknowns():
    ids, lengths = tok.pad_batch([tok.encode("AC"), tok.encode("GJX-")])
    hidden = torch.randn(2, ids.shape[1], 3)
    got = residue_mean(hidden, ids)
    assert torch.allclose(got[0], hidden[0, 1:3].mean(0))
    # 'G' and 'X' are residues; 'J' (<unk>), '-' (gap), <cls>, <eos> and padding are not
    assert torch.allclose(got[1], hidden[1, [1, 3]].mean(0))


def test_prediction_metrics_undefined_cases_are_nan():
    m = prediction_metrics("binary", torch.randn(6), torch.ones(6), hits_k=(2,))
    assert math.isnan(m["auroc"]) and math.isnan(m["hits@2"]) and m["ap"] == pytest.approx(1.0)
    m = prediction_metrics("multilabel", torch.randn(4, 3), torch.zeros(4, 3))
    assert all(math.isnan(v) for v in m.values())


def test_task_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        DownstreamTask(FeatureNet(LinearProbe(2, 2)), "regression")


def test_pair_decoder_with_several_outputs_is_symmetric_and_keeps_its_columns():
    dec = PairDecoder(8, hidden=16, n_out=7).eval()
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert dec(a, b).shape == (5, 7) and torch.allclose(dec(a, b), dec(b, a))
    assert PairDecoder(8, hidden=16).eval()(a, b).shape == (5,)


def test_monitor_picks_the_best_epoch_by_the_named_metric():
    x, _, a, b, y = _group_graph()
    yy = torch.stack([y, 1 - y], 1)  # two complementary labels per pair
    task = DownstreamTask(GraphPairNet(x, PairDecoder(3, hidden=16, n_out=2)), "multilabel", lr=1e-2,
                          f1_threshold=0.5, monitor="micro_f1")
    res = fit_and_evaluate(task, _data({"a": a, "b": b, "y": yy}, 500, 150), max_epochs=6)
    assert task.best_score == res["valid"]["micro_f1"] and "micro_f1" in res["test"]
    with pytest.raises(ValueError, match="f1_threshold is for multilabel"):
        DownstreamTask(FeatureNet(LinearProbe(2, 2)), "binary", f1_threshold=0.5)
