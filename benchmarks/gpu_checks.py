"""Every GPU check in one call (issues 3, 4, 7): CUDA tests, then speed and memory per sparse backend.

On a CUDA machine this
  1. runs the CUDA tests (`pytest -m cuda`: clustering on CUDA, both sparse backends where available);
  2. for each available backend (landed, torch; minkowski when MinkowskiEngine has CUDA), with the paper's
     network (F=32, D=6, reps=2, 512^3 grid) on synthetic events of ~20k voxels:
     training iteration time at batch 32 (Adam, full SPICE loss; paper: ~10 s on a V100, target
     <= 0.5 s), peak GPU memory, a bf16-autocast training step (loss and gradients finite),
     inference time per event at batch 1 and batched (32);
  3. benchmarks/bench_sparse.py on the device (per-layer GFLOP/s against the dense GEMM rate, network
     fwd+bwd per event; the landed torch backend of before issue 12, the torch backend, minkowski), the
     kernels launched per training step (torch.profiler) and the training-iteration ratios between backends;
  4. clustering time per event on CUDA (`spice.cluster.cluster_event`, Table II thresholds) on the
     network's outputs and on network-like synthetic outputs (benchmarks/bench_cluster.py);
and writes benchmarks/results/gpu_<date>.json and .md with the device name and versions.
Without CUDA it exits with status 2 and says so (`--device cpu --quick` only smoke-tests this script).

    python benchmarks/gpu_checks.py [--iters 5] [--skip-tests] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from spice.cluster import cluster_event  # noqa: E402
from spice.data import collate  # noqa: E402
from spice.data.synthetic import generate_event  # noqa: E402
from spice.losses import SPICELoss  # noqa: E402
from spice.model import SPICE  # noqa: E402
from spice.train import train_step  # noqa: E402

PAPER_ITER_S, TARGET_ITER_S = 10.0, 0.5
THRESHOLDS = {0: (0.65, 0.29), 1: (0.5, 0.087), 2: (0.25, 0.036), 3: (0.85, 0.27), 4: (0.0, 0.087)}  # Table II


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls of fn() (device synchronised around each)."""
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def events_near(n: int, voxels: int, spatial_size: int, seed: int = 0, tolerance: float = 0.25):
    """n synthetic events whose voxel counts lie within ±tolerance of `voxels`."""
    picked, index = [], 0
    while len(picked) < n:
        event = generate_event(index, spatial_size, seed)
        if abs(len(event) - voxels) <= tolerance * voxels:
            picked.append(event)
        index += 1
        if index > 50 * n:
            raise RuntimeError(f"could not find {n} events of ~{voxels} voxels at {spatial_size}^3")
    return picked


def available_backends(device) -> list[str]:
    """torch, landed (the torch backend before issue 12, from git: benchmarks/bench_sparse.py), minkowski."""
    from bench_sparse import register_landed
    names = ["torch"] + (["landed"] if register_landed() else [])
    if importlib.util.find_spec("MinkowskiEngine") is not None:
        import MinkowskiEngine as ME
        if device.type == "cpu" or ME.is_cuda_available():
            names.append("minkowski")
    return names


def cuda_test_files() -> list[str]:
    """The test files holding @pytest.mark.cuda tests (collecting only these needs only their imports,
    so a bare GPU machine needs no notebook or browser packages)."""
    return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if re.search(r"^@pytest\.mark\.cuda$", p.read_text(), re.MULTILINE)]


def run_cuda_tests(timeout: int) -> dict:
    """`pytest -m cuda` on the files with CUDA tests, in a subprocess; returns its exit code and summary."""
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "--tb=line", "-p", "no:cacheprovider",
           *cuda_test_files()]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        return {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
                "summary": lines[-1] if lines else proc.stderr[-500:], "skips": [l for l in lines if "SKIPPED" in l],
                "failures": [l for l in lines if l.startswith(("FAILED", "ERROR"))], "output_tail": proc.stdout[-4000:]}
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[1:]), "returncode": None, "summary": f"timed out after {timeout} s"}


def kernel_launches(step, device) -> dict:
    """CUDA kernels run and kernel-launch API calls made by one call of step(), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    launches = sum(1 for e in events if "LaunchKernel" in e.name)
    return {"cuda_kernels": kernels, "launch_calls": launches}


def finite_grads(model) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def check_backend(backend: str, args, device, train_events, infer_events) -> dict:
    """Training / bf16 / inference numbers of one backend; the model's eval outputs for clustering."""
    torch.manual_seed(0)
    model = SPICE(filters=args.filters, depth=args.depth, reps=2, spatial_size=args.spatial_size,
                  backend=backend).to(device)
    loss_fn = SPICELoss()
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    batch = collate(train_events).to(device)
    res = {"backend": backend, "batch_size": len(train_events), "voxels_per_batch": int(len(batch.coords))}

    def step(autocast: bool = False):
        return train_step(model, opt, loss_fn, batch, stage=2, bf16=autocast)["total"].detach()

    model.train()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed(step, device, args.iters)
    res.update(train_iter_s=float(np.median(times)), train_iter_s_all=times)
    if not args.quick:  # the paper's 10 s and our 0.5 s target are for batch 32 of ~20k-voxel events
        res.update(speedup_vs_paper_v100=PAPER_ITER_S / float(np.median(times)),
                   meets_target=float(np.median(times)) <= TARGET_ITER_S)
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        res["kernels_per_train_step"] = kernel_launches(step, device)
    try:
        loss = step(autocast=True)
        res["bf16_step"] = {"loss": float(loss), "finite": bool(torch.isfinite(loss)) and finite_grads(model)}
    except Exception as err:  # report, do not hide: e.g. a backend kernel without bf16 support
        res["bf16_step"] = {"error": f"{type(err).__name__}: {err}", "finite": False}

    model.eval()
    singles = [collate([e]).to(device) for e in infer_events]
    batched = collate(infer_events).to(device)
    outputs = []
    with torch.no_grad():
        model(singles[0])  # warm-up
        per_event = []
        for b in singles:
            sync(device)
            t = time.perf_counter()
            outputs.append(model(b))
            sync(device)
            per_event.append(time.perf_counter() - t)
        batched_s = timed(lambda: model(batched), device, max(1, args.iters // 2))
    res.update(infer_batch1_s_per_event=float(np.median(per_event)),
               infer_batched_s_per_event=float(np.median(batched_s)) / len(infer_events),
               infer_batched_size=len(infer_events))
    return res, outputs


def check_clustering(outputs, events, device) -> dict:
    """cluster_event per event on `device`: on network outputs and on network-like synthetic outputs."""
    from bench_cluster import synthetic_event
    res = {}
    if outputs:
        sems = [torch.as_tensor(e.semantic, device=device) for e in events]
        try:
            cluster_event(outputs[0], sems[0], THRESHOLDS)
            t = timed(lambda: [cluster_event(o, s, THRESHOLDS) for o, s in zip(outputs, sems)], device, 1)[0]
            res["network_outputs_s_per_event"] = t / len(outputs)
        except ValueError as err:
            res["network_outputs_error"] = str(err)
    rng = np.random.default_rng(0)
    synth = []
    for _ in range(len(events) or 8):
        out, sem, _ = synthetic_event(rng)
        synth.append(({k: torch.as_tensor(v, device=device) for k, v in out.items()}, torch.as_tensor(sem, device=device)))
    cluster_event(*synth[0], THRESHOLDS)
    t = timed(lambda: [cluster_event(o, s, THRESHOLDS) for o, s in synth], device, 1)[0]
    res["synthetic_outputs_s_per_event"] = t / len(synth)
    res["synthetic_voxels_per_event"] = int(np.mean([len(s) for _, s in synth]))
    return res


def open_device(spec: str, script: str):
    """(torch.device, its description), or None after saying why when CUDA is asked for but not visible."""
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{script}: no CUDA device is visible (torch.cuda.is_available() is False), nothing run. Run it on "
              "a machine with an NVIDIA GPU and a CUDA build of torch (--device cpu --quick smoke-tests it).",
              file=sys.stderr)
        return None
    return device, torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def versions(device) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None}
    if importlib.util.find_spec("MinkowskiEngine") is not None:
        import MinkowskiEngine as ME
        info["MinkowskiEngine"] = ME.__version__
        info["MinkowskiEngine_cuda"] = bool(ME.is_cuda_available())
    try:
        from spice.provenance import git_commit
        info["spice_git"] = git_commit()
    except ImportError:
        pass
    return info


def markdown(report: dict) -> str:
    lines = [f"# GPU checks, {report['date']}", "",
             f"Device: **{report['device']}**; versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()
                                                                     if not isinstance(v, dict)), "",
             f"Command: `{report['command']}`", ""]
    tests = report.get("cuda_tests")
    if tests:
        lines += [f"CUDA tests (`{tests['command']}`): exit {tests['returncode']}, {tests['summary']}", ""]
        lines += [f"- {line}" for line in tests.get("failures", [])] + ([""] if tests.get("failures") else [])
    lines += ["| backend | voxels/batch | train iter (batch {}) s | vs paper 10 s | peak GiB | bf16 step finite | "
              "infer s/event (batch 1) | infer s/event (batched) | kernels/step |".format(report["config"]["batch"]),
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["backends"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r['voxels_per_batch']} | {r['train_iter_s']:.3f} | "
                     f"{r.get('speedup_vs_paper_v100', float('nan')):.0f}x | {r.get('peak_memory_gib', float('nan')):.1f} | "
                     f"{r['bf16_step'].get('finite')} | {r['infer_batch1_s_per_event']:.4f} | "
                     f"{r['infer_batched_s_per_event']:.4f} | {r.get('kernels_per_train_step', {}).get('cuda_kernels', '')} |")
    if "train_iter_speedup_of_torch" in report:
        lines += ["", "torch backend faster per training iteration than: " + ", ".join(
            f"{k} x{v:.2f}" for k, v in report["train_iter_speedup_of_torch"].items())]
    c = report.get("clustering", {})
    lines += ["", "Clustering per event on the device: " + ", ".join(
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in c.items()), ""]
    return "\n".join(lines)


DEFAULT_OUT = ROOT / "benchmarks" / "results"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--voxels", type=int, default=20_000, help="target voxels per event")
    p.add_argument("--spatial-size", type=int, default=512)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--iters", type=int, default=5, help="timed training iterations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer-events", type=int, default=32)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-sparse", action="store_true", help="skip benchmarks/bench_sparse.py on the device")
    p.add_argument("--tests-timeout", type=int, default=240)
    p.add_argument("--quick", action="store_true", help="tiny sizes: smoke test of this script, numbers meaningless")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:  # a smoke test of this script: its numbers are meaningless, so they stay out of results/
        args.out = Path(tempfile.mkdtemp(prefix="gpu_checks_quick_")) if args.out == DEFAULT_OUT else args.out
        args.batch, args.voxels, args.spatial_size, args.filters, args.depth = 2, 2000, 128, 4, 3
        args.iters, args.warmup, args.infer_events = 2, 1, 2

    opened = open_device(args.device, "gpu_checks")
    if opened is None:
        return 2
    device, name = opened
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "device": name,
              "versions": versions(device), "command": "python " + " ".join([Path(__file__).name] + sys.argv[1:]),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "paper_iter_s_v100": PAPER_ITER_S, "target_iter_s": TARGET_ITER_S}
    print(f"gpu_checks on {name}", flush=True)

    if not args.skip_tests and device.type == "cuda":
        report["cuda_tests"] = run_cuda_tests(args.tests_timeout)
        print("cuda tests:", report["cuda_tests"]["summary"], flush=True)

    train_events = events_near(args.batch, args.voxels, args.spatial_size, seed=0)
    infer_events = events_near(args.infer_events, args.voxels, args.spatial_size, seed=1)
    report["config"]["mean_voxels_per_event"] = float(np.mean([len(e) for e in train_events]))
    report["backends"], outputs = [], []
    for backend in available_backends(device):
        print(f"backend {backend} ...", flush=True)
        try:
            res, outs = check_backend(backend, args, device, train_events, infer_events)
            outputs = outputs or outs
        except Exception as err:  # one backend failing must not hide the other's numbers
            res = {"backend": backend, "error": f"{type(err).__name__}: {err}"}
        report["backends"].append(res)
        print(json.dumps(res, default=float), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = {r["backend"]: r for r in report["backends"] if "train_iter_s" in r}
    if "torch" in base:  # how many times faster the new torch backend is per training iteration
        report["train_iter_speedup_of_torch"] = {n: r["train_iter_s"] / base["torch"]["train_iter_s"]
                                                 for n, r in base.items() if n != "torch"}
        print("torch backend faster per training iteration than:", report["train_iter_speedup_of_torch"], flush=True)
    if not args.skip_sparse:  # per-layer GFLOP/s vs dense GEMM and network fwd+bwd, landed vs torch vs minkowski
        import bench_sparse
        try:
            quick = ["--quick", "--skip", "layers", "--events", "2", "--size", "64", "--repeats", "1"]
            stem = bench_sparse.main(["--device", args.device, "--out", str(args.out)]
                                     + (quick if args.quick else ["--repeats", "5"]))
            report["bench_sparse"] = json.loads(stem.with_suffix(".json").read_text())
        except Exception as err:  # report, do not hide the other numbers
            report["bench_sparse"] = {"error": f"{type(err).__name__}: {err}"}
        import bench_routes  # table or per-offset pairs per layer: the measurement PAIRS_FILL["cuda"] waits for
        try:
            stem = bench_routes.main(["--device", args.device, "--out", str(args.out)]
                                     + (["--quick"] if args.quick else ["--repeats", "5"]))
            report["bench_routes"] = json.loads(stem.with_suffix(".json").read_text())
        except Exception as err:
            report["bench_routes"] = {"error": f"{type(err).__name__}: {err}"}
    report["clustering"] = check_clustering(outputs, infer_events, device)
    print("clustering:", report["clustering"], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu_{dt.date.today().isoformat()}" if device.type == "cuda" else args.out / "gpu_checks_cpu_smoke"
    write_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2, default=float) + "\n")
    write_atomic(stem.with_suffix(".md"), markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
