"""Per-class grid search of the clustering thresholds (s0, p0) on validation events (SPEC §4, Table II).

Network outputs are computed once per event and reused for the whole grid; for each p0 one greedy
pass clusters every s0 at once (the seeds for a larger s0 are a prefix of those for a smaller one).
Per class the chosen point maximises the mean objective over the validation events in which the
class is scored; ties (equal to 12 decimals) go to the smallest s0, then the smallest p0.

    spice tune --checkpoint C --data FILES --out thresholds.json [--grid-out grid.csv]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spice.cluster import OUTPUT_KEYS, fit_predict_path
from spice.metrics import METRICS, contingency, scores, scoring_mask

DEFAULT_S0 = np.linspace(0.0, 1.0, 21)
DEFAULT_P0 = np.linspace(0.01, 0.6, 60)


def choose(grid: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Best row per class of a grid [class, *params, score, n]: highest score (rounded to 12 decimals),
    ties to the smallest params in the given order."""
    g = grid.assign(_r=-grid["score"].round(12)).sort_values(["class", "_r", *params], kind="stable")
    return g.groupby("class", sort=True).head(1).drop(columns="_r").reset_index(drop=True)


def scored_classes(event, min_voxels: int = 10, classes: Sequence[int] | None = None):
    """Yield (class, voxel indices (n,), keep mask (n,), true instance of the kept voxels) for every
    class of `event` that has voxels left to score after `spice.metrics.scoring_mask`."""
    scored = scoring_mask(event.instance, event.semantic, min_voxels)
    for c in np.unique(event.semantic).tolist():
        if classes is not None and c not in classes:
            continue
        idx = np.flatnonzero(event.semantic == c)
        keep = scored[idx]
        if keep.any():
            yield c, idx, keep, event.instance[idx][keep]


def _outputs(model_or_outputs, events: Sequence, device, progress: bool = False) -> list[dict]:
    if isinstance(model_or_outputs, torch.nn.Module):
        from spice.evaluate import predict
        model = model_or_outputs.to(device).eval()
        return [predict(model, ev, device) for ev in tqdm(events, desc="network", leave=False,
                                                                  disable=not progress)]
    outputs = list(model_or_outputs)
    if len(outputs) != len(events):
        raise ValueError(f"{len(outputs)} output dicts for {len(events)} events")
    return outputs


def grid_search(model_or_outputs, events: Sequence, s0_grid=DEFAULT_S0, p0_grid=DEFAULT_P0,
                objective: str = "sbd", classes: Sequence[int] | None = None, device="cpu",
                min_voxels: int = 10, progress: bool = False) -> tuple[pd.DataFrame, dict[int, tuple[float, float]]]:
    """Grid-search (s0, p0) per semantic class.

    model_or_outputs: a SPICE model (run once per event on `device`) or a list of per-event output
    dicts (embedding (N,3), margin (N,), seediness (N,)) aligned with `events`. Voxels of each class
    are clustered as in evaluation and scored on `spice.metrics.scoring_mask` voxels.
    Returns (grid DataFrame [class, s0, p0, score, n] with the mean objective over the n events
    where the class is scored, {class: (s0, p0)}).
    """
    if objective not in METRICS:
        raise ValueError(f"objective must be one of {METRICS}, got {objective!r}")
    s0_grid, p0_grid = [float(x) for x in s0_grid], [float(x) for x in p0_grid]
    events = list(events)
    outputs = _outputs(model_or_outputs, events, device, progress)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for ev, out in tqdm(list(zip(events, outputs)), disable=not progress, desc="tune"):
        e, m, s = (torch.as_tensor(np.asarray(_np(out[k]))) for k in OUTPUT_KEYS)
        m, s = m.reshape(-1), s.reshape(-1)
        for c, idx, keep, true in scored_classes(ev, min_voxels, classes):
            table = sums.setdefault(c, np.zeros((len(s0_grid), len(p0_grid))))
            for j, p0 in enumerate(p0_grid):
                for i, lab in enumerate(fit_predict_path(e[idx], m[idx], s[idx], s0_grid, p0)):
                    table[i, j] += scores(contingency(true, lab.numpy()[keep]))[objective]
            counts[c] = counts.get(c, 0) + 1
    rows = [{"class": c, "s0": s0, "p0": p0, "score": sums[c][i, j] / counts[c], "n": counts[c]}
            for c in sorted(sums) for i, s0 in enumerate(s0_grid) for j, p0 in enumerate(p0_grid)]
    grid = pd.DataFrame(rows, columns=["class", "s0", "p0", "score", "n"])
    best = choose(grid, ["s0", "p0"])
    return grid, {int(r["class"]): (float(r.s0), float(r.p0)) for _, r in best.iterrows()}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def save_thresholds(thresholds: Mapping[int, tuple[float, float]], path, **meta) -> Path:
    """Write {"thresholds": {"<class>": [s0, p0]}, **meta} as JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"thresholds": {str(int(c)): [float(s0), float(p0)] for c, (s0, p0) in sorted(thresholds.items())},
           **meta}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, path)
    return path


def load_thresholds(path) -> dict[int, tuple[float, float]]:
    """Read thresholds JSON ({"thresholds": {class: [s0, p0]}} or the bare mapping) -> {class: (s0, p0)}."""
    doc = json.loads(Path(path).read_text())
    table = doc.get("thresholds", doc)
    try:
        return {int(c): (float(v[0]), float(v[1])) for c, v in table.items()}
    except (TypeError, ValueError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: thresholds must map class ids to [s0, p0] ({err})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spice tune", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="validation event files")
    ap.add_argument("--out", required=True, help="thresholds JSON to write")
    ap.add_argument("--grid-out", default=None, help="also write the full grid (.csv or .parquet)")
    ap.add_argument("--objective", default="sbd", choices=METRICS)
    ap.add_argument("--max-events", type=int, default=100, help="first N events (paper: 100)")
    ap.add_argument("--s0-steps", type=int, default=len(DEFAULT_S0))
    ap.add_argument("--p0-steps", type=int, default=len(DEFAULT_P0))
    ap.add_argument("--min-voxels", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    from spice.data import EventDataset
    from spice.evaluate import save_frame
    from spice.train import load_model

    dataset = EventDataset(args.data)
    events = [dataset[i] for i in range(min(args.max_events, len(dataset)))]
    model = load_model(args.checkpoint, device=args.device)
    grid, thresholds = grid_search(model, events, np.linspace(0, 1, args.s0_steps),
                                   np.linspace(0.01, 0.6, args.p0_steps), objective=args.objective,
                                   device=args.device, min_voxels=args.min_voxels, progress=True)
    labels = list(events[0].labels) if events else []
    save_thresholds(thresholds, args.out, objective=args.objective, n_events=len(events), labels=labels,
                    checkpoint=str(args.checkpoint))
    if args.grid_out:
        save_frame(grid, args.grid_out)
    best = choose(grid, ["s0", "p0"])
    print(best.to_string(index=False))
    return 0
