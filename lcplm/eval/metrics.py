"""Downstream metrics implemented here, once: OGB's rules (Hits@K against shared negatives,
mean per-task ROC-AUC), CAFA's protein-centric Fmax, and scikit-learn's support-weighted F1 and
cosine silhouette (the genome taxonomy evaluation). Accuracy, binary AUROC and average
precision come from torchmetrics.

Everything takes tensors (or anything ``torch.as_tensor`` accepts) and returns a Python float,
computed in float64 on CPU so results do not depend on the device or dtype of the scores.
``tests/eval/test_metrics.py`` checks equality with ``ogb``'s ``Evaluator`` on random inputs.
"""

from __future__ import annotations

import torch


def _as_f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def hits_at_k(pos_scores, neg_scores, k: int) -> float:
    """Fraction of positives scored strictly above the K-th highest negative (OGB's rule).

    pos_scores: (P,), neg_scores: (Q,) shared by every positive. With fewer than K negatives
    OGB counts every positive as a hit, and so does this.
    """
    pos, neg = _as_f64(pos_scores).reshape(-1), _as_f64(neg_scores).reshape(-1)
    if k < 1:
        raise ValueError(f"hits_at_k: k must be >= 1, got {k}")
    if pos.numel() == 0:
        raise ValueError("hits_at_k: no positive scores")
    if neg.numel() < k:
        return 1.0
    kth = torch.topk(neg, k).values[-1]
    return float((pos > kth).double().mean())


def _rank_auc(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per-column ROC-AUC of (N, T) float64 labels in {0, 1} and scores; NaN where a class is absent.

    The Mann-Whitney statistic with tied scores sharing their mean rank, which equals the area
    under the trapezoidal ROC curve (scikit-learn's ``roc_auc_score``), ties included.
    Vectorised over columns: one sort, no loop over tasks.
    """
    n = s.shape[0]
    sv, order = torch.sort(s, dim=0)
    yv = torch.gather(y, 0, order)
    pos = torch.arange(n, dtype=torch.float64).unsqueeze(1).expand_as(sv)
    first = torch.ones_like(sv, dtype=torch.bool)  # first member of its tie group
    first[1:] = sv[1:] != sv[:-1]
    last = torch.ones_like(sv, dtype=torch.bool)  # last member of its tie group
    last[:-1] = first[1:]
    start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values
    end_marks = torch.where(last, pos, torch.full_like(pos, n - 1))
    end = torch.flip(torch.cummin(torch.flip(end_marks, [0]), 0).values, [0])
    mean_rank = (start + end) / 2 + 1  # (N, T), 1-based
    n_pos = (yv == 1).sum(0).double()
    n_neg = (yv == 0).sum(0).double()
    rank_sum = torch.where(yv == 1, mean_rank, torch.zeros_like(mean_rank)).sum(0)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, float("nan")))


def roc_auc(y_true, y_score) -> float:
    """Binary ROC-AUC, ties sharing their mean rank. y_true: (N,) in {0, 1}; NaN if a class is absent."""
    y, s = _as_f64(y_true).reshape(-1, 1), _as_f64(y_score).reshape(-1, 1)
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: y_true has {y.shape[0]} entries, y_score {s.shape[0]}")
    return float(_rank_auc(y, s)[0])


def ogb_rocauc(y_true, y_pred) -> float:
    """Mean ROC-AUC over the tasks (columns) that have both a positive and a negative label.

    OGB's ogbn-proteins rule: labels are used as they are (1 positive, 0 negative); NaN labels
    are left out of their task. y_true, y_pred: (N, T), or (N,) for a single task.
    """
    y, s = _as_f64(y_true), _as_f64(y_pred)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape:
        raise ValueError(f"ogb_rocauc: y_true {tuple(y.shape)} and y_pred {tuple(s.shape)} differ")
    scored = (y == 1).any(0) & (y == 0).any(0)
    if not bool(scored.any()):
        raise ValueError("ogb_rocauc: no task has both positive and negative labels")
    with_nan = torch.isnan(y).any(0)
    dense = scored & ~with_nan
    aucs = list(_rank_auc(y[:, dense], s[:, dense]).unbind()) if bool(dense.any()) else []
    for t in torch.nonzero(scored & with_nan).flatten().tolist():
        labeled = ~torch.isnan(y[:, t])
        aucs.append(_rank_auc(y[labeled, t : t + 1], s[labeled, t : t + 1])[0])
    return float(torch.stack(aucs).mean())


def fmax(y_true, y_score, thresholds: int = 101) -> float:
    """CAFA's protein-centric maximum F-measure over thresholds 0, 1/(n-1), ..., 1.

    At threshold t a protein's predictions are the labels with score >= t. Precision is
    averaged over proteins with at least one prediction, recall over proteins with at least
    one true label (proteins without any are left out). y_true, y_score: (N, T), scores in [0, 1].
    """
    y, s = _as_f64(y_true) == 1, _as_f64(y_score)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"fmax: expected two (N, T) arrays, got {tuple(y.shape)} and {tuple(s.shape)}")
    annotated = y.any(1)
    if not bool(annotated.any()):
        raise ValueError("fmax: no protein has a true label")
    y, s = y[annotated], s[annotated]
    n_true = y.sum(1).double()
    best = 0.0
    for t in torch.linspace(0, 1, thresholds, dtype=torch.float64):
        pred = s >= t
        n_pred = pred.sum(1).double()
        covered = n_pred > 0
        if not bool(covered.any()):
            continue
        tp = (pred & y).sum(1).double()
        precision = (tp[covered] / n_pred[covered]).mean()
        recall = (tp / n_true).mean()
        if precision + recall > 0:
            best = max(best, float(2 * precision * recall / (precision + recall)))
    return best


def weighted_f1(y_true, y_pred) -> float:
    """F1 per class, averaged with weights = the class's share of ``y_true`` (scikit-learn's
    ``f1_score(average="weighted")``: classes only predicted weigh 0). y_true, y_pred: (N,) ints."""
    y, p = torch.as_tensor(y_true).reshape(-1).long(), torch.as_tensor(y_pred).reshape(-1).long()
    if y.shape != p.shape or y.numel() == 0:
        raise ValueError(f"weighted_f1: need two equal, non-empty label vectors, got {tuple(y.shape)} and {tuple(p.shape)}")
    total = 0.0
    for c in torch.unique(y).tolist():
        tp = int(((p == c) & (y == c)).sum())
        fp = int(((p == c) & (y != c)).sum())
        fn = int(((p != c) & (y == c)).sum())
        total += (tp + fn) / y.numel() * (2 * tp / (2 * tp + fp + fn))
    return total


def cosine_silhouette(x, labels) -> float:
    """Mean silhouette with cosine distance ``1 - cos(u, v)`` (scikit-learn's
    ``silhouette_score(metric="cosine")``): a sample alone in its cluster scores 0. x: (N, d);
    labels: (N,), with 2 <= number of clusters <= N - 1 (a ValueError otherwise)."""
    x = _as_f64(x)
    lab = torch.as_tensor(labels).reshape(-1)
    _, lab = torch.unique(lab, return_inverse=True)
    n, k = x.shape[0], int(lab.max()) + 1 if lab.numel() else 0
    if lab.numel() != n or not 2 <= k <= n - 1:
        raise ValueError(f"cosine_silhouette: needs 2 <= clusters <= samples - 1, got {k} clusters of {n} samples")
    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    d = (1 - unit @ unit.T).clamp(0, 2)
    d.fill_diagonal_(0)
    onehot = torch.nn.functional.one_hot(lab, k).double()  # (N, k)
    sums = d @ onehot  # (N, k): summed distance from each sample to each cluster
    size = onehot.sum(0)  # (k,)
    own = size[lab]
    a = sums.gather(1, lab[:, None]).squeeze(1) / (own - 1).clamp_min(1)
    mean_other = sums / size
    mean_other.scatter_(1, lab[:, None], float("inf"))
    b = mean_other.min(1).values
    s = torch.where(own > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-300), torch.zeros_like(a))
    return float(s.mean())
