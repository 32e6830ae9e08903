"""SPICE network speed and memory per event, per sparse backend (issue 3).

For every available backend (torch; landed, the torch backend before issue 12, loaded from git by
bench_sparse.py; minkowski when MinkowskiEngine imports), the paper's network
(F=32, D=6) and the CPU demo size (F=16, D=5), at batch 1 and 8 on synthetic 512^3 events
(`spice.data.synthetic.generate`, ~20k voxels): forward time (eval, no_grad), forward+backward time
(training mode, a sum of the outputs as loss) and peak memory, all per event. Peak memory is
torch.cuda.max_memory_allocated on CUDA; on CPU the growth of the process's resident high-water mark
(VmHWM in /proc/self/status) over the first call, each measurement in a fresh process.
On CUDA it also times a batch-32 training iteration (forward, SPICE loss, backward, Adam step) against
the paper's ~10 s on a V100. Writes benchmarks/results/bench_model[_cuda].json with the machine.

    .venv/bin/python benchmarks/bench_model.py [--device cpu|cuda] [--repeats 2] [--threads N] [--quick]

On a shared, loaded CPU use --threads 1: OpenMP threads that wait on busy cores inflate times 3-10x.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from spice.data.event import Event, collate
from spice.model import SPICE, count_parameters
from spice.provenance import cpu_model

PAPER_ITER_S = 10.0  # V100, batch 32 (paper)
CONFIGS = {"paper F32 D6": dict(filters=32, depth=6), "demo F16 D5": dict(filters=16, depth=5)}


def events(n: int, spatial_size: int) -> tuple[list[Event], str]:
    """Synthetic events from spice.data.synthetic, else random-walk tracks made here."""
    try:
        from spice.data.synthetic import generate
        return generate(n, spatial_size=spatial_size, seed=0), "spice.data.synthetic.generate"
    except ImportError:
        rng = np.random.default_rng(0)
        out = []
        for _ in range(n):
            steps = rng.integers(-1, 2, (30, 700, 3)).cumsum(1) + rng.integers(100, spatial_size - 100, (30, 1, 3))
            coords = np.unique(np.clip(steps.reshape(-1, 3), 0, spatial_size - 1), axis=0)
            k = len(coords)
            out.append(Event(coords.astype(np.int64), rng.uniform(0.01, 3, k).astype(np.float32),
                             np.zeros(k, np.int64), np.zeros(k, np.int64), spatial_size))
        return out, "random-walk tracks (spice.data.synthetic unavailable)"


def rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_now_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(best wall seconds over `repeats` after a warm-up, peak memory growth of the warm-up in MiB).

    On CPU call this in a fresh process: the allocator keeps freed memory, so only the first run
    of a process moves the resident high-water mark.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_now_kib()
    fn()  # warm-up (kernel maps, allocator, BLAS) and the memory measurement
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak = (rss_peak_kib() - base) / 1024
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), peak


def bench_one(name: str, device: str, label: str, bs: int, mode: str, repeats: int, threads: int) -> dict:
    """Time and memory of one (backend, config, batch, mode in {"forward", "forward_backward"})."""
    if threads:
        torch.set_num_threads(threads)
    if name == "landed":  # a fresh process: make the landed backend importable here too
        from bench_sparse import register_landed
        register_landed()
    device = torch.device(device)
    evs, _ = events(bs, 512)
    torch.manual_seed(0)
    model = SPICE(**CONFIGS[label], reps=2, spatial_size=512, backend=name).to(device)
    batch = collate(evs[:bs]).to(device)

    def forward():
        model.eval()
        with torch.no_grad():
            model(batch)

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch)
        (out["embedding"].sum() + out["margin"].sum() + out["seediness"].sum()).backward()

    seconds, mib = measure(forward if mode == "forward" else forward_backward, device, repeats)
    return dict(parameters=count_parameters(model), voxels_per_event=int(batch.coords.shape[0]) / bs,
                s_per_event=seconds / bs, peak_mib_per_event=mib / bs)


def bench_backend(name: str, device: torch.device, batches: list[int], repeats: int, configs: dict,
                  threads: int) -> list[dict]:
    """All rows of one backend; on CPU each measurement runs in a fresh process (clean memory peak)."""
    rows = []
    for label in configs:
        for bs in batches:
            row = dict(backend=name, device=str(device), config=label, batch=bs)
            for mode in ("forward", "forward_backward"):
                args = (name, str(device), label, bs, mode, repeats, threads)
                if device.type == "cpu":
                    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                        r = pool.submit(bench_one, *args).result()
                else:
                    r = bench_one(*args)
                row.update(parameters=r["parameters"], voxels_per_event=r["voxels_per_event"])
                row[f"{mode}_s_per_event"] = r["s_per_event"]
                row[f"{mode}_peak_mib_per_event"] = r["peak_mib_per_event"]
            rows.append(row)
            print(f"{name:9s} {label:13s} batch {bs:2d}: forward {row['forward_s_per_event']:.3f} s/event, "
                  f"forward+backward {row['forward_backward_s_per_event']:.3f} s/event, peak "
                  f"{row['forward_peak_mib_per_event']:.0f} / {row['forward_backward_peak_mib_per_event']:.0f} MiB/event",
                  flush=True)
    return rows


def bench_training_iteration(name: str, device: torch.device, evs: list[Event], repeats: int) -> dict:
    """Batch-32 training iteration of the paper network (forward, SPICE loss, backward, Adam step)."""
    from spice.losses import SPICELoss
    from spice.train import train_step
    torch.manual_seed(0)
    model = SPICE(filters=32, depth=6, reps=2, spatial_size=512, backend=name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    loss_fn = SPICELoss()
    batch = collate(evs[:32]).to(device)

    def step():
        train_step(model, opt, loss_fn, batch)

    s, mem = measure(step, device, repeats)
    row = dict(backend=name, device=str(device), batch=32, iteration_s=s, peak_mib=mem,
               paper_v100_iteration_s=PAPER_ITER_S, speedup_vs_paper=PAPER_ITER_S / s)
    print(f"{name}: batch-32 training iteration {s:.3f} s (paper V100 {PAPER_ITER_S} s, x{PAPER_ITER_S / s:.1f}), "
          f"peak {mem:.0f} MiB", flush=True)
    return row


def available_backends() -> list[str]:
    """torch, landed (the torch backend before issue 12, loaded from git by bench_sparse.py), minkowski."""
    from bench_sparse import register_landed
    names = ["torch"] + (["landed"] if register_landed() else [])
    try:
        import MinkowskiEngine  # noqa: F401
        names.append("minkowski")
    except ImportError:
        pass
    return names


def speedups(rows: list[dict]) -> list[dict]:
    """Per (config, batch): forward+backward time of every other backend over the torch backend's."""
    out = []
    for r in rows:
        if r["backend"] != "torch":
            continue
        others = {o["backend"]: o["forward_backward_s_per_event"] / r["forward_backward_s_per_event"] for o in rows
                  if o["backend"] != "torch" and o["config"] == r["config"] and o["batch"] == r["batch"]}
        out.append(dict(config=r["config"], batch=r["batch"], **others))
    return out


def machine(device: torch.device) -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                python=platform.python_version(), load_average=os.getloadavg(), cpu_model=cpu_model())
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 1 only, demo size only")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = {k: v for k, v in CONFIGS.items() if not (args.quick and k.startswith("paper"))}
    batches = [1] if args.quick else [1, 8]
    evs, source = events(32 if device.type == "cuda" else max(batches), 512)
    print(f"events: {source}; voxels {[len(e) for e in evs[:max(batches)]]}; device {device}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    result = dict(machine=machine(device), events=source, rows=[], training=[])
    for name in available_backends():
        result["rows"] += bench_backend(name, device, batches, args.repeats, configs, args.threads)
        if device.type == "cuda":
            result["training"].append(bench_training_iteration(name, device, evs, args.repeats))
    result["speedup_of_torch"] = speedups(result["rows"])
    for r in result["speedup_of_torch"]:
        print(f"torch backend forward+backward {r['config']} batch {r['batch']}: "
              + ", ".join(f"x{v:.2f} faster than {k}" for k, v in r.items() if k not in ("config", "batch")))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("bench_model.json" if device.type == "cpu" else f"bench_model_{device.type}.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
