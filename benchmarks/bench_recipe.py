"""Training-recipe ablation at equal wall time: which recipe clusters held-out generated events best
per CPU minute, for the demo profile (notebooks/profiles/demo.yaml)?

Every variant starts from the demo recipe (F16 D4 with one residual block per level, batch 4, lr 0.005,
4000 stream events of 192^3 each made once and drawn again with another cube symmetry and shift, 30 warm-up
iterations, cosine to 2%, 30% of the iterations in stage 1) and changes one thing; "demo recipe, training
seed 1" changes only the seed, so the spread between it and the demo recipe is what one run's noise is. Each
gets the same training wall time: a short probe run times its stage-1 and stage-2 iterations (data making
included), and the variant then trains for as many iterations as fit `--minutes`, so that its learning rate
schedule ends where its budget does. It is scored on validation events never trained on
(generate(n, 192, seed=1000)): mean ARI per class at the best point of a coarse (s0, p0) grid
(spice.learning_curve). DBSCAN on the true semantic masks, at its best eps per class on the same events,
is the row to beat.

    python benchmarks/bench_recipe.py [--minutes 4.5] [--val-events 30] [--threads 2] [--only WORD ...] [--name STEM]

Writes benchmarks/results/<--name, default bench_recipe>.{json,md}. The results of the earlier demo recipe
(two residual blocks per level, a stream of events each made once, the kernels before issue 12 and an
earlier generator) are bench_recipe.md and bench_recipe_gamma_xeon.md, made by this script's earlier version.
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

from spice.baseline import tune_dbscan  # noqa: E402
from spice.data.synthetic import generate  # noqa: E402
from spice.learning_curve import learning_curve  # noqa: E402
from spice.train import TrainConfig, train  # noqa: E402

STREAM = {"synthetic": {"n_events": 4000, "spatial_size": 192, "seed": 5000, "cache": 4000}, "augment": True}
DEMO = {"model": {"filters": 16, "depth": 4, "reps": 1}, "batch_size": 4, "lr": 0.005, "data": STREAM,
        "lr_schedule": "cosine", "warmup_iterations": 30, "min_lr_fraction": 0.02, "seed": 0}
STAGE1_SHARE = 0.3
# name -> (changes to DEMO, share of the iterations in stage 1)
VARIANTS = {
    "demo recipe": ({}, STAGE1_SHARE),
    "demo recipe, training seed 1": ({"seed": 1}, STAGE1_SHARE),
    "demo recipe, two blocks per level (reps 2)": ({"model": {"filters": 16, "depth": 4, "reps": 2}}, STAGE1_SHARE),
    "demo recipe, batch 2": ({"batch_size": 2}, STAGE1_SHARE),
    "demo recipe, batch 8": ({"batch_size": 8}, STAGE1_SHARE),
    "demo recipe, lr 0.002": ({"lr": 0.002}, STAGE1_SHARE),
    "demo recipe, lr 0.01": ({"lr": 0.01}, STAGE1_SHARE),
    "demo recipe, 50% in stage 1": ({}, 0.5),
}
PROBE = 6  # iterations per stage in the timing probe (the first of each is dropped)


def config(overrides: dict, stage1: int, stage2: int, threads: int, out: Path) -> TrainConfig:
    return TrainConfig.from_dict({**DEMO, **overrides, "stage1_iterations": stage1, "stage2_iterations": stage2,
                                  "device": "cpu", "threads": threads, "checkpoint_every": 10_000,
                                  "snapshot_every": max(stage1 + stage2, 1), "progress": False,
                                  "out_dir": str(out)})


def seconds_per_iteration(overrides: dict, threads: int, out: Path) -> tuple[float, float]:
    """Median wall seconds of a stage-1 and of a stage-2 iteration of this variant (probe run)."""
    shutil.rmtree(out, ignore_errors=True)
    train(config(overrides, PROBE, PROBE, threads, out))
    losses = pd.read_csv(out / "losses.csv")
    shutil.rmtree(out, ignore_errors=True)
    return tuple(float(losses[losses.stage == s].seconds.iloc[1:].median()) for s in (1, 2))


def run_variant(name: str, minutes: float, threads: int, work: Path, val) -> tuple[pd.DataFrame, dict]:
    overrides, share = VARIANTS[name]
    out = work / f"v{list(VARIANTS).index(name)}"
    s1, s2 = seconds_per_iteration(overrides, threads, work / "probe")
    total = int(minutes * 60 / (share * s1 + (1 - share) * s2))
    stage1 = round(share * total)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    train(config(overrides, stage1, total - stage1, threads, out))
    wall = time.perf_counter() - t0
    losses = pd.read_csv(out / "losses.csv")
    curve = learning_curve(sorted((out / "snapshots").glob("*.pt")), val, losses)
    info = {"variant": name, "iterations": total, "stage1": stage1, "s_per_it_stage1": s1, "s_per_it_stage2": s2,
            "wall_s": wall}
    return curve.assign(**info), info


def dbscan_rows(val) -> pd.DataFrame:
    grid, best = tune_dbscan(val, objective="ari")
    picked = grid[grid.apply(lambda r: best[int(r["class"])] == r.eps, axis=1)]
    labels = val[0].labels
    return pd.DataFrame({"variant": "DBSCAN on the true masks (best eps per class)", "iterations": 0,
                         "class_name": [labels[int(c)] for c in picked["class"]], "ari": picked.score.values,
                         "wall_s": 0.0})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.5, help="training wall time of every variant")
    ap.add_argument("--val-events", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="run only the variants whose name contains one of these words")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other variants of the existing results (same --minutes and --val-events)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_recipe")
    ap.add_argument("--name", default="bench_recipe", help="stem of the result files in benchmarks/results")
    ns = ap.parse_args(argv)
    torch.set_num_threads(ns.threads)
    out = ROOT / "benchmarks" / "results"
    command = "python benchmarks/bench_recipe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start_load = os.getloadavg()
    val = generate(ns.val_events, 192, seed=1000)
    chosen = [n for n in VARIANTS if not ns.only or any(w in n for w in ns.only)]
    runs = {}                                            # variant -> (its rows, its info)
    if ns.merge:
        old = json.loads((out / f"{ns.name}.json").read_text())
        if (old["minutes"], old["val_events"]) != (ns.minutes, ns.val_events):
            raise SystemExit(f"--merge: {out / f'{ns.name}.json'} has minutes={old['minutes']}, "
                             f"val_events={old['val_events']}; this run {ns.minutes}, {ns.val_events}")
        rows = pd.DataFrame(old["rows"])
        runs = {i["variant"]: (rows[rows.variant == i["variant"]], {"command": old["command"], **i})
                for i in old["variants"]}
    for name in chosen:
        load = os.getloadavg()[0]
        curve, info = run_variant(name, ns.minutes, ns.threads, ns.work, val)
        runs[name] = (curve, {**info, "command": command, "load_average": [load, os.getloadavg()[0]]})
        print(curve[["variant", "iterations", "class_name", "ari", "wall_s"]].to_string(index=False), flush=True)
    order = [n for n in VARIANTS if n in runs]
    infos = [runs[n][1] for n in order]
    results = pd.concat([dbscan_rows(val), *(runs[n][0] for n in order)], ignore_index=True)
    table = results.pivot_table(index=["variant", "iterations", "wall_s"], columns="class_name", values="ari",
                                sort=False).reset_index()
    classes = [c for c in val[0].labels if c in table.columns]
    table = table[["variant", "iterations", "wall_s", *classes]]
    dbscan = table.iloc[0]
    table["beats DBSCAN"] = [sum(bool(r[c] > dbscan[c]) for c in classes) if i else "" for i, r in table.iterrows()]
    from bench_sparse import machine as machine_info                   # benchmarks/ is on the path
    model_name = machine_info(torch.device("cpu")).get("cpu_model", platform.processor())
    machine = {"platform": platform.platform(), "processor": model_name, "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "threads": ns.threads, "load_average_start": list(start_load),
               "load_average_end": list(os.getloadavg())}
    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "minutes": ns.minutes, "val_events": ns.val_events, "command": command,
           "variants": infos, "rows": results.to_dict(orient="records")}
    tmp = out / f"{ns.name}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(out / f"{ns.name}.json")
    md = (f"# Recipe ablation at equal training wall time ({ns.minutes:g} min each), validation ARI on "
          f"{ns.val_events} generated 192³ events (best of a coarse threshold grid)\n\n"
          + "".join(f"`{c}`\n" for c in dict.fromkeys(i.get("command", command) for i in infos)) + "\n"
          f"Machine: {machine['platform']} ({model_name}), {os.cpu_count()} cores, {ns.threads} torch thread(s); load average "
          f"per variant (1-minute, at its start and end) in {ns.name}.json. "
          f"wall_s: training (data making included); iterations: what fit the budget by a timing probe of "
          f"{PROBE} iterations per stage (event sizes vary, so wall times differ by up to a third). "
          f"Each variant changes one thing of the demo recipe (F16 D4 R1, batch 4, lr 0.005, 4000 stream events "
          f"each made once and drawn again with another cube symmetry and shift, 30 warm-up iterations, cosine "
          f"to 2%, 30% of iterations in stage 1); the two demo-recipe rows differ only in the training seed.\n\n"
          + table.round(3).to_markdown(index=False) + "\n")
    tmp = out / f"{ns.name}.md.tmp"
    tmp.write_text(md)
    tmp.replace(out / f"{ns.name}.md")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
