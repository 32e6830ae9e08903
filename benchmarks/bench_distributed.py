"""Data-parallel training speed: seconds per iteration at a fixed global batch for 1..N processes.

Each run is `spice train` on generated events (stage 2: the whole network), launched as one plain
process or with torchrun (`spice.distributed.command`), one CPU thread per process on CPU (gloo) or one
process per GPU on CUDA (NCCL). The time per iteration is the median of rank 0's `seconds` column of
losses.csv after the warm-up iterations; speed-up = t_1 / t_N, scaling efficiency = speed-up / N.
Writes benchmarks/results/bench_distributed[_cuda].{json,txt} with the machine.

    .venv/bin/python benchmarks/bench_distributed.py                     # CPU: 1 and 2 processes
    python benchmarks/bench_distributed.py --device cuda                 # 1 and every GPU of the machine
    python benchmarks/bench_distributed.py --nproc 1 2 4 --iterations 20 --batch-size 16

On a shared machine the numbers include the other load: compare processes within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from spice.distributed import command  # noqa: E402


def run(nproc: int, args, work: Path) -> dict:
    """Train once on `nproc` processes; per-iteration times of rank 0 after the warm-up."""
    out = work / f"n{nproc}"
    cfg = {"model": {"filters": args.filters, "depth": args.depth, "reps": 2, "spatial_size": args.spatial_size},
           "data": {"synthetic": {"n_events": args.batch_size * 2, "spatial_size": args.spatial_size, "seed": 0}},
           "stage1_iterations": 0, "stage2_iterations": args.warmup + args.iterations,
           "batch_size": args.batch_size, "device": args.device, "threads": args.threads if args.device == "cpu" else 0,
           "checkpoint_every": 10 ** 6, "progress": False, "seed": 0, "out_dir": str(out),
           "sync_batchnorm": args.sync_batchnorm}
    path = work / f"n{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    res = subprocess.run(command(["train", "--config", str(path)], nproc), env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"bench_distributed: {nproc} processes failed:\n{res.stderr[-3000:]}")
    seconds = pd.read_csv(out / "losses.csv")["seconds"].to_numpy()[args.warmup:]
    return {"nproc": nproc, "s_per_iteration": float(statistics.median(seconds)),
            "s_per_iteration_min": float(seconds.min()), "s_per_iteration_max": float(seconds.max()),
            "events_per_s": args.batch_size / float(statistics.median(seconds)), "wall_s": wall,
            "per_rank_batch": args.batch_size // nproc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--nproc", type=int, nargs="+", default=None,
                    help="process counts (default: 1 2 on CPU, 1 and the GPU count on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default 8 on CPU, 32 on CUDA)")
    ap.add_argument("--iterations", type=int, default=8, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--filters", type=int, default=None, help="default 8 on CPU, 32 on CUDA")
    ap.add_argument("--depth", type=int, default=None, help="default 4 on CPU, 6 on CUDA")
    ap.add_argument("--spatial-size", type=int, default=None, help="default 128 on CPU, 512 on CUDA")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    ap.add_argument("--sync-batchnorm", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("bench_distributed: --device cuda but no CUDA device")
    args.nproc = args.nproc or ([1, torch.cuda.device_count()] if cuda else [1, 2])
    args.nproc = sorted(set(args.nproc))
    args.batch_size = args.batch_size or (32 if cuda else 8)
    args.filters = args.filters or (32 if cuda else 8)
    args.depth = args.depth or (6 if cuda else 4)
    args.spatial_size = args.spatial_size or (512 if cuda else 128)
    for n in args.nproc:
        if args.batch_size % n:
            raise SystemExit(f"bench_distributed: global batch {args.batch_size} does not split over {n} processes")

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args, Path(tmp)) for n in args.nproc]
    base = next((r for r in rows if r["nproc"] == 1), rows[0])
    for r in rows:
        r["speedup"] = base["s_per_iteration"] / r["s_per_iteration"] * base["nproc"]
        r["efficiency"] = r["speedup"] / r["nproc"]
    table = pd.DataFrame(rows)[["nproc", "per_rank_batch", "s_per_iteration", "events_per_s", "speedup",
                                "efficiency", "wall_s"]]
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
               "gpus": torch.cuda.device_count() if cuda else 0,
               "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    setup = {k: getattr(args, k) for k in ("device", "batch_size", "iterations", "warmup", "filters", "depth",
                                           "spatial_size", "threads", "sync_batchnorm")}
    text = (f"bench_distributed: global batch {args.batch_size}, SPICE F{args.filters} D{args.depth} on "
            f"{args.spatial_size}^3 generated events, {args.device}"
            + (f", {args.threads} thread(s) per process" if not cuda else ", 1 process per GPU")
            + f"\n{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}\n"
            f"machine: {machine}\n")
    print(text, end="")
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stem = results / ("bench_distributed_cuda" if cuda else "bench_distributed")
    for suffix, body in ((".json", json.dumps({"setup": setup, "machine": machine, "runs": rows}, indent=2) + "\n"),
                         (".txt", text)):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(body)
        os.replace(tmp, stem.with_suffix(suffix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
