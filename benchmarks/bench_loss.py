"""The SPICE loss computed for all (event, class) groups at once against the loop over them that it replaced.

Both are timed side by side in one run on the same generated events, with random network-like outputs
(embedding, margin, seediness), forward and backward of the total loss; torch.profiler counts the
operators each one runs (on CUDA each is at least one kernel launch, and the loop's int()/bool()/tolist()
wait for the GPU). The loop is spice/losses.py of git revision --previous (default: the last commit
before the change), loaded as a module; the two must agree to float64 rounding, which is checked first.

    python benchmarks/bench_loss.py [--batches 8 32] [--size 192] [--repeats 5] [--device cpu] [--threads 2]
writes results/bench_loss[_cuda].{json,txt}.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from bench_sparse import write_results
from spice.data import collate
from spice.data.synthetic import generate
from spice.losses import TERMS, SPICELoss
from spice.provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_REV = "acfd167"  # the loss as a Python loop over events and classes


def previous_loss(rev: str):
    """SPICELoss of spice/losses.py at git revision `rev` (or of the file $SPICE_LOSS_PREVIOUS, on a machine
    without the git history: `git show REV:spice/losses.py > FILE` beforehand)."""
    source = os.environ.get("SPICE_LOSS_PREVIOUS")
    text = Path(source).read_text() if source else subprocess.run(
        ["git", "show", f"{rev}:spice/losses.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="spice_loss_")) / "losses_previous.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("losses_previous", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.SPICELoss


def outputs_for(n: int, device, dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Network-like outputs: embeddings near the origin, margins around 0.3, seediness in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    return {"embedding": (0.3 * torch.randn(n, 3, generator=g, dtype=dtype)).to(device).requires_grad_(),
            "margin": (0.2 + 0.2 * torch.rand(n, 1, generator=g, dtype=dtype)).to(device).requires_grad_(),
            "seediness": torch.rand(n, 1, generator=g, dtype=dtype).to(device).requires_grad_()}


def run(loss, outputs, batch) -> dict[str, torch.Tensor]:
    for t in outputs.values():
        t.grad = None
    out = loss(outputs, batch)
    out["total"].backward()
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(loss, outputs, batch, device, repeats: int) -> float:
    run(loss, outputs, batch)  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        run(loss, outputs, batch)
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def operators(loss, outputs, batch, device) -> int:
    """aten operators called (top level of each Python call: nested ones not counted twice)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run(loss, outputs, batch)
        sync(device)
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--previous", default=PREVIOUS_REV)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    Loop, now = previous_loss(args.previous), SPICELoss()
    loop = Loop()
    events = generate(max(args.batches), args.size, 0)

    # the same numbers first (float64): every term and every gradient
    batch = collate(events[:min(args.batches)])
    outs = outputs_for(len(batch.coords), device, torch.float64)
    a = run(loop, outs, batch)
    grads_a = [t.grad.clone() for t in outs.values()]
    b = run(now, outs, batch)
    term_diff = max(abs(a[t].item() - b[t].item()) / max(abs(a[t].item()), 1e-300) for t in TERMS)
    grad_diff = max(float((x - y.grad).abs().max() / x.abs().max().clamp_min(1e-300))
                    for x, y in zip(grads_a, outs.values()))
    lines = [f"bench_loss on {cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}, {args.threads} "
             f"threads, device {device}; loop = spice/losses.py at {args.previous}",
             f"float64, {min(args.batches)} events: largest relative difference of a term {term_diff:.1e}, "
             f"of a gradient {grad_diff:.1e}"]
    print(lines[-1], flush=True)
    result = {"command": "python " + " ".join([Path(__file__).name] + sys.argv[1:]), "device": str(device),
              "cpu_model": cpu_model(), "threads": args.threads, "previous": args.previous,
              "term_rel_diff": term_diff, "grad_rel_diff": grad_diff, "cases": []}
    for n in args.batches:
        batch = collate(events[:n])
        outs = outputs_for(len(batch.coords), device, torch.float32)
        row = {"batch": n, "voxels": int(len(batch.coords)),
               "loop_s": seconds(loop, outs, batch, device, args.repeats),
               "groups_s": seconds(now, outs, batch, device, args.repeats),
               "loop_ops": operators(loop, outs, batch, device), "groups_ops": operators(now, outs, batch, device)}
        result["cases"].append(row)
        lines.append(f"batch {n} ({row['voxels']} voxels): loss forward + backward loop {row['loop_s'] * 1e3:.1f} ms, "
                     f"all groups at once {row['groups_s'] * 1e3:.1f} ms: x{row['loop_s'] / row['groups_s']:.2f}; "
                     f"operators {row['loop_ops']} against {row['groups_ops']}")
        print(lines[-1], flush=True)
    return write_results(args.out / ("bench_loss" if device.type == "cpu" else f"bench_loss_{device.type}"),
                         result, lines)


if __name__ == "__main__":
    main()
