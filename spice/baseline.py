"""DBSCAN baseline: scikit-learn DBSCAN on the voxel coordinates of each true semantic class.

Scored by the same `spice.metrics.score_event` into the same frame layout as `spice.evaluate`
(method="dbscan", net_time_s = 0). DBSCAN noise points (label −1, only possible with
min_samples > 1) each become their own singleton cluster, so they count as predicted instances.
With min_samples=1 and eps just above √3 (default 1.8) DBSCAN is 26-connected components.
`tune_dbscan` picks eps per class on validation events by the same objective as `spice.tune`.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import DBSCAN
from tqdm import tqdm

from spice.evaluate import event_rows, frame
from spice.metrics import METRICS, contingency, scores
from spice.tune import choose, scored_classes

DEFAULT_EPS_GRID = np.array([1.0, 1.5, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0])


def dbscan_class(coords: np.ndarray, eps: float, min_samples: int = 1) -> np.ndarray:
    """(N,) int64 labels 0..K−1 of DBSCAN on (N,3) voxel coordinates; noise -> own singletons."""
    if len(coords) == 0:
        return np.zeros(0, dtype=np.int64)
    lab = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(coords.astype(np.float64)).astype(np.int64)
    noise = lab < 0
    lab[noise] = lab.max() + 1 + np.arange(int(noise.sum()))
    return lab


def _eps_for(eps: float | Mapping[int, float], c: int) -> float:
    if isinstance(eps, Mapping):
        if c not in eps:
            raise KeyError(f"no DBSCAN eps for semantic class {c} (have {sorted(eps)})")
        return float(eps[c])
    return float(eps)


def dbscan_event(event, eps: float | Mapping[int, float] = 1.8, min_samples: int = 1) -> np.ndarray:
    """(N,) int64 instance labels of the whole event, class by class, ids unique across classes."""
    labels = np.full(len(event), -1, dtype=np.int64)
    offset = 0
    for c in np.unique(event.semantic).tolist():
        idx = np.flatnonzero(event.semantic == c)
        lab = dbscan_class(event.coords[idx], _eps_for(eps, c), min_samples)
        labels[idx] = lab + offset
        offset += int(lab.max()) + 1
    return labels


def dbscan_evaluate(dataset, eps: float | Mapping[int, float] = 1.8, min_samples: int = 1,
                    min_voxels: int = 10, progress: bool = False) -> pd.DataFrame:
    """One row per (event, class), same columns as `spice.evaluate.evaluate`, method="dbscan".
    eps (voxels) is one value or {class: eps}; cluster_time_s is the event's DBSCAN wall time."""
    rows: list[dict] = []
    for i in tqdm(range(len(dataset)), disable=not progress, desc="dbscan"):
        ev = dataset[i]
        t0 = time.perf_counter()
        pred = dbscan_event(ev, eps, min_samples)
        ct = time.perf_counter() - t0
        rows += event_rows(ev, i, pred, net_time_s=0.0, cluster_time_s=ct, device="cpu", method="dbscan",
                           min_voxels=min_voxels)
    return frame(rows)


def tune_dbscan(events: Sequence, eps_grid=DEFAULT_EPS_GRID, min_samples: int = 1, objective: str = "sbd",
                classes: Sequence[int] | None = None, min_voxels: int = 10) -> tuple[pd.DataFrame, dict[int, float]]:
    """Per-class eps maximising the mean objective over validation events (ties: smallest eps).
    Returns (grid [class, eps, score, n], {class: eps})."""
    if objective not in METRICS:
        raise ValueError(f"objective must be one of {METRICS}, got {objective!r}")
    eps_grid = [float(x) for x in eps_grid]
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for ev in events:
        for c, idx, keep, true in scored_classes(ev, min_voxels, classes):
            acc = sums.setdefault(c, np.zeros(len(eps_grid)))
            for k, eps in enumerate(eps_grid):
                acc[k] += scores(contingency(true, dbscan_class(ev.coords[idx], eps, min_samples)[keep]))[objective]
            counts[c] = counts.get(c, 0) + 1
    grid = pd.DataFrame([{"class": c, "eps": eps, "score": sums[c][k] / counts[c], "n": counts[c]}
                         for c in sorted(sums) for k, eps in enumerate(eps_grid)],
                        columns=["class", "eps", "score", "n"])
    best = choose(grid, ["eps"])
    return grid, {int(r["class"]): float(r.eps) for _, r in best.iterrows()}
