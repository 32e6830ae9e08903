"""Per-class grid search of the clustering thresholds (s0, p0) on validation events (SPEC §4, Table II).

Network outputs are computed once per event and reused for the whole grid; for each p0 one greedy
pass clusters every s0 at once (the seeds for a larger s0 are a prefix of those for a smaller one).
Per class the chosen point maximises the mean objective over the validation events in which the
class is scored; ties (equal to 12 decimals) go to the smallest s0, then the smallest p0.

    spice tune --checkpoint C --data FILES --out thresholds.json [--grid-out grid.csv]
    torchrun --nproc-per-node N -m spice tune ...   # events sharded over N processes, rank 0 writes

The thresholds JSON is read and written by spice.evaluate (load_thresholds, save_thresholds; re-exported
here): tune depends on evaluate, never the reverse.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from spice import distributed
from spice.cluster import OUTPUT_KEYS, fit_predict_path
from spice.evaluate import SYMMETRIES_HELP, load_thresholds, predict, save_frame, save_thresholds
from spice.metrics import METRICS, contingency, scores, scoring_mask

__all__ = ["DEFAULT_P0", "DEFAULT_S0", "choose", "event_scores", "grid_search", "load_thresholds", "main",
           "save_thresholds", "scored_classes"]

DEFAULT_S0 = np.linspace(0.0, 1.0, 21)   # SPEC §4: s0 in [0, 1], steps of 0.05
DEFAULT_P0 = np.linspace(0.0, 0.6, 61)   # SPEC §4: p0 in [0, 0.6], steps of 0.01


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


def _outputs(model_or_outputs, events: Sequence, index: Sequence[int], device, progress: bool = False,
             symmetries: int = 1) -> list[dict]:
    """Output dicts of events[i] for i in `index`: from the model (run here) or picked from the list."""
    if isinstance(model_or_outputs, torch.nn.Module):
        model = model_or_outputs.to(device).eval()
        return [predict(model, events[i], device, symmetries) for i in tqdm(index, desc="network", leave=False,
                                                                disable=not progress)]
    outputs = list(model_or_outputs)
    if len(outputs) != len(events):
        raise ValueError(f"{len(outputs)} output dicts for {len(events)} events")
    return [outputs[i] for i in index]


def event_scores(event, outputs, s0_grid: Sequence[float], p0_grid: Sequence[float], objective: str = "sbd",
                 classes: Sequence[int] | None = None, min_voxels: int = 10) -> dict[int, np.ndarray]:
    """{class: (len(s0_grid), len(p0_grid)) objective at every grid point} for the classes scored in one event."""
    e, m, s = (torch.as_tensor(np.asarray(_np(outputs[k]))) for k in OUTPUT_KEYS)
    m, s = m.reshape(-1), s.reshape(-1)
    out = {}
    for c, idx, keep, true in scored_classes(event, min_voxels, classes):
        table = np.zeros((len(s0_grid), len(p0_grid)))
        for j, p0 in enumerate(p0_grid):
            for i, lab in enumerate(fit_predict_path(e[idx], m[idx], s[idx], s0_grid, p0)):
                table[i, j] = scores(contingency(true, lab.numpy()[keep]))[objective]
        out[c] = table
    return out


def grid_search(model_or_outputs, events: Sequence, s0_grid=DEFAULT_S0, p0_grid=DEFAULT_P0,
                objective: str = "sbd", classes: Sequence[int] | None = None, device="cpu",
                min_voxels: int = 10, progress: bool = False,
                symmetries: int = 1) -> tuple[pd.DataFrame, dict[int, tuple[float, float]]]:
    """Grid-search (s0, p0) per semantic class.

    model_or_outputs: a SPICE model (run once per event on `device`) or a list of per-event output
    dicts (embedding (N,3), margin (N,), seediness (N,)) aligned with `events`; a model's outputs are
    averaged over `symmetries` cube symmetries (spice.evaluate.forward_events). Voxels of each class
    are clustered as in evaluation and scored on `spice.metrics.scoring_mask` voxels.
    Returns (grid DataFrame [class, s0, p0, score, n] with the mean objective over the n events
    where the class is scored, {class: (s0, p0)}). In a process group (spice.distributed) the events
    are sharded over the ranks and the per-event scores summed in event order on every rank, so the
    result equals one process's exactly.
    """
    if objective not in METRICS:
        raise ValueError(f"objective must be one of {METRICS}, got {objective!r}")
    s0_grid, p0_grid = [float(x) for x in s0_grid], [float(x) for x in p0_grid]
    events = events if hasattr(events, "__getitem__") else list(events)  # lazy datasets stay lazy
    ctx = distributed.current()
    mine = distributed.shard(len(events), ctx)
    outputs = _outputs(model_or_outputs, events, mine, device, progress and ctx.is_main, symmetries)
    per_event = [(i, event_scores(events[i], out, s0_grid, p0_grid, objective, classes, min_voxels))
                 for i, out in tqdm(list(zip(mine, outputs)), disable=not (progress and ctx.is_main), desc="tune")]
    if ctx.distributed:
        per_event = sorted(distributed.gather(per_event, ctx), key=lambda t: t[0])
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for _, tables in per_event:
        for c, table in tables.items():
            sums[c] = sums[c] + table if c in sums else table.copy()
            counts[c] = counts.get(c, 0) + 1
    rows = [{"class": c, "s0": s0, "p0": p0, "score": sums[c][i, j] / counts[c], "n": counts[c]}
            for c in sorted(sums) for i, s0 in enumerate(s0_grid) for j, p0 in enumerate(p0_grid)]
    grid = pd.DataFrame(rows, columns=["class", "s0", "p0", "score", "n"])
    best = choose(grid, ["s0", "p0"])
    return grid, {int(r["class"]): (float(r.s0), float(r.p0)) for _, r in best.iterrows()}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spice tune", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", nargs="+", required=True, help="validation event files")
    ap.add_argument("--out", required=True, help="thresholds JSON to write")
    ap.add_argument("--grid-out", default=None, help="also write the full grid (.csv or .parquet)")
    ap.add_argument("--objective", default="sbd", choices=METRICS)
    ap.add_argument("--max-events", type=int, default=100, help="first N events (paper: 100)")
    ap.add_argument("--range", type=int, nargs=2, default=None, metavar=("START", "STOP"),
                    help="only events [START, STOP) of the files taken together (a split of them)")
    ap.add_argument("--s0-steps", type=int, default=len(DEFAULT_S0))
    ap.add_argument("--p0-steps", type=int, default=len(DEFAULT_P0))
    ap.add_argument("--min-voxels", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds a rank waits for the others (under torchrun / srun)")
    ap.add_argument("--symmetries", type=int, default=1, help=SYMMETRIES_HELP)
    args = ap.parse_args(argv)

    from spice.data import EventDataset
    from spice.train import load_model

    ctx, device = distributed.setup(args.device, args.timeout)
    try:
        dataset = EventDataset(args.data)
        first, stop = args.range if args.range is not None else (0, len(dataset))
        index = range(first, min(stop, len(dataset), first + args.max_events))
        events = torch.utils.data.Subset(dataset, index)  # each rank reads only its own events
        model = load_model(args.checkpoint, device=device)
        grid, thresholds = grid_search(model, events, np.linspace(0, 1, args.s0_steps),
                                       np.linspace(0, 0.6, args.p0_steps), objective=args.objective,
                                       device=device, min_voxels=args.min_voxels, progress=True,
                                       symmetries=args.symmetries)
    except (distributed.DistError, RuntimeError) as err:
        if not distributed.collective_failed(err):
            raise
        distributed.fail("spice tune", err)
    if ctx.is_main:
        labels = list(events[0].labels) if events else []
        save_thresholds(thresholds, args.out, objective=args.objective, n_events=len(events), labels=labels,
                        checkpoint=str(args.checkpoint), symmetries=args.symmetries)
        if args.grid_out:
            save_frame(grid, args.grid_out)
        print(choose(grid, ["s0", "p0"]).to_string(index=False))
    distributed.teardown()
    return 0
