"""Clustering metrics of SPEC §5, all from one sparse contingency table.

c_ij = |S*_i ∩ S~_j| between true instances S* (n of them) and predicted S~ (m). Only non-zero
cells are kept (np.unique over label pairs), so memory is O(N) even for all-singleton partitions.
- purity     = mean_j max_i c_ij / |S~_j|
- efficiency = mean_i max_j c_ij / |S*_i|
- ARI        = scikit-learn's adjusted_rand_score (same pair-confusion formula, exact integers;
               1.0 when no pair is split or merged differently, e.g. both partitions one cluster
               or both all singletons)
- SBD        = min(BD(pred, true), BD(true, pred)), BD(A, B) = mean_a max_b 2|a∩b| / (|a| + |b|)
Empty input gives NaN for every metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METRICS = ("ari", "purity", "efficiency", "sbd")


@dataclass
class Contingency:
    """Non-zero cells (row, col, count) of the table, plus row sizes a (n,) and column sizes b (m,)."""

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.a.sum())


def contingency(true, pred) -> Contingency:
    """Sparse contingency table of two labelings of the same N items (any integer labels)."""
    true, pred = np.asarray(true).ravel(), np.asarray(pred).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"length mismatch: {true.size} true labels vs {pred.size} predicted")
    _, ti = np.unique(true, return_inverse=True)
    _, pj = np.unique(pred, return_inverse=True)
    m = int(pj.max()) + 1 if pj.size else 0
    cells, counts = np.unique(ti.astype(np.int64) * m + pj, return_counts=True)  # sorted by row
    rows, cols = cells // max(m, 1), cells % max(m, 1)
    a = np.bincount(rows, weights=counts, minlength=int(ti.max()) + 1 if ti.size else 0).astype(np.int64)
    b = np.bincount(cols, weights=counts, minlength=m).astype(np.int64)
    return Contingency(rows, cols, counts.astype(np.int64), a, b)


def _starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal keys in a sorted array."""
    new_run = np.empty(sorted_keys.size, dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new_run[1:])
    return np.flatnonzero(new_run)


def scores(t: Contingency) -> dict[str, float]:
    """All four metrics from one table (group maxima by reduceat over rows, then over columns)."""
    if t.counts.size == 0:
        return {k: float("nan") for k in METRICS}
    dice = 2.0 * t.counts / (t.a[t.rows] + t.b[t.cols])
    row_starts = _starts(t.rows)  # cells are sorted by row
    by_col = np.argsort(t.cols, kind="stable")
    col_starts = _starts(t.cols[by_col])
    purity = float(np.mean(np.maximum.reduceat(t.counts[by_col], col_starts) / t.b))
    efficiency = float(np.mean(np.maximum.reduceat(t.counts, row_starts) / t.a))
    bd_true = float(np.mean(np.maximum.reduceat(dice, row_starts)))
    bd_pred = float(np.mean(np.maximum.reduceat(dice[by_col], col_starts)))
    return {"ari": _ari(t), "purity": purity, "efficiency": efficiency, "sbd": min(bd_true, bd_pred)}


def _ari(t: Contingency) -> float:
    """Adjusted Rand index via the pair confusion matrix, in Python integers (as scikit-learn)."""
    n = t.n_samples
    ss = int(np.dot(t.counts, t.counts))
    tp = ss - n
    fp = int(np.dot(t.counts, t.b[t.cols])) - ss
    fn = int(np.dot(t.counts, t.a[t.rows])) - ss
    tn = n * n - fp - fn - ss
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def ari(true, pred) -> float:
    """Adjusted Rand index of two labelings (equals sklearn.metrics.adjusted_rand_score)."""
    t = contingency(true, pred)
    return _ari(t) if t.counts.size else float("nan")


def purity(true, pred) -> float:
    """mean over predicted clusters of the fraction of their voxels from their majority true instance."""
    return scores(contingency(true, pred))["purity"]


def efficiency(true, pred) -> float:
    """mean over true instances of the fraction of their voxels in their best predicted cluster."""
    return scores(contingency(true, pred))["efficiency"]


def sbd(true, pred) -> float:
    """Symmetric best Dice: min(BD(pred, true), BD(true, pred))."""
    return scores(contingency(true, pred))["sbd"]


def scoring_mask(true_instance: np.ndarray, semantic: np.ndarray, min_voxels: int = 10) -> np.ndarray:
    """(N,) bool: voxels that are scored (SPEC §5). Drops true instance −1 and, within each class,
    true instances with fewer than `min_voxels` voxels."""
    keep = true_instance >= 0
    _, tinv = np.unique(true_instance, return_inverse=True)
    code = semantic.astype(np.int64) * (int(tinv.max()) + 1 if tinv.size else 1) + tinv.ravel()
    _, inv, size = np.unique(code, return_inverse=True, return_counts=True)
    return keep & (size[inv.ravel()] >= min_voxels)


def score_event(true_instance, pred_instance, semantic, min_voxels: int = 10,
                labels: tuple[str, ...] | None = None) -> list[dict]:
    """Per-class scores of one event (SPEC §5), one dict per class with voxels left after filtering.

    Voxels with true instance −1 are dropped; within each class, true instances with fewer than
    `min_voxels` voxels are dropped with their voxels. Row keys: class, class_name (if `labels`),
    ari, purity, efficiency, sbd, n_true, n_pred (distinct predicted ids among kept voxels), n_voxels.
    Inputs are (N,) integer arrays (numpy or torch on any device).
    """
    true_instance, pred_instance, semantic = (_to_numpy(x).ravel()
                                              for x in (true_instance, pred_instance, semantic))
    if not (true_instance.size == pred_instance.size == semantic.size):
        raise ValueError(f"length mismatch: true {true_instance.size}, pred {pred_instance.size}, "
                         f"semantic {semantic.size}")
    keep = scoring_mask(true_instance, semantic, min_voxels)
    sem, tru, prd = semantic[keep], true_instance[keep], pred_instance[keep]
    order = np.argsort(sem, kind="stable")
    sem, tru, prd = sem[order], tru[order], prd[order]
    classes, starts = np.unique(sem, return_index=True)
    rows = []
    for c, lo, hi in zip(classes.tolist(), starts, np.append(starts[1:], sem.size)):
        t = contingency(tru[lo:hi], prd[lo:hi])
        row = {"class": int(c)}
        if labels is not None:
            row["class_name"] = labels[c]
        row.update(scores(t))
        row.update(n_true=int(t.a.size), n_pred=int(t.b.size), n_voxels=int(hi - lo))
        rows.append(row)
    return rows


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
