"""Where the network's forward+backward time goes (issue 12): torch.profiler on the torch backend.

Builds SPICE(filters, depth) on `--events` generated events of grid `--size`, runs bench_sparse.fwd_bwd
once to warm up, times one more, then profiles one, and writes the operator table (by self CPU time) with
the machine and the share of each operator group (GEMM, gather, scatter, other) to
benchmarks/results/profile_<F>_<D>_<size>_b<events>_<threads>t.txt. With `--train-step 1|2` the profiled
work is instead one whole training iteration of that stage (spice.train.train_step: forward, the SPICE
loss, backward, Adam), written to profile_<F>_<D>_<size>_b<events>_<threads>t_step<stage>.txt.

    .venv/bin/python benchmarks/profile_model.py [--filters 32] [--depth 6] [--size 512] [--events 8] [--threads 2]
    .venv/bin/python benchmarks/profile_model.py --filters 16 --depth 4 --size 192 --events 8 --train-step 2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_sparse import ROOT, fwd_bwd, machine
from spice.data import collate
from spice.data.synthetic import generate
from spice.losses import SPICELoss
from spice.model import SPICE
from spice.train import set_stage, train_step

GROUPS = {"GEMM": ("aten::mm", "aten::addmm_", "aten::addmm"), "gather": ("aten::index_select",),
          "scatter": ("aten::scatter_add_", "aten::index_add_")}


def shares(averages) -> dict[str, float]:
    """Share of total self CPU time per operator group (an operator counted by its self time only)."""
    total = sum(a.self_cpu_time_total for a in averages)
    out = {g: sum(a.self_cpu_time_total for a in averages if a.key in names) / total for g, names in GROUPS.items()}
    out["other"] = 1.0 - sum(out.values())
    return out


def network_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The network and batch options shared by the profiling scripts (paper size by default)."""
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> Path:
    ap = network_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--train-step", type=int, choices=(1, 2), default=None,
                    help="profile one training iteration of this stage (loss and Adam included)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (then CUDA kernels are counted too)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = collate(generate(args.events, args.size, args.seed)).to(device)
    torch.manual_seed(0)
    model = SPICE(filters=args.filters, depth=args.depth, reps=2, spatial_size=args.size,
                  backend="torch").to(device).train()
    work, what = (lambda: fwd_bwd(model, batch)), "forward+backward"
    if args.train_step:
        set_stage(model, args.train_step)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        loss = SPICELoss()
        work = lambda: train_step(model, opt, loss, batch, stage=args.train_step)  # noqa: E731
        what = f"training iteration of stage {args.train_step} (forward, SPICE loss, backward, Adam)"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    work()
    sync()
    tick = time.perf_counter()
    work()
    sync()
    seconds = time.perf_counter() - tick
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        work()
        sync()
    averages = prof.key_averages()
    lines = [f"SPICE F{args.filters} D{args.depth}, {args.events} generated {args.size}³ events "
             f"({batch.coords.shape[0]} voxels), {what}, torch backend, {args.threads} thread(s), {device}",
             f"machine: {machine(device)}",
             f"{what} (timed, outside the profiler): {seconds:.3f} s",
             "share of self CPU time: " + ", ".join(f"{g} {s:.1%}" for g, s in shares(averages).items())]
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        lines.append(f"CUDA kernels run: {len(kernels)}, busy {sum(e.device_time for e in kernels) / 1e3:.1f} ms of "
                     f"the {seconds * 1e3:.1f} ms step")
    lines += ["", averages.table(sort_by="self_cpu_time_total", row_limit=20),
              "operators by number of calls:", averages.table(sort_by="count", row_limit=25)]
    args.out.mkdir(parents=True, exist_ok=True)
    step = f"_step{args.train_step}" if args.train_step else ""
    on = "" if device.type == "cpu" else f"_{device.type}"
    path = args.out / f"profile_F{args.filters}_D{args.depth}_{args.size}_b{args.events}_{args.threads}t{step}{on}.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    print("\n".join(lines[:5]))
    return path


if __name__ == "__main__":
    main()
