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
