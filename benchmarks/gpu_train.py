"""Train a `spice train` config on a lent GPU within a wall-clock budget, sized so that its schedule ends in it.

A lent device has minutes, not hours, and the learning-rate schedule (warm-up, cosine) is planned over the
config's iterations, so the run is sized first:
  1. probe: --probe iterations of the config as it stands (its data stream, workers, batch, init_weights)
     into WORK/probe; the median seconds per iteration after the first five (data loading included)
     is the step time;
  2. train: the config's stages scaled to the iterations that fit --minutes at that step time, with
     --snapshots snapshots along it and max_minutes as a backstop, into WORK/run;
  3. export to --export: the weights-only checkpoint (spice.release.export_weights), the snapshots,
     config.yaml and losses.csv, i.e. a run folder that `python -m spice.release --run DIR --out
     weights/<name>` tunes, scores and releases on any machine, and plan.json (probe, plan, times).

    python benchmarks/gpu_train.py --config configs/reference_gpu.yaml --minutes 5 --export $OUT/run
Exit status 0 when the run finished its planned iterations and was exported, 1 when it stopped short.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_checks import open_device, write_atomic  # noqa: E402

from spice.learning_curve import snapshots  # noqa: E402
from spice.release import export_weights  # noqa: E402
from spice.train import TrainConfig, finished, train  # noqa: E402

QUICK = ["data.synthetic.spatial_size=64", "data.synthetic.n_events=64", "model.filters=4", "model.depth=3",
         "batch_size=2", "num_workers=0", "init_weights=''", "device=cpu"]


def step_seconds(losses_csv: Path, skip: int = 5) -> float:
    """Median seconds per iteration of a run's losses.csv, its first `skip` iterations (start-up) left out."""
    seconds = pd.read_csv(losses_csv)["seconds"].to_numpy()
    return float(np.median(seconds[skip:] if len(seconds) > skip else seconds))


def sized(config: TrainConfig, iterations: int, minutes: float, out_dir: Path, snapshots_n: int) -> TrainConfig:
    """`config` with its stages scaled to `iterations` in all (each stage keeps its share, at least one
    iteration if it had any), snapshots every iterations // snapshots_n, max_minutes a backstop."""
    d = config.to_dict()
    total = max(config.iterations, 1)
    s1 = max(1, round(iterations * config.stage1_iterations / total)) if config.stage1_iterations else 0
    s3 = max(1, round(iterations * config.stage3_iterations / total)) if config.stage3_iterations else 0
    d.update(stage1_iterations=s1, stage2_iterations=max(1, iterations - s1 - s3), stage3_iterations=s3,
             snapshot_every=max(1, iterations // snapshots_n), max_minutes=minutes * 1.05 + 0.25,
             out_dir=str(out_dir), progress=False)
    d["warmup_iterations"] = min(config.warmup_iterations, max(0, iterations // 10))
    return TrainConfig.from_dict(d)


def export(run: Path, to: Path) -> Path:
    """A run folder that spice.release takes: weights-only checkpoint, snapshots, config.yaml, losses.csv."""
    (to / "snapshots").mkdir(parents=True, exist_ok=True)
    export_weights(run / "checkpoint.pt", to / "checkpoint.pt")
    for name in ("config.yaml", "losses.csv"):
        shutil.copyfile(run / name, to / name)
    for shot in snapshots(run):
        shutil.copyfile(shot, to / "snapshots" / shot.name)
    return to


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (spice train's)")
    p.add_argument("--minutes", type=float, required=True, help="training budget after the probe")
    p.add_argument("--probe", type=int, default=30, help="iterations timed before sizing the run")
    p.add_argument("--snapshots", type=int, default=2, help="snapshots along the run (the last holds the final weights)")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "gpu_train")
    p.add_argument("--export", type=Path, required=True, help="folder for the run spice.release takes")
    p.add_argument("--quick", action="store_true", help="tiny network on the CPU: smoke test, numbers meaningless")
    args = p.parse_args(argv)
    config = TrainConfig.load(args.config, args.set + (QUICK if args.quick else []))
    if open_device(config.device, "gpu_train") is None:
        return 2
    if args.work.exists():  # a fresh plan each call: a lent machine starts bare anyway
        shutil.rmtree(args.work)

    t0 = time.perf_counter()
    probe = TrainConfig.from_dict({**config.to_dict(), "stage1_iterations": 0, "stage2_iterations": args.probe,
                                   "stage3_iterations": 0, "snapshot_every": 0, "max_minutes": 0,
                                   "progress": False, "out_dir": str(args.work / "probe")})
    train(probe)
    per_iter = step_seconds(args.work / "probe" / "losses.csv")
    iterations = max(args.snapshots, int(args.minutes * 60 / per_iter))
    run_config = sized(config, iterations, args.minutes, args.work / "run", args.snapshots)
    plan = {"config": str(args.config), "overrides": args.set, "probe_iterations": args.probe,
            "probe_seconds_per_iteration": per_iter, "probe_wall_s": time.perf_counter() - t0,
            "budget_minutes": args.minutes, "planned_iterations": iterations,
            "stages": [run_config.stage1_iterations, run_config.stage2_iterations, run_config.stage3_iterations]}
    print(f"gpu_train: {per_iter:.3f} s per iteration in the probe; planned {iterations} iterations "
          f"for {args.minutes:.2f} min", flush=True)

    t1 = time.perf_counter()
    checkpoint = train(run_config)
    losses = pd.read_csv(args.work / "run" / "losses.csv")
    plan.update(train_wall_s=time.perf_counter() - t1, trained_iterations=int(losses["iteration"].max()),
                median_step_s=step_seconds(args.work / "run" / "losses.csv"), finished=finished(checkpoint))
    export(args.work / "run", args.export)
    write_atomic(args.export / "plan.json", json.dumps(plan, indent=2) + "\n")
    print("gpu_train:", json.dumps(plan), flush=True)
    return 0 if plan["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
