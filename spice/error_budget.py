"""Where the clustering loses ARI: the network's result beside oracles that know the true instances.

Per semantic class, on the same events and network outputs (SPEC §4 clustering, §5 scoring):
1. "network": the greedy clustering with the tuned thresholds (the evaluated result);
2. "network, best thresholds": the same, at the best (s0, p0) of a coarse grid on these very events
   (an upper bound on what tuning can give);
3. "target seediness": the seediness replaced by its training target (SPEC §2: each voxel's score
   p_ik for the centroid and mean margin of its own true instance), best grid point: what perfect
   seeds would give with the network's embedding and margins;
4. "nearest centroid": each voxel to the true instance of its class with the highest score p_ik:
   what the embedding allows when the instances' centroids are known.
The gaps read as: 1→2 thresholds, 2→3 seediness, 3→4 clustering around a seed voxel rather than the
centroid, 4→1.0 the embedding itself. Rows 2-4 use the true instances: a diagnostic, not a result.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from spice.cluster import cluster_event
from spice.metrics import score_event
from spice.tune import choose, grid_search

GRID_S0 = np.linspace(0.0, 1.0, 11)
GRID_P0 = np.linspace(0.0, 0.6, 13)
STEPS = ("network", "network, best thresholds", "target seediness", "nearest centroid")


def instance_scores(event, outputs: Mapping) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per (class, true instance ≥ 0): (voxel indices of the class (n,), instance ids (K,),
    scores p_ik (n, K) = exp(−‖e_i − μ_k‖² / (2 σ_k²)) with μ_k, σ_k the instance's mean embedding and margin)."""
    e = np.asarray(outputs["embedding"], dtype=np.float64)
    m = np.asarray(outputs["margin"], dtype=np.float64).reshape(-1)
    out = []
    for c in np.unique(event.semantic):
        idx = np.flatnonzero(event.semantic == c)
        inst = event.instance[idx]
        ids = np.unique(inst[inst >= 0])
        if len(ids) == 0:
            continue
        mu = np.stack([e[idx][inst == k].mean(0) for k in ids])
        sigma = np.array([m[idx][inst == k].mean() for k in ids])
        d2 = ((e[idx][:, None, :] - mu[None]) ** 2).sum(-1)
        out.append((idx, ids, np.exp(-d2 / (2 * sigma[None] ** 2))))
    return out


def target_seediness(event, outputs: Mapping) -> np.ndarray:
    """(N,) the seediness target of every voxel: p_ik of its own true instance k (0 where instance < 0)."""
    target = np.zeros(len(event.semantic), dtype=np.float32)
    for idx, ids, p in instance_scores(event, outputs):
        inst = event.instance[idx]
        own = np.searchsorted(ids, inst)
        labelled = inst >= 0
        target[idx[labelled]] = p[np.flatnonzero(labelled), own[labelled]]
    return target


def nearest_centroid(event, outputs: Mapping) -> np.ndarray:
    """(N,) labels: each voxel the true instance of its class with the highest p_ik (−1: class without
    labelled voxels)."""
    labels = np.full(len(event.semantic), -1, dtype=np.int64)
    for idx, ids, p in instance_scores(event, outputs):
        labels[idx] = ids[p.argmax(1)]
    return labels


def _mean_ari(events: Sequence, predictions: Sequence[np.ndarray], min_voxels: int) -> pd.Series:
    rows = [r for ev, pred in zip(events, predictions)
            for r in score_event(ev.instance, pred, ev.semantic, min_voxels=min_voxels, labels=ev.labels)]
    return pd.DataFrame(rows).groupby("class")["ari"].mean()


def _best_ari(events: Sequence, outputs: Sequence[Mapping], min_voxels: int) -> pd.Series:
    grid, _ = grid_search(list(outputs), events, GRID_S0, GRID_P0, objective="ari", min_voxels=min_voxels)
    return choose(grid, ["s0", "p0"]).set_index("class")["score"]


def error_budget(outputs: Sequence[Mapping], events: Sequence, thresholds: Mapping[int, tuple[float, float]],
                 min_voxels: int = 10) -> pd.DataFrame:
    """Mean ARI per class at each step of STEPS: columns [step, class, class_name, ari].

    outputs: per-event network outputs (embedding (N,3), margin (N,), seediness (N,)), aligned with
    `events`; thresholds: the tuned {class: (s0, p0)} of step 1."""
    events = list(events)
    outputs = [{k: np.asarray(o[k]) for k in ("embedding", "margin", "seediness")} for o in outputs]
    targets = [dict(o, seediness=target_seediness(ev, o)) for ev, o in zip(events, outputs)]
    steps = {
        STEPS[0]: _mean_ari(events, [np.asarray(cluster_event(o, ev.semantic, thresholds))
                                     for ev, o in zip(events, outputs)], min_voxels),
        STEPS[1]: _best_ari(events, outputs, min_voxels),
        STEPS[2]: _best_ari(events, targets, min_voxels),
        STEPS[3]: _mean_ari(events, [nearest_centroid(ev, o) for ev, o in zip(events, outputs)], min_voxels),
    }
    labels = events[0].labels
    rows = [{"step": step, "class": int(c), "class_name": labels[int(c)], "ari": float(a)}
            for step, series in steps.items() for c, a in series.items()]
    return pd.DataFrame(rows, columns=["step", "class", "class_name", "ari"])


def budget_table(budgets: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Wide table: one row per (network, step), one ARI column per class."""
    parts = []
    for name, frame in budgets.items():
        wide = frame.pivot(index="step", columns="class_name", values="ari").reindex(list(STEPS))
        classes = frame.drop_duplicates("class").sort_values("class")["class_name"].tolist()
        parts.append(wide[classes].reset_index().assign(network=name))
    table = pd.concat(parts, ignore_index=True)
    return table[["network", "step", *[c for c in table.columns if c not in ("network", "step")]]].round(3)
