"""Evaluate a trained SPICE model on a dataset into the per-(event, class) frame of every result figure.

Frame columns (FRAME_COLUMNS): event, source, class, class_name, ari, purity, efficiency, sbd, n_true,
n_pred, n_voxels, net_time_s, cluster_time_s, device, method. Clustering uses the true semantic
labels (SPEC §5) and per-class thresholds {class: (s0, p0)} from `spice tune`.

    spice evaluate --checkpoint C --data FILES --thresholds T.json --out frame.csv
    torchrun --nproc-per-node N -m spice evaluate ...   # sharded over N processes, rank 0 writes the frame
    spice evaluate ... --symmetries 8                   # outputs averaged over the cube's 8 reflections
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from spice import distributed
from spice.augment import N_SYMMETRIES, symmetry, unsymmetry_points
from spice.cluster import OUTPUT_KEYS, cluster_event
from spice.data.event import Event, collate
from spice.metrics import score_event

SYMMETRIES_HELP = ("average the network's outputs over the first K of the cube's 48 symmetries "
                   "(1: off, as in the paper; 8: the reflections; K times the network time)")
FRAME_COLUMNS = ("event", "source", "class", "class_name", "ari", "purity", "efficiency", "sbd", "n_true",
                 "n_pred", "n_voxels", "net_time_s", "cluster_time_s", "device", "method")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def forward_events(model: torch.nn.Module, events: Sequence[Event], device="cpu",
                   symmetries: int = 1) -> tuple[list[dict], float]:
    """Run the network on the collated events; returns per-event dicts of torch tensors on `device`
    (embedding (N,3), margin (N,), seediness (N,)) and the wall time of the forward(s) (s).

    symmetries = K > 1 runs it K times, on the images of the events under the first K cube symmetries
    (spice.augment.symmetry; K = 8: the 8 reflections, 48: all), maps each embedding back to the
    events' frame (spice.augment.unsymmetry_points) and averages embedding, margin and seediness."""
    if not 1 <= symmetries <= N_SYMMETRIES:
        raise ValueError(f"symmetries must be in 1..{N_SYMMETRIES}, got {symmetries}")
    events = list(events)
    half = getattr(model, "spatial_size", events[0].spatial_size if events else 0) / 2
    sums, dt = None, 0.0
    for k in range(symmetries):
        shown = events if k == 0 else [replace(ev, coords=symmetry(ev.coords, k, ev.spatial_size)) for ev in events]
        batch = collate(shown).to(device)
        with torch.no_grad():
            _sync(device)
            t0 = time.perf_counter()
            out = model(batch)
            _sync(device)
            dt += time.perf_counter() - t0
            emb = out["embedding"].float()
            if k:
                emb = unsymmetry_points(emb, k, batch.spatial_size, half)
        parts = (emb, out["margin"].reshape(-1).float(), out["seediness"].reshape(-1).float())
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts))
    emb, margin, seed = (x / symmetries for x in sums) if symmetries > 1 else sums
    off = batch.offsets.tolist()
    per_event = []
    for b in range(len(events)):
        sl = slice(off[b], off[b + 1])
        per_event.append({"embedding": emb[sl], "margin": margin[sl], "seediness": seed[sl]})
    return per_event, dt


def _numpy(outputs: Mapping) -> dict:
    return {k: outputs[k].detach().cpu().numpy() for k in OUTPUT_KEYS}


def predict(model: torch.nn.Module, event: Event, device="cpu", symmetries: int = 1) -> dict:
    """Network outputs of one event as numpy: embedding (N,3), margin (N,), seediness (N,), plus
    net_time_s (float, CUDA-synchronised wall time of the forward). The model must be on `device`;
    `symmetries` as in `forward_events`."""
    (out,), dt = forward_events(model, [event], device, symmetries)
    return {**_numpy(out), "net_time_s": dt}


def predict_and_cluster(model: torch.nn.Module, event: Event, thresholds: Mapping, device="cpu",
                        symmetries: int = 1) -> tuple[dict, np.ndarray]:
    """(outputs as in `predict`, predicted instance labels (N,) int64) for displays."""
    out = predict(model, event, device, symmetries)
    return out, cluster_event(out, event.semantic, thresholds)


def event_rows(event: Event, index: int, pred: np.ndarray, *, net_time_s: float, cluster_time_s: float,
               device: str, method: str, min_voxels: int = 10) -> list[dict]:
    """Frame rows (FRAME_COLUMNS) of one event's predicted instances; shared with the baseline."""
    path, entry = event.source
    rows = score_event(event.instance, pred, event.semantic, min_voxels=min_voxels, labels=event.labels)
    common = {"event": index, "source": f"{path}:{entry}", "net_time_s": net_time_s,
              "cluster_time_s": cluster_time_s, "device": str(device), "method": method}
    return [{**r, **common} for r in rows]


def frame(rows: list[dict]) -> pd.DataFrame:
    """DataFrame with FRAME_COLUMNS in order (empty frame with those columns if no rows)."""
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def evaluate(model: torch.nn.Module, dataset, thresholds: Mapping, device="cpu", min_voxels: int = 10,
             batch_size: int = 1, progress: bool = True, symmetries: int = 1) -> pd.DataFrame:
    """One row per (event, class) for every event of `dataset` (indexable, `len`, [i] -> Event).
    `symmetries` > 1 averages the network's outputs over that many cube symmetries (`forward_events`).

    The network runs on batches of `batch_size` consecutive events; each event's net_time_s is its
    batch's time divided by the batch size. Clustering runs on `device` (CUDA-synchronised
    cluster_time_s). In a process group (spice.distributed) batch k runs on rank k mod world_size and
    every rank returns the whole frame, equal row for row to one process's (timings apart).
    """
    model = model.to(device).eval()
    ctx = distributed.current()
    n = len(dataset)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    rows: list[dict] = []
    for idx in tqdm(batches[ctx.rank::ctx.world_size], disable=not (progress and ctx.is_main), desc="evaluate",
                    unit="batch"):
        events = [dataset[i] for i in idx]
        outs, dt = forward_events(model, events, device, symmetries)
        for i, ev, out in zip(idx, events, outs):
            _sync(device)
            t0 = time.perf_counter()
            pred = cluster_event(out, torch.from_numpy(ev.semantic), thresholds)
            _sync(device)
            ct = time.perf_counter() - t0
            rows += event_rows(ev, i, pred.cpu().numpy(), net_time_s=dt / len(events), cluster_time_s=ct,
                               device=str(device), method="spice", min_voxels=min_voxels)
    if ctx.distributed:  # stable sort: each event's rows keep their order
        rows = sorted(distributed.gather(rows, ctx), key=lambda r: r["event"])
    return frame(rows)


def instance_table(event: Event, outputs: Mapping, event_id: int | None = None) -> pd.DataFrame:
    """One row per true (class, instance ≥ 0) of the event, for Figure 6 (margin vs extent).

    Columns: event, class, instance, n_voxels, extent_voxels (std of the voxels' distances to the
    instance centre, voxel units), mean_margin (normalised units, as the network outputs it),
    mean_margin_voxels (= mean_margin · L/2, the same margin in voxel units).
    """
    margin = np.asarray(_numpy_any(outputs["margin"]), dtype=np.float64).reshape(-1)
    if margin.shape != (len(event),):
        raise ValueError(f"{event.source}: margin has {margin.size} values for {len(event)} voxels")
    keep = event.instance >= 0
    sem, inst = event.semantic[keep], event.instance[keep]
    xyz, marg = event.coords[keep].astype(np.float64), margin[keep]
    pairs, g = np.unique(np.stack([sem, inst], 1), axis=0, return_inverse=True)
    g = g.ravel()
    n = np.bincount(g, minlength=len(pairs)).astype(np.float64)
    centre = np.stack([np.bincount(g, xyz[:, k], len(pairs)) for k in range(3)], 1) / n[:, None]
    dist = np.linalg.norm(xyz - centre[g], axis=1)
    mean_d = np.bincount(g, dist, len(pairs)) / n
    var_d = np.maximum(np.bincount(g, dist * dist, len(pairs)) / n - mean_d ** 2, 0.0)
    mean_m = np.bincount(g, marg, len(pairs)) / n
    return pd.DataFrame({
        "event": event.source[1] if event_id is None else event_id,
        "class": pairs[:, 0], "instance": pairs[:, 1], "n_voxels": n.astype(np.int64),
        "extent_voxels": np.sqrt(var_d), "mean_margin": mean_m,
        "mean_margin_voxels": mean_m * event.spatial_size / 2,
    })


def _numpy_any(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _readable(tmp) -> None:
    """Give a mkstemp file (mode 0600) the mode a plain open() would have made (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def save_frame(df: pd.DataFrame, path) -> Path:
    """Write `df` as CSV (.csv) or parquet (.parquet/.pq), atomically (temporary name, then rename)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{path}: unknown table format {suffix!r} (use .csv or .parquet)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        _readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_frame(path) -> pd.DataFrame:
    """Read a frame written by `save_frame`."""
    path = Path(path)
    return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)


def save_thresholds(thresholds: Mapping[int, tuple[float, float]], path, **meta) -> Path:
    """Write {"thresholds": {"<class>": [s0, p0]}, **meta} as JSON, atomically (written by `spice tune`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"thresholds": {str(int(c)): [float(s0), float(p0)] for c, (s0, p0) in sorted(thresholds.items())},
           **meta}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    _readable(tmp)
    os.replace(tmp, path)
    return path


def load_thresholds(path) -> dict[int, tuple[float, float]]:
    """Read thresholds JSON ({"thresholds": {class: [s0, p0]}} or the bare mapping) -> {class: (s0, p0)}."""
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    try:
        table = doc.get("thresholds", doc)
        return {int(c): (float(v[0]), float(v[1])) for c, v in table.items()}
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: thresholds must map class ids to [s0, p0] ({err})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="spice evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="trained model checkpoint")
    ap.add_argument("--data", nargs="+", required=True, help="event files (.root or .h5)")
    ap.add_argument("--thresholds", required=True, help="thresholds JSON written by `spice tune`")
    ap.add_argument("--out", required=True, help="output frame (.csv or .parquet)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--min-voxels", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-events", type=int, default=None, help="evaluate only the first N events")
    ap.add_argument("--range", type=int, nargs=2, default=None, metavar=("START", "STOP"),
                    help="only events [START, STOP) of the files taken together (a split of them)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds a rank waits for the others (under torchrun / srun)")
    ap.add_argument("--symmetries", type=int, default=1, help=SYMMETRIES_HELP)
    args = ap.parse_args(argv)

    from spice.data import EventDataset
    from spice.train import load_model

    ctx, device = distributed.setup(args.device, args.timeout)
    try:
        dataset = EventDataset(args.data)
        if args.range is not None:
            dataset = torch.utils.data.Subset(dataset, range(args.range[0], min(args.range[1], len(dataset))))
        if args.max_events is not None:
            dataset = torch.utils.data.Subset(dataset, range(min(args.max_events, len(dataset))))
        model = load_model(args.checkpoint, device=device)
        thresholds = load_thresholds(args.thresholds)
        tuned_with = json.loads(Path(args.thresholds).read_text()).get("symmetries", 1)
        if tuned_with != args.symmetries and ctx.is_main:
            print(f"warning: {args.thresholds} was tuned with --symmetries {tuned_with}, "
                  f"evaluating with --symmetries {args.symmetries}", file=sys.stderr)
        df = evaluate(model, dataset, thresholds, device=device,
                      min_voxels=args.min_voxels, batch_size=args.batch_size, symmetries=args.symmetries)
    except (distributed.DistError, RuntimeError) as err:
        if not distributed.collective_failed(err):
            raise
        distributed.fail("spice evaluate", err)
    if ctx.is_main:
        save_frame(df, args.out)
        print(f"wrote {len(df)} rows to {args.out}")
        print(df.groupby("class_name")[["ari", "purity", "efficiency", "sbd"]].mean().round(4).to_string())
    distributed.teardown()
    return 0
