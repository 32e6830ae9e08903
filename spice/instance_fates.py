"""What became of each true instance in the greedy clustering: found once, split, or lost.

Per event and semantic class, on the voxels that are scored (SPEC §5: instances of ≥ min_voxels voxels),
every predicted cluster is given to the true instance that holds most of its voxels (its majority). A true
instance is then
- "found" when exactly one predicted cluster has it as majority,
- "split" when more than one has (over-splitting),
- "lost" when none has: its voxels went to clusters that belong to other instances (a merge).
A lost instance is put down to one of two causes of SPEC §4:
- "below s0": none of its voxels reaches the seed threshold s0, so it could never seed a cluster;
- "absorbed": it had seed candidates, but an earlier seed claimed them (p > p0) or outscored its own seed.
Each instance also gets the distance from its mean embedding μ_k to the nearest μ_l of another instance of
its class in the event (normalised units, SPEC §2; NaN when it is alone), and its margin σ_k. The inter-cluster loss asks for at
least 2δ between them: a lost instance far inside 2δ is one that the embedding itself merged.
These use the true instances: a diagnostic, not a result.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from spice.metrics import scoring_mask

FATES = ("found", "split", "lost")
COLUMNS = ["event", "class", "class_name", "instance", "voxels", "clusters", "fate", "below_s0",
           "neighbour_distance", "margin"]


def _majority(true: np.ndarray, pred: np.ndarray) -> dict[int, int]:
    """{predicted cluster: the true instance holding most of its voxels (ties: the lower id)}."""
    pairs, counts = np.unique(np.stack([pred, true]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))          # per cluster: largest count, then lower id
    first = np.unique(pairs[0][order], return_index=True)[1]
    return {int(pairs[0][order][i]): int(pairs[1][order][i]) for i in first}


def event_fates(event, outputs: Mapping, predicted: np.ndarray, thresholds: Mapping[int, tuple[float, float]],
                min_voxels: int = 10, event_id: int = 0) -> list[dict]:
    """One row (COLUMNS) per scored true instance of `event`.

    outputs: embedding (N,3), margin (N,), seediness (N,) of the network; predicted (N,) the labels of
    `spice.cluster.cluster_event` with `thresholds` {class: (s0, p0)}."""
    e = np.asarray(outputs["embedding"], dtype=np.float64)
    m = np.asarray(outputs["margin"], dtype=np.float64).reshape(-1)
    s = np.asarray(outputs["seediness"], dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted)
    keep = scoring_mask(event.instance, event.semantic, min_voxels)
    rows = []
    for c in np.unique(event.semantic[keep]):
        idx = np.flatnonzero(keep & (event.semantic == c))
        true, pred = event.instance[idx], predicted[idx]
        owners = list(_majority(true, pred).values())
        ids = np.unique(true)
        mu = np.stack([e[idx][true == k].mean(0) for k in ids])
        gap = np.sqrt(((mu[:, None, :] - mu[None]) ** 2).sum(-1))
        np.fill_diagonal(gap, np.inf)
        s0 = float(thresholds[int(c)][0])
        for j, k in enumerate(ids):
            own = true == k
            clusters = owners.count(int(k))
            rows.append({"event": event_id, "class": int(c), "class_name": event.labels[int(c)],
                         "instance": int(k), "voxels": int(own.sum()), "clusters": clusters,
                         "fate": FATES[0] if clusters == 1 else FATES[1] if clusters > 1 else FATES[2],
                         "below_s0": bool(s[idx][own].max() < s0),
                         "neighbour_distance": float(gap[j].min()) if len(ids) > 1 else np.nan, "margin": float(m[idx][own].mean())})
    return rows


def instance_fates(outputs: Sequence[Mapping], events: Sequence, predictions: Sequence[np.ndarray],
                   thresholds: Mapping[int, tuple[float, float]], min_voxels: int = 10) -> pd.DataFrame:
    """The rows of `event_fates` for every event (aligned sequences), as one frame."""
    rows = [r for i, (ev, o, p) in enumerate(zip(events, outputs, predictions))
            for r in event_fates(ev, o, p, thresholds, min_voxels, event_id=i)]
    return pd.DataFrame(rows, columns=COLUMNS)


def fates_table(frame: pd.DataFrame, delta: float) -> pd.DataFrame:
    """Per class: instances, shares found / split / lost, the share of lost ones below s0, and the median
    neighbour distance of found and of lost instances with the share of lost ones inside 2δ."""
    out = []
    for (c, name), g in frame.groupby(["class", "class_name"], sort=True):
        lost = g[g.fate == "lost"]
        found = g[g.fate == "found"]
        out.append({"class_name": name, "instances": len(g),
                    **{fate: float((g.fate == fate).mean()) for fate in FATES},
                    "lost: below s0": float(lost.below_s0.mean()) if len(lost) else np.nan,
                    "found: neighbour distance": float(found.neighbour_distance.median()) if len(found) else np.nan,
                    "lost: neighbour distance": float(lost.neighbour_distance.median()) if len(lost) else np.nan,
                    f"lost: inside 2δ = {2 * delta:g}": float((lost.neighbour_distance < 2 * delta).mean())
                    if len(lost) else np.nan})
    return pd.DataFrame(out).round(3)
