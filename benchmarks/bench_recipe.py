"""Training-recipe ablation at equal budget: which recipe clusters held-out generated events best?

Every variant trains the demo-sized network (F16 D4, batch 8, 192^3 generated events) for the same
number of iterations from the same seed, then is scored on validation events (spice.learning_curve:
mean ARI per class at the best point of a coarse (s0, p0) grid). Wall time is measured per variant
(the stream variants include making their events). Validation events are generate(n, 192, seed=1000),
never trained on.

    python benchmarks/bench_recipe.py [--iterations 240] [--val-events 40] [--threads 1] [--only NAME ...]

Writes benchmarks/results/bench_recipe.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spice.data.synthetic import generate  # noqa: E402
from spice.learning_curve import learning_curve  # noqa: E402
from spice.train import TrainConfig, train  # noqa: E402

FIXED = {"synthetic": {"n_events": 300, "spatial_size": 192, "seed": 0, "cache": 300}}
STREAM = {"synthetic": {"n_events": 1_000_000, "spatial_size": 192, "seed": 5000, "cache": 0}}
VARIANTS = {
    "300 fixed events, constant lr (the landed demo recipe)": {"data": FIXED},
    "fresh event stream": {"data": STREAM},
    "fresh stream + cube symmetries": {"data": {**STREAM, "augment": True}},
    "fresh stream + symmetries + warm-up/cosine (reference recipe)": {
        "data": {**STREAM, "augment": True}, "lr_schedule": "cosine", "warmup_iterations": 20,
        "min_lr_fraction": 0.02},
}


def run_variant(name: str, overrides: dict, iterations: int, threads: int, work: Path, val) -> pd.DataFrame:
    out = work / f"v{list(VARIANTS).index(name)}"
    shutil.rmtree(out, ignore_errors=True)
    stage1 = iterations // 3
    cfg = TrainConfig.from_dict({"model": {"filters": 16, "depth": 4, "reps": 2}, "batch_size": 8, "lr": 0.005,
                                 "stage1_iterations": stage1, "stage2_iterations": iterations - stage1,
                                 "seed": 0, "device": "cpu", "threads": threads, "checkpoint_every": iterations,
                                 "snapshot_every": iterations, "progress": False, "out_dir": str(out), **overrides})
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    losses = pd.read_csv(out / "losses.csv")
    curve = learning_curve(sorted((out / "snapshots").glob("*.pt")), val, losses)
    return curve.assign(variant=name, wall_s=wall)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=240)
    ap.add_argument("--val-events", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these words")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_recipe")
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    val = generate(ns.val_events, 192, seed=1000)
    chosen = [n for n in VARIANTS if not ns.only or any(w in n for w in ns.only)]
    frames = []
    for name in chosen:
        frames.append(run_variant(name, VARIANTS[name], ns.iterations, ns.threads, ns.work, val))
        print(frames[-1][["variant", "class_name", "ari", "wall_s"]].to_string(index=False), flush=True)
    results = pd.concat(frames, ignore_index=True)
    table = results.pivot_table(index=["variant", "wall_s"], columns="class_name", values="ari", sort=False)
    table = table.reset_index()
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "threads": ns.threads, "load_average": list(os.getloadavg())}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "iterations": ns.iterations, "val_events": ns.val_events,
           "command": "python benchmarks/bench_recipe.py " + " ".join(argv or sys.argv[1:]),
           "rows": results.to_dict(orient="records")}
    (out / "bench_recipe.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = (f"# Recipe ablation: {ns.iterations} iterations each (F16 D4, batch 8, 192^3), validation ARI on "
          f"{ns.val_events} generated events (best of a coarse threshold grid)\n\n"
          f"Machine: {machine['platform']}, {ns.threads} torch thread(s), load average at the end "
          f"{machine['load_average'][0]:.1f}\n\n" + table.round(3).to_markdown(index=False) + "\n")
    (out / "bench_recipe.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
