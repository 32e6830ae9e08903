"""The demo scaled up and trained on a GPU within a wall-clock budget, then scored per class (issue 7).

Steps, each reusing what an earlier (interrupted) run of the same command left in --work:
  1. generate train / validation / test events (spice.data.synthetic, 512^3 by default, one process
     per CPU core) into PILArNet-M files;
  2. plan: time a few training iterations of the network on a training batch, and choose the number of
     iterations that fits --minutes (a quarter of them stage 1, as in the demo profile); the plan is
     saved, so a rerun trains the same configuration;
  3. train (spice.train); with --stop-after (TrainConfig.max_minutes) a call stops with a checkpoint
     before a command time limit (the device's is 10 minutes), and the same command run again continues;
  4. tune (s0, p0) per class on the validation events (spice.tune.grid_search) and evaluate the test
     events (spice.evaluate), with the untrained network of the same seed as the baseline;
  5. write benchmarks/results/gpu_demo_<date>.json and .md: per-class purity / efficiency / ARI / SBD
     (Table III layout, paper values alongside), the plan, the training time and the device.

    python benchmarks/gpu_demo.py [--minutes 12] [--stop-after 7] [--device cuda] [--work build/gpu_demo]
Exit status 0 when the results are written, 3 when training stopped at --stop-after (rerun to continue).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_checks import open_device, timed, versions, write_atomic  # noqa: E402

from spice import tables  # noqa: E402
from spice.data import EventDataset, collate  # noqa: E402
from spice.data.pilarnet_m import write_pilarnet_m  # noqa: E402
from spice.data.synthetic import generate_event  # noqa: E402
from spice.evaluate import evaluate  # noqa: E402
from spice.train import (TrainConfig, build_model, finished, load_model, model_args, train,  # noqa: E402
                         train_step)
from spice.tune import grid_search  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results"
DEFAULT_WORK = ROOT / "build" / "gpu_demo"
STAGE1_SHARE = 0.25  # demo profile: 250 of 1000 iterations in stage 1


def _generate(job: tuple[int, int, int]):
    index, size, seed = job
    return generate_event(index, size, seed)


def make_split(path: Path, n: int, size: int, seed: int, processes: int) -> Path:
    """n synthetic events of seed `seed` written to `path` (PILArNet-M v2), unless already there."""
    if path.exists():
        return path
    jobs = [(i, size, seed) for i in range(n)]
    with mp.get_context("spawn").Pool(processes) as pool:
        events = pool.map(_generate, jobs, chunksize=max(1, n // (4 * processes)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    write_pilarnet_m(events, tmp, layout="v2")
    os.replace(tmp, path)
    return path


def seconds_per_iteration(config: TrainConfig, dataset, steps: int) -> float:
    """Median wall time of one stage-2 training iteration (forward, full loss, backward, Adam) on a
    batch of the training set, on the config's device."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(model_args(config.model, dataset)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    batch = collate([dataset[i] for i in range(min(config.batch_size, len(dataset)))]).to(device)

    def step():
        train_step(model, opt, config.loss, batch, stage=2, bf16=config.bf16)

    step()  # warm-up (kernel maps, allocator)
    return float(np.median(timed(step, device, steps)))


def plan(args, train_file: Path) -> dict:
    """The training configuration (saved in work/plan.json; reused as is by a rerun)."""
    path = args.work / "plan.json"
    if path.exists():
        return json.loads(path.read_text())
    spec = {"data": {"train": [str(train_file)]},
            "model": {"filters": args.filters, "depth": args.depth, "reps": 2, "backend": "torch"},
            "batch_size": args.batch, "lr": 0.005, "seed": 0, "device": args.device, "bf16": args.bf16,
            "num_workers": args.workers, "checkpoint_every": 100, "progress": False,
            "stage1_iterations": 0, "stage2_iterations": 0, "out_dir": str(args.work / "train")}
    probe = TrainConfig.from_dict(spec)
    per_iter = seconds_per_iteration(probe, EventDataset(train_file), steps=args.probe_steps)
    total = max(4, int(args.minutes * 60 * args.train_share / per_iter))
    stage1 = max(1, round(STAGE1_SHARE * total))
    spec.update(stage1_iterations=stage1, stage2_iterations=total - stage1)
    result = {"train_config": spec, "probe_seconds_per_iteration": per_iter, "budget_minutes": args.minutes,
              "train_share": args.train_share}
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    return result


def markdown(report: dict) -> str:
    cfg, table = report["plan"]["train_config"], pd.DataFrame(report["table"])
    lines = [f"# The demo scaled up on a GPU, {report['date']}", "",
             f"Device: **{report['device']}**; versions: " + ", ".join(
                 f"{k} {v}" for k, v in report["versions"].items() if not isinstance(v, dict)), "",
             f"Command: `{report['command']}`", "",
             f"Network: filters {cfg['model']['filters']}, depth {cfg['model']['depth']}, reps "
             f"{cfg['model']['reps']} ({cfg['model']['backend']} backend). Events: "
             + " / ".join(map(str, report["n_events"])) + f" generated (train / validation / test) on a "
             f"{report['spatial_size']}^3 grid, mean {report['mean_voxels']:.0f} voxels per test event.", "",
             f"Training: {cfg['stage1_iterations']} + {cfg['stage2_iterations']} iterations at batch "
             f"{cfg['batch_size']} (bf16 {cfg['bf16']}), planned from "
             f"{report['plan']['probe_seconds_per_iteration']:.3f} s per iteration for a "
             f"{report['plan']['budget_minutes']:g}-minute budget; trained for {report['train_minutes']:.1f} "
             f"min in {report['train_calls']} call(s).", "",
             "Per-class means over test events (Table III layout; paper values for PILArNet alongside):", "",
             tables.to_markdown(table, floatfmt=".3f"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, default=12.0, help="budget for steps 2-4 (training gets most of it)")
    p.add_argument("--train-share", type=float, default=0.8, help="share of --minutes planned for training")
    p.add_argument("--stop-after", type=float, default=0.0,
                   help="minutes of training per call, then checkpoint and exit 3 (0: train to the end)")
    p.add_argument("--spatial-size", type=int, default=512)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bf16", action="store_true", help="train under bf16 autocast")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    p.add_argument("--probe-steps", type=int, default=3)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="event generation processes")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--quick", action="store_true", help="tiny sizes: smoke test of this script, numbers meaningless")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:  # meaningless numbers stay out of results/ and build/
        if args.out == DEFAULT_OUT or args.work == DEFAULT_WORK:
            tmp = Path(tempfile.mkdtemp(prefix="gpu_demo_quick_"))
            args.out = tmp if args.out == DEFAULT_OUT else args.out
            args.work = tmp / "work" if args.work == DEFAULT_WORK else args.work
        args.spatial_size, args.n_train, args.n_val, args.n_test = 64, 8, 3, 3
        args.filters, args.depth, args.batch, args.minutes, args.workers = 4, 3, 2, 0.02, 0
        args.processes, args.probe_steps = 2, 1

    opened = open_device(args.device, "gpu_demo")
    if opened is None:
        return 2
    device, name = opened
    start = time.perf_counter()
    data = args.work / "data"
    files = {split: make_split(data / f"{split}.h5", n, args.spatial_size, seed, args.processes)
             for split, n, seed in (("train", args.n_train, 0), ("val", args.n_val, 1), ("test", args.n_test, 2))}
    print(f"gpu_demo on {name}: events ready after {time.perf_counter() - start:.0f} s", flush=True)

    the_plan = plan(args, files["train"])
    config = TrainConfig.from_dict({**the_plan["train_config"], "max_minutes": args.stop_after})
    print(f"plan: {config.stage1_iterations} + {config.stage2_iterations} iterations "
          f"({the_plan['probe_seconds_per_iteration']:.3f} s each)", flush=True)
    log_path = args.work / "train_calls.json"
    calls = json.loads(log_path.read_text()) if log_path.exists() else []
    t0 = time.perf_counter()
    checkpoint = train(config, resume=True)
    calls.append(time.perf_counter() - t0)
    write_atomic(log_path, json.dumps(calls) + "\n")
    if not finished(checkpoint):
        print(f"gpu_demo: training stopped after --stop-after {args.stop_after:g} min; rerun the same command to continue "
              f"({checkpoint})", file=sys.stderr)
        return 3

    val = EventDataset(files["val"])
    val_events = [val[i] for i in range(len(val))]
    test = EventDataset(files["test"])
    labels = val_events[0].labels
    parts = []
    untrained = train(TrainConfig.from_dict({**the_plan["train_config"], "stage1_iterations": 0,
                                             "stage2_iterations": 0, "out_dir": str(args.work / "untrained")}),
                      resume=True)
    for what, ckpt in (("trained SPICE", checkpoint), ("untrained network", untrained)):
        model = load_model(ckpt, device)
        _, tuned = grid_search(model, val_events, device=device)
        thresholds, _ = tables.complete_thresholds(tuned, labels)
        frame = evaluate(model, test, thresholds, device=device, progress=False)
        parts.append(tables.metrics_table(frame, f"generated test set: {what}", paper=what == "trained SPICE"))
    table = pd.concat(parts, ignore_index=True)
    print(table.to_string(index=False), flush=True)

    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": name,
              "versions": versions(device), "command": "python " + " ".join([Path(__file__).name] + sys.argv[1:]),
              "spatial_size": args.spatial_size, "n_events": [args.n_train, args.n_val, args.n_test],
              "mean_voxels": float(np.mean([len(test[i]) for i in range(len(test))])),
              "plan": the_plan, "train_minutes": sum(calls) / 60, "train_calls": len(calls),
              "table": json.loads(table.to_json(orient="records"))}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (f"gpu_demo_{dt.date.today().isoformat()}" if device.type == "cuda" else "gpu_demo_cpu_smoke")
    write_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
