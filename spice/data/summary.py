"""Per-class dataset statistics in the form of the paper's Table I."""
from __future__ import annotations

import numpy as np
import pandas as pd

from spice.data.event import Event

COLUMNS = ["class", "n_instances", "n_events", "mean_instances_per_event", "std_instances_per_event", "n_voxels"]


def summary(events: list[Event]) -> pd.DataFrame:
    """One row per semantic class: instances (distinct (event, class, instance >= 0)), events
    containing the class (any voxel of it), mean and std (ddof=0) of instances per event over those
    events, and voxels of the class (instance −1 included). All events must share a label convention.
    """
    conventions = {tuple(e.labels) for e in events}
    if len(conventions) > 1:
        raise ValueError(f"events mix label conventions {conventions}")
    if not events:
        return pd.DataFrame(columns=COLUMNS)
    labels = conventions.pop()
    per_event = np.zeros((len(events), len(labels)), dtype=np.int64)  # instances per event and class
    present = np.zeros((len(events), len(labels)), dtype=bool)
    voxels = np.zeros(len(labels), dtype=np.int64)
    for i, e in enumerate(events):
        voxels += np.bincount(e.semantic, minlength=len(labels))[:len(labels)]
        present[i] = np.bincount(e.semantic, minlength=len(labels))[:len(labels)] > 0
        labelled = e.instance >= 0
        pairs = np.unique(np.stack([e.semantic[labelled], e.instance[labelled]], axis=1), axis=0)
        per_event[i] = np.bincount(pairs[:, 0], minlength=len(labels))[:len(labels)]
    rows = []
    for c, name in enumerate(labels):
        counts = per_event[present[:, c], c]
        rows.append({"class": name, "n_instances": int(per_event[:, c].sum()), "n_events": int(present[:, c].sum()),
                     "mean_instances_per_event": float(counts.mean()) if len(counts) else float("nan"),
                     "std_instances_per_event": float(counts.std()) if len(counts) else float("nan"),
                     "n_voxels": int(voxels[c])})
    return pd.DataFrame(rows, columns=COLUMNS)


def _principal_extent(coords: np.ndarray) -> float:
    """Extent (voxels) of a point set along its principal axis."""
    if len(coords) < 2:
        return 0.0
    c = coords - coords.mean(0)
    axis = np.linalg.svd(c, full_matrices=False)[2][0]
    return float(np.ptp(c @ axis))


def _neighbour_degree(coords: np.ndarray) -> np.ndarray:
    """(N,) number of occupied 26-neighbours of every voxel of one event."""
    from scipy.spatial import cKDTree
    tree = cKDTree(coords)
    return np.array([len(n) - 1 for n in tree.query_ball_point(coords, r=np.sqrt(3) + 1e-6, p=2)])


def fragments(coords: np.ndarray) -> np.ndarray:
    """(K,) voxel counts of the 26-connected pieces of one point set (N, 3), largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree
    if len(coords) == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(coords).query_pairs(r=np.sqrt(3) + 1e-6, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(coords),) * 2)
    _, piece = connected_components(graph, directed=False)
    return np.sort(np.bincount(piece))[::-1]


INSTANCE_COLUMNS = ["class", "class_name", "voxels", "energy_mev", "length_cm", "fragments", "outside_largest"]


def statistics(events: list[Event]) -> dict[str, pd.DataFrame]:
    """Per-event and per-instance statistics: {"events": [voxels, energy_median_mev, degree_mean,
    fraction_<class>...], "instances": INSTANCE_COLUMNS}, "voxels": [energy_mev, degree] (one row per
    voxel). Instances are labelled (instance >= 0) (class, instance) pairs; energy_mev is their deposit;
    length_cm is the extent along the principal axis times the 0.3 cm voxel pitch; fragments counts
    their 26-connected pieces and outside_largest is the share of their voxels outside the largest."""
    from spice.data.event import VOXEL_SIZE_CM
    labels = events[0].labels if events else ()
    ev_rows, inst_rows, vox = [], [], []
    for e in events:
        degree = _neighbour_degree(e.coords) if len(e) else np.empty(0)
        counts = np.bincount(e.semantic, minlength=len(labels))[:len(labels)]
        ev_rows.append({"voxels": len(e), "energy_median_mev": float(np.median(e.energy)) if len(e) else np.nan,
                        "degree_mean": float(degree.mean()) if len(e) else np.nan,
                        **{f"fraction_{n}": counts[c] / max(len(e), 1) for c, n in enumerate(labels)}})
        vox.append(pd.DataFrame({"energy_mev": e.energy, "degree": degree}))
        for c in np.unique(e.semantic).tolist():
            m = e.semantic == c
            for i in np.unique(e.instance[m & (e.instance >= 0)]).tolist():
                mi = m & (e.instance == i)
                pts = e.coords[mi].astype(float)
                pieces = fragments(pts)
                inst_rows.append({"class": c, "class_name": labels[c], "voxels": len(pts),
                                  "energy_mev": float(e.energy[mi].sum()),
                                  "length_cm": _principal_extent(pts) * VOXEL_SIZE_CM, "fragments": len(pieces),
                                  "outside_largest": 1.0 - pieces[0] / len(pts)})
    return {"events": pd.DataFrame(ev_rows), "instances": pd.DataFrame(inst_rows, columns=INSTANCE_COLUMNS),
            "voxels": pd.concat(vox, ignore_index=True) if vox else pd.DataFrame(columns=["energy_mev", "degree"])}


def compare(real: list[Event], generated: list[Event]) -> pd.DataFrame:
    """The real sample beside generated events of the same grid, one row per quantity: [quantity, real,
    generated, ratio (generated / real)]. Medians unless stated; instances per event count the events
    holding the class; fragments per 100 MeV are summed over the class's instances; track lengths are of
    HIP and MIP (track) instances."""
    labels = real[0].labels
    if tuple(generated[0].labels) != tuple(labels):
        raise ValueError(f"label conventions differ: {labels} vs {generated[0].labels}")
    a, b = statistics(real), statistics(generated)
    rows = [("voxels per event (median)", a["events"].voxels.median(), b["events"].voxels.median()),
            ("energy per voxel, MeV (median)", a["voxels"].energy_mev.median(), b["voxels"].energy_mev.median()),
            ("occupied 26-neighbours per voxel (mean)", a["voxels"].degree.mean(), b["voxels"].degree.mean())]
    for c, name in enumerate(labels):
        frac = lambda s: s["events"][f"fraction_{name}"].mul(s["events"].voxels).sum() / s["events"].voxels.sum()
        rows.append((f"{name}: share of voxels", frac(a), frac(b)))
    for c, name in enumerate(labels):
        ia, ib = a["instances"][a["instances"]["class"] == c], b["instances"][b["instances"]["class"] == c]
        per_event = lambda inst, s: len(inst) / max(int((s["events"][f"fraction_{name}"] > 0).sum()), 1)
        rows.append((f"{name}: instances per event holding it (mean)", per_event(ia, a) if len(ia) else np.nan,
                     per_event(ib, b) if len(ib) else np.nan))
        rows.append((f"{name}: instance size, voxels (median)", ia.voxels.median() if len(ia) else np.nan,
                     ib.voxels.median() if len(ib) else np.nan))
    for c, name in enumerate(labels):  # how far an instance is broken up: showers shed Compton blips
        ia, ib = a["instances"][a["instances"]["class"] == c], b["instances"][b["instances"]["class"] == c]
        per_100 = lambda inst: 100.0 * inst.fragments.sum() / inst.energy_mev.sum() if len(inst) else np.nan
        rows.append((f"{name}: 26-connected fragments per 100 MeV", per_100(ia), per_100(ib)))
        rows.append((f"{name}: share of an instance outside its largest fragment (mean)",
                     ia.outside_largest.mean() if len(ia) else np.nan, ib.outside_largest.mean() if len(ib) else np.nan))
    tracks = [c for c, n in enumerate(labels) if n in ("HIP", "MIP", "track")]
    for c in tracks:
        ia, ib = a["instances"][a["instances"]["class"] == c], b["instances"][b["instances"]["class"] == c]
        rows.append((f"{labels[c]}: track length, cm (median)", ia.length_cm.median() if len(ia) else np.nan,
                     ib.length_cm.median() if len(ib) else np.nan))
    out = pd.DataFrame(rows, columns=["quantity", "real", "generated"])
    out["ratio"] = (out["generated"] / out["real"]).where(out["real"] > 0)
    return out
