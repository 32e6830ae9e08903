"""Learning curves: weights snapshots taken along training (`snapshot_every`), each scored on
validation events, per class, against iteration and against training wall time.

Every snapshot gets its own thresholds: the best point of a coarse (s0, p0) grid on the same
validation events (spice.tune.grid_search), so an early snapshot is not judged with thresholds made
for the final network. The curve is a convergence diagnostic, not a test-set result.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from spice.train import load_model
from spice.tune import choose, grid_search

CURVE_S0 = np.linspace(0.0, 1.0, 11)
CURVE_P0 = np.linspace(0.0, 0.6, 13)
COLUMNS = ["iteration", "seconds", "class", "class_name", "ari", "n_events"]


def snapshots(run_dir) -> list[Path]:
    """The weights snapshots of a training run (run_dir/snapshots/model_<iteration>.pt), by iteration."""
    paths = sorted(Path(run_dir, "snapshots").glob("model_*.pt"))
    return sorted(paths, key=lambda p: int(re.search(r"(\d+)", p.stem).group(1)))


def learning_curve(paths: Sequence[Path], events: Sequence, losses: pd.DataFrame | None = None,
                   s0_grid=CURVE_S0, p0_grid=CURVE_P0, device="cpu", progress: bool = False) -> pd.DataFrame:
    """One row per (snapshot, class): mean ARI over the validation `events` holding the class, at the
    snapshot's best grid point. `seconds` is the training wall time up to that iteration, summed from
    the run's losses.csv (`losses`; NaN without it)."""
    elapsed = losses.set_index("iteration")["seconds"].cumsum() if losses is not None else None
    labels = events[0].labels
    rows = []
    for path in paths:
        model = load_model(path, device)
        iteration = int(re.search(r"(\d+)", Path(path).stem).group(1))
        grid, _ = grid_search(model, events, s0_grid, p0_grid, objective="ari", device=device, progress=progress)
        for _, r in choose(grid, ["s0", "p0"]).iterrows():
            rows.append({"iteration": iteration,
                         "seconds": float(elapsed.get(iteration, np.nan)) if elapsed is not None else np.nan,
                         "class": int(r["class"]), "class_name": labels[int(r["class"])], "ari": float(r["score"]),
                         "n_events": int(r["n"])})
    return pd.DataFrame(rows, columns=COLUMNS)
