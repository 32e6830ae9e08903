"""Find one example of each failure mode of the paper's Figures 12-16 in evaluated events.

Input per event: a dict with `coords` (N,3) voxels, `semantic` (N,), `instance` (N,) true ids,
`pred` (N,) predicted ids, `embedding` (N,3), `margin` (N,), `labels` (class names). Everything is
judged per semantic class on true instances with at least `min_voxels` voxels (as the metrics do).

Modes (figure: rule; the highest score wins):
- 12 long track split: a track instance whose largest predicted cluster holds < 80% of it; score = extent.
- 13 co-linear tracks merged: two track instances mostly in one predicted cluster, embeddings not
  separated (centroid distance < mean margin); score = |cos| of their principal directions.
- 14 post-processing merge: two instances mostly in one predicted cluster although their embedding
  centroids are separated (distance > margin); score = distance / margin.
- 15 overlapping showers merged: two shower instances mostly in one predicted cluster; score = voxels.
- 16 shower deposits split off: predicted shower clusters that are small fragments (< 20% of a true
  instance, which a larger cluster dominates); score = number of such fragments.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

TRACKS = {"HIP", "MIP", "track"}
SHOWERS = {"Shower", "shower"}
MODES = {12: "long track split", 13: "co-linear tracks merged", 14: "post-processing merge",
         15: "overlapping showers merged", 16: "low-energy shower deposits split off"}


def _principal_direction(xyz: np.ndarray) -> np.ndarray:
    centred = xyz - xyz.mean(axis=0)
    return np.linalg.svd(centred, full_matrices=False)[2][0] if len(xyz) > 1 else np.zeros(3)


def _class_candidates(event_id, name: str, c: int, p: dict, mask: np.ndarray, min_voxels: int) -> list[dict]:
    true, pred = p["instance"][mask], p["pred"][mask]
    xyz, emb, margin = p["coords"][mask].astype(float), p["embedding"][mask], p["margin"][mask]
    ids, sizes = np.unique(true[true >= 0], return_counts=True)
    ids = ids[sizes >= min_voxels]
    info = {}
    for t in ids:
        sel = true == t
        clusters, counts = np.unique(pred[sel], return_counts=True)
        info[t] = {"sel": sel, "n": int(sel.sum()), "main": clusters[counts.argmax()],
                   "main_frac": counts.max() / sel.sum(), "centroid": emb[sel].mean(axis=0),
                   "margin": float(margin[sel].mean()),
                   "extent": float(np.linalg.norm(xyz[sel] - xyz[sel].mean(axis=0), axis=1).std())}
    base = {"event": event_id, "class": c, "class_name": name}
    out = []
    if name in TRACKS:
        for t, d in info.items():
            if d["main_frac"] < 0.8:
                out.append({**base, "figure": 12, "score": d["extent"], "instances": [int(t)]})
    merged = [(a, b) for a, b in combinations(info, 2)
              if info[a]["main"] == info[b]["main"] and info[a]["main_frac"] >= 0.5 and info[b]["main_frac"] >= 0.5]
    for a, b in merged:
        dist = float(np.linalg.norm(info[a]["centroid"] - info[b]["centroid"]))
        sigma = max(0.5 * (info[a]["margin"] + info[b]["margin"]), 1e-6)
        pair = [int(a), int(b)]
        if name in TRACKS and dist < sigma:
            cos = abs(float(_principal_direction(xyz[info[a]["sel"]]) @ _principal_direction(xyz[info[b]["sel"]])))
            out.append({**base, "figure": 13, "score": cos, "instances": pair})
        if dist > sigma:
            out.append({**base, "figure": 14, "score": dist / sigma, "instances": pair})
        if name in SHOWERS:
            out.append({**base, "figure": 15, "score": float(info[a]["n"] + info[b]["n"]), "instances": pair})
    if name in SHOWERS:
        fragments, owners = 0, []
        for t, d in info.items():
            clusters, counts = np.unique(pred[d["sel"]], return_counts=True)
            small = (clusters != d["main"]) & (counts < 0.2 * d["n"])
            # a fragment is a predicted cluster living (mostly) inside this instance
            for k in clusters[small]:
                if np.mean(true[pred == k] == t) >= 0.5:
                    fragments += 1
                    owners.append(int(t))
        if fragments:
            out.append({**base, "figure": 16, "score": float(fragments), "instances": sorted(set(owners))})
    return out


def find_failures(predictions: dict, frame: pd.DataFrame | None = None, min_voxels: int = 10) -> pd.DataFrame:
    """One row per failure mode found (best example): figure, mode, event, class, class_name, score, instances.

    `predictions` maps event id -> per-event dict (see module doc). If `frame` (the per-event evaluation
    frame) is given, only (event, class) entries with ARI < 1 are searched.
    """
    imperfect = None
    if frame is not None:
        imperfect = set(map(tuple, frame.loc[frame["ari"] < 1, ["event", "class"]].to_numpy().tolist()))
    found = []
    for event_id, p in predictions.items():
        for c in np.unique(p["semantic"]):
            if imperfect is not None and (event_id, int(c)) not in imperfect:
                continue
            found += _class_candidates(event_id, p["labels"][int(c)], int(c), p, p["semantic"] == c, min_voxels)
    columns = ["figure", "mode", "event", "class", "class_name", "score", "instances"]
    if not found:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(found)
    df["mode"] = df["figure"].map(MODES)
    best = df.sort_values(["figure", "score"], ascending=[True, False]).groupby("figure").head(1)
    return best[columns].reset_index(drop=True)
