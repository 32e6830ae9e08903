"""Released weights: a finished training run turned into weights/<name>/ (SPEC §4 thresholds included).

    python -m spice.release --run build/reference-cpu --out weights/reference-cpu

writes, each under a temporary name first:
- checkpoint.pt: weights only (model state, model_args, iteration, stage, config), loads with
  spice.train.load_model; at most 15 MiB (`--half` stores them in float16, for larger networks);
- thresholds.json: (s0, p0) per class tuned on `--val-events` generated validation events (spice.tune,
  mean SBD; classes absent from them get the paper's Table II values), loads with load_thresholds;
- config.yaml and losses.csv of the run; learning_curve.csv (spice.learning_curve, on the first
  `--curve-events` validation events) when the run kept snapshots;
- provenance.json: git state, machine, library versions, training wall time, validation events.
A run that started from released weights (`init_weights: weights/<name>/part-b/checkpoint.pt`) continues
their history: when the folder of `init_weights` holds losses.csv (and learning_curve.csv), the release's
files put those rows first and count this run's iterations and seconds on from them.
The validation events are spice.data.synthetic.generate(n, size, seed) with the demo's validation
seed, disjoint from any training stream and from the demo's test events.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd
import torch

from spice.provenance import provenance, write_json
from spice.train import CHECKPOINT, atomic_write_bytes, finished, read_checkpoint

MAX_BYTES = 15 * 2 ** 20


def export_weights(checkpoint, out, half: bool = False) -> Path:
    """Write the weights-only form of a training checkpoint to `out` (atomically).

    half: store the floating-point tensors as float16 (half the bytes: a network of up to about 7.8M
    parameters fits the limit). `load_model` and `init_weights` copy them back into float32 parameters;
    the release tunes and scores those rounded weights, so its thresholds are the released network's."""
    state = read_checkpoint(checkpoint, keys=("model", "model_args", "iteration", "stage", "config"))
    slim = {k: state[k] for k in ("model", "model_args", "iteration", "stage", "config")}
    if half:
        slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in slim["model"].items()}
        slim["weights_dtype"] = "float16"
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    if buffer.tell() > MAX_BYTES:
        hint = "" if half else " (--half stores them in float16)"
        raise ValueError(f"{checkpoint}: weights take {buffer.tell() / 2**20:.1f} MiB, over the 15 MiB release "
                         f"limit{hint}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def earlier_history(init_weights: str) -> dict | None:
    """losses (and learning curve, or None) of the release that `init_weights` lies in; None when the
    run did not start from weights, or they carry no history."""
    if not init_weights or not (Path(init_weights).parent / "losses.csv").exists():
        return None
    folder = Path(init_weights).parent
    curve = folder / "learning_curve.csv"
    return {"losses": pd.read_csv(folder / "losses.csv"),
            "curve": pd.read_csv(curve) if curve.exists() else None}


def continue_history(history: dict, losses: pd.DataFrame, curve: pd.DataFrame | None):
    """(losses, curve) of this run appended to the earlier ones, iterations and seconds counted on."""
    before = history["losses"]
    n_before, s_before = int(before["iteration"].max()), float(before["seconds"].sum())
    losses = pd.concat([before, losses.assign(iteration=losses["iteration"] + n_before)], ignore_index=True)
    if curve is not None:
        curve = curve.assign(iteration=curve["iteration"] + n_before, seconds=curve["seconds"] + s_before)
    if history["curve"] is not None:
        curve = pd.concat([history["curve"], curve], ignore_index=True) if curve is not None else history["curve"]
    return losses, curve


def release(run: Path, out: Path, val_events: int = 100, val_seed: int = 1000, curve_events: int = 40,
            device: str = "cpu", half: bool = False) -> Path:
    """Export, tune, score the snapshots and record provenance for the finished run in `run`."""
    from spice import tables
    from spice.data.synthetic import generate
    from spice.evaluate import save_thresholds
    from spice.learning_curve import learning_curve, snapshots
    from spice.train import load_model
    from spice.tune import grid_search

    run, out = Path(run), Path(out)
    ckpt = run / CHECKPOINT
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no training checkpoint (run `spice train` first)")
    if not finished(ckpt):
        raise ValueError(f"{ckpt}: training has not finished; resume it before releasing")
    out.mkdir(parents=True, exist_ok=True)
    weights = export_weights(ckpt, out / "checkpoint.pt", half=half)
    model = load_model(weights, device)
    size = model.spatial_size
    val = generate(val_events, spatial_size=size, seed=val_seed)
    _, tuned = grid_search(model, val, objective="sbd", device=device, progress=True)
    thresholds, untuned = tables.complete_thresholds(tuned, val[0].labels)
    save_thresholds(thresholds, out / "thresholds.json", objective="sbd", n_events=len(val), untuned=untuned,
                    events=f"spice.data.synthetic.generate({val_events}, {size}, seed={val_seed})")
    atomic_write_bytes(out / "config.yaml", (run / "config.yaml").read_bytes())
    state = read_checkpoint(weights, keys=("iteration", "config"))
    history = earlier_history(state["config"].get("init_weights", ""))
    losses = pd.read_csv(run / "losses.csv")
    shots = snapshots(run)
    curve = learning_curve(shots, val[:curve_events], losses, device=device, progress=True) if shots else None
    if history is not None:
        losses, curve = continue_history(history, losses, curve)
    atomic_write_bytes(out / "losses.csv", losses.to_csv(index=False).encode())
    if curve is not None:
        atomic_write_bytes(out / "learning_curve.csv", curve.to_csv(index=False).encode())
    prov = provenance(notebook="spice.release", data={
        "validation": {"generator": "spice.data.synthetic.generate", "n_events": val_events, "seed": val_seed,
                       "spatial_size": size}})
    prov["training"] = {"run": str(run), "iterations": int(state["iteration"]),
                        "iterations_with_history": int(len(losses)), "wall_time_s": float(losses["seconds"].sum()),
                        "threads": torch.get_num_threads(), "config": state["config"],
                        "weights_dtype": "float16" if half else "float32",
                        "init_weights": state["config"].get("init_weights", "")}
    write_json(out / "provenance.json", prov)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spice.release", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="training out_dir (with checkpoint.pt, losses.csv)")
    ap.add_argument("--out", required=True, type=Path, help="release folder, e.g. weights/reference-cpu")
    ap.add_argument("--val-events", type=int, default=100)
    ap.add_argument("--val-seed", type=int, default=1000)
    ap.add_argument("--curve-events", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="store the weights in float16 (networks over the 15 MiB limit)")
    ns = ap.parse_args(argv)
    print(release(ns.run, ns.out, ns.val_events, ns.val_seed, ns.curve_events, ns.device, ns.half))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
