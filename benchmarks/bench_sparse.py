"""Sparse convolution speed (issue 12): the torch backend against the landed code and MinkowskiEngine.

In one run, old and new timings interleaved (so load from other processes hits both alike):
  1. per layer type (submanifold 3³, down 2³, up 2³) and width: forward+backward time, useful GFLOP/s
     (pairs · Cin · Cout · 2 flops, times 3 for forward, input and weight gradient) and its fraction of
     the dense GEMM rate measured on the same machine for the same GEMM shapes;
  2. the whole network's forward+backward per event: demo size (F16 D4, or `--filters`; batch 8 of 192³ events) and
     paper size (F32 D6, 512³ events, batch 1 and 8);
  3. the demo training iteration (train_step: forward, SPICE loss, backward, Adam), stage 1 and stage 2.
Backends: "landed" (spice/sparse of git LANDED_REV, the code before issue 12, loaded into a temporary
package), "previous" (the same for `--previous REV`, to time one change), "torch" (this checkout) and
"minkowski" when MinkowskiEngine imports.
Writes benchmarks/results/<--name, default bench_sparse>[_cuda].json and .txt with the machine and the load average.

    .venv/bin/python benchmarks/bench_sparse.py [--threads 2] [--repeats 3] [--net-repeats 2] [--quick] [--device cpu|cuda]
                                                [--previous REV] [--name STEM]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spice import sparse
from spice.data import collate
from spice.data.synthetic import generate
from spice.losses import SPICELoss
from spice.model import SPICE
from spice.provenance import cpu_model
from spice.train import train_step

ROOT = Path(__file__).resolve().parents[1]
LANDED_REV = "3be9289ab39203c0d3ba44a7778287f3df94bff0"  # the torch backend before issue 12
LANDED_FILES = ("tensor.py", "kernel_map.py", "torch_backend.py")
FUSED_FILES = ("cpu_fused.py", "cpu_kernels.cpp")  # copied too where the revision has them (from 763e74d)


def register_rev(name: str, rev: str, source: str | None = None) -> bool:
    """Make the sparse backend of git `rev` selectable as backend `name` (package spice_<name>).

    Its files come from `git show rev:spice/sparse/...`, or from the folder `source` when given (one
    holding those three files, e.g. on a machine without the git history), with its fused CPU kernels where
    it has them (compiled on first use under their own name). False when neither works.
    """
    if name in sparse.BACKENDS:
        return True
    folder = Path(tempfile.mkdtemp(prefix=f"spice_{name}_")) / f"spice_{name}"
    folder.mkdir()
    try:
        for file in LANDED_FILES:
            text = (Path(source) / file).read_text() if source else subprocess.run(
                ["git", "show", f"{rev}:spice/sparse/{file}"], cwd=ROOT, capture_output=True, text=True,
                check=True).stdout
            (folder / file).write_text(text)
        for file in FUSED_FILES if not source else ():
            shown = subprocess.run(["git", "show", f"{rev}:spice/sparse/{file}"], cwd=ROOT, capture_output=True,
                                   text=True)
            if shown.returncode == 0:
                (folder / file).write_text(shown.stdout)
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"bench_sparse: the {name} backend ({rev[:7]}) is unavailable: {err}", file=sys.stderr)
        return False
    (folder / "__init__.py").write_text("")
    sys.path.insert(0, str(folder.parent))
    sparse.BACKENDS[name] = f"spice_{name}.torch_backend"
    return True


def register_landed() -> bool:
    """The code before issue 12 (LANDED_REV, or the folder $SPICE_LANDED_DIR) as backend "landed"."""
    return register_rev("landed", LANDED_REV, os.environ.get("SPICE_LANDED_DIR"))


def backends(previous: str | None = None) -> list[str]:
    """"landed" (LANDED_REV, or $SPICE_LANDED_DIR), "previous" (git rev `previous`, when given), "torch"
    (this checkout) and "minkowski" (when MinkowskiEngine imports)."""
    names = ["landed"] if register_landed() else []
    if previous and register_rev("previous", previous):
        names.append("previous")
    names.append("torch")
    try:
        import MinkowskiEngine  # noqa: F401
        names.append("minkowski")
    except ImportError:
        pass
    return names


def write_results(stem: Path, result: dict, lines: list[str]) -> Path:
    """stem.json (result) and stem.txt (lines), each under a temporary name first; returns stem."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".txt", "\n".join(lines) + "\n")):
        tmp = stem.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))
    print(f"wrote {stem}.json and .txt")
    return stem


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall seconds of each fn over `repeats` rounds; every round calls all fns in turn (after one warm-up each)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def levels(coords: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Coordinates of levels 0..n-1 (stride 2^i) of a batch, as the network makes them."""
    out = [coords]
    for _ in range(n - 1):
        c = out[-1].clone()
        c[:, 1:] >>= 1
        out.append(torch.unique(c, dim=0))
    return out


def dense_gemm_rate(n: int, k: int, c_in: int, c_out: int, device, dtype, repeats: int) -> float:
    """GFLOP/s of the three dense GEMMs of a K-offset conv on n rows: (n, K·Cin)×(K·Cin, Cout), its input
    gradient (n, K·Cout)×(K·Cout, Cin) and weight gradient (K·Cin, n)×(n, Cout)."""
    a = torch.randn(n, k * c_in, device=device, dtype=dtype)
    w = torch.randn(k * c_in, c_out, device=device, dtype=dtype)
    g = torch.randn(n, c_out, device=device, dtype=dtype)
    ga = torch.randn(n, k * c_out, device=device, dtype=dtype)
    wt = torch.randn(k * c_out, c_in, device=device, dtype=dtype)

    def three():
        torch.mm(a, w)
        torch.mm(ga, wt)
        torch.mm(a.t(), g)

    s = interleaved({"gemm": three}, repeats, device)["gemm"]
    return 3 * 2 * n * k * c_in * c_out / s / 1e9


def layer_case(names, op: str, coords: torch.Tensor, coarse: torch.Tensor, width: int, device, repeats: int) -> dict:
    """fwd+bwd seconds of one layer on every backend, useful GFLOP/s and the fraction of the dense GEMM rate."""
    gen = torch.Generator().manual_seed(0)
    k = 27 if op == "subm3" else 8
    src = coarse if op == "up2" else coords
    feats = torch.randn(len(src), width, generator=gen).to(device)
    weight = torch.randn(k, width, width, generator=gen).to(device).requires_grad_()
    grad = None
    fns = {}
    for name in names:
        be = sparse.get_backend(name)
        x = be.make_input(coords, torch.zeros(len(coords), 1, device=device))
        low = be.downsample_conv2(x, torch.zeros(8, 1, 1, device=device))   # the level the network pools to
        if op == "up2":
            low = low.with_feats(feats.clone().requires_grad_())
        else:
            x = x.with_feats(feats.clone().requires_grad_())

        def run(be=be, x=x, low=low):
            if op == "subm3":
                y = be.submanifold_conv3(x, weight)
            elif op == "down2":
                y = be.downsample_conv2(x, weight)
            else:
                y = be.upsample_conv2(low, weight, x)
            g = torch.ones_like(y.feats) if grad is None else grad
            torch.autograd.grad(y.feats, (x.feats if op != "up2" else low.feats, weight), g)
        fns[name] = run
    seconds = interleaved(fns, repeats, device)
    cache = sparse.get_backend("torch").make_input(coords, torch.zeros(len(coords), 1, device=device)).context
    if op == "subm3":
        from spice.sparse.kernel_map import SiteIndex, submanifold_map
        cmap = submanifold_map(SiteIndex.build(coords, cache.radix), coords, cache.radix)
        n_rows = len(coords)
    else:
        from spice.sparse.kernel_map import downsample_map
        _, cmap = downsample_map(coords, cache.radix)
        n_rows = cmap.n_out
    pairs = cmap.pairs()
    useful = 3 * 2 * pairs * width * width / 1e9
    dense = dense_gemm_rate(n_rows, k, width, width, device, feats.dtype, repeats)
    row = dict(op=op, width=width, sites=len(src), pairs=pairs, dense_gemm_gflops=dense)
    for name, s in seconds.items():
        row[f"{name}_s"] = s
        row[f"{name}_gflops"] = useful / s
        row[f"{name}_of_dense"] = useful / s / dense
    return row


def fwd_bwd(model: SPICE, batch) -> None:
    """One forward and backward of `model` in training mode, with the sum of its outputs as the loss."""
    model.zero_grad(set_to_none=True)
    out = model(batch)
    (out["embedding"].sum() + out["margin"].sum() + out["seediness"].sum()).backward()


def network_case(names, label: str, cfg: dict, events, device, repeats: int) -> dict:
    """Forward+backward (training mode, a sum of the outputs as loss) seconds per event for every backend."""
    batch = collate(events).to(device)
    fns = {}
    for name in names:
        torch.manual_seed(0)
        model = SPICE(**cfg, reps=2, spatial_size=events[0].spatial_size, backend=name).to(device).train()
        fns[name] = lambda model=model: fwd_bwd(model, batch)
    seconds = interleaved(fns, repeats, device)
    return dict(config=label, batch=len(events), voxels=[len(e) for e in events],
                **{f"{n}_s_per_event": s / len(events) for n, s in seconds.items()})


def training_case(names, cfg: dict, events, device, repeats: int) -> dict:
    """Demo training iteration (spice.train.train_step with Adam) in stage 1 and stage 2 per backend.

    "landed" stands for the code before issue 12, whose stage 1 also ran the frozen seediness decoder:
    its stage-1 step runs the full forward (then backward of L_emb, as train_step does)."""
    batch = collate(events).to(device)
    loss_fn = SPICELoss()
    row = dict(config=f"demo F{cfg['filters']} D4", batch=len(events), voxels=[len(e) for e in events])
    for stage in (1, 2):
        fns = {}
        for name in names:
            torch.manual_seed(0)
            model = SPICE(**cfg, reps=2, spatial_size=events[0].spatial_size, backend=name).to(device)
            from spice.train import set_stage
            set_stage(model, stage)
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

            def run(model=model, opt=opt, landed=name == "landed"):
                if stage == 1 and landed:
                    losses = loss_fn(model(batch), batch)
                    opt.zero_grad(set_to_none=True)
                    losses["emb"].backward()
                    opt.step()
                else:
                    train_step(model, opt, loss_fn, batch, stage=stage)
            fns[name] = run
        for n, s in interleaved(fns, repeats, device).items():
            row[f"stage{stage}_{n}_s"] = s
    return row


def machine(device: torch.device) -> dict:
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                python=platform.python_version())
    info["cpu_model"] = cpu_model()
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def ratio(row: dict, a: str, b: str, key: str = "{}_s") -> str:
    """'x2.31' = time of a / time of b (how many times faster b is), or '-' when either is missing."""
    ka, kb = key.format(a), key.format(b)
    return f"x{row[ka] / row[kb]:.2f}" if ka in row and kb in row else "-"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per layer case")
    ap.add_argument("--net-repeats", type=int, default=2, help="timed rounds per network and training case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 192])
    ap.add_argument("--filters", type=int, default=16, help="F of the demo-size network and training step")
    ap.add_argument("--events", type=int, default=8, help="demo batch size")
    ap.add_argument("--size", type=int, default=192, help="demo grid side")
    ap.add_argument("--quick", action="store_true", help="layers and demo size only (no paper size, no training)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: layers,demo,paper,train")
    ap.add_argument("--previous", help="also time the torch backend of this git revision (backend 'previous')")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="bench_sparse", help="stem of the result files in --out")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(","))) | ({"paper", "train"} if args.quick else set())
    names = backends(args.previous)
    if device.type == "cuda" and "minkowski" in names:  # listed only when it imports
        import MinkowskiEngine as ME
        if not ME.is_cuda_available():
            names.remove("minkowski")
    result = dict(machine=machine(device), command="python " + " ".join([Path(__file__).name] + sys.argv[1:]),
                  landed_rev=LANDED_REV, previous_rev=args.previous, backends=names, load_average_start=os.getloadavg(),
                  layers=[], networks=[], training=[])
    lines = [f"bench_sparse on {result['machine'].get('cpu_model', platform.processor())} "
             f"({os.cpu_count()} cores), torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"device {device}; backends {names}; load average {os.getloadavg()}"]
    print(lines[0], flush=True)

    demo_events = generate(args.events, args.size, args.seed)
    nets = []
    if "demo" not in skip:
        nets.append((f"demo F{args.filters} D4", dict(filters=args.filters, depth=4), demo_events))
    if "paper" not in skip:
        paper_events = generate(8, 512, args.seed)
        nets += [("paper F32 D6", dict(filters=32, depth=6), paper_events[:1]),
                 ("paper F32 D6", dict(filters=32, depth=6), paper_events)]
    for label, cfg, evs in nets:
        row = network_case(names, label, cfg, evs, device, args.net_repeats)
        result["networks"].append(row)
        lines.append(f"network {label} batch {row['batch']} ({sum(row['voxels'])} voxels: {row['voxels']}) fwd+bwd "
                     "s/event: " + ", ".join(f"{n} {row[n + '_s_per_event']:.3f}" for n in names)
                     + f"; torch faster than landed {ratio(row, 'landed', 'torch', '{}_s_per_event')}, "
                     f"than previous {ratio(row, 'previous', 'torch', '{}_s_per_event')}, "
                     f"than minkowski {ratio(row, 'minkowski', 'torch', '{}_s_per_event')}")
        print(lines[-1], flush=True)

    if "train" not in skip:
        row = training_case(names, dict(filters=args.filters, depth=4), demo_events, device, args.net_repeats)
        result["training"].append(row)
        for stage in (1, 2):
            lines.append(f"training iteration demo F{args.filters} D4 batch {args.events} stage {stage}: " + ", ".join(
                f"{n} {row[f'stage{stage}_{n}_s']:.3f} s" for n in names)
                + f"; torch faster than landed {ratio(row, f'stage{stage}_landed', f'stage{stage}_torch')}, "
                f"than previous {ratio(row, f'stage{stage}_previous', f'stage{stage}_torch')}")
            print(lines[-1], flush=True)

    if "layers" not in skip:
        lv = levels(collate(demo_events).coords.to(device), 4)
        lines.append(f"layers on the demo batch ({args.events} events of {args.size}³, seed {args.seed}): sites per level "
                     f"{[len(c) for c in lv]}; width ≤ 64 on level 0, 128 on level 1, 192 on level 2")
        lines.append(f"{'layer':6s} {'width':>5s} {'sites':>7s} {'pairs':>8s} {'dense GF/s':>10s} | "
                     + " | ".join(f"{n} s, GF/s, of dense" for n in names) + " | landed/torch | previous/torch")
        for width in args.widths:
            level = 0 if width <= 64 else (1 if width <= 128 else 2)
            for op in ("subm3", "down2", "up2"):
                row = layer_case(names, op, lv[level], lv[level + 1], width, device, args.repeats)
                row["level"] = level
                result["layers"].append(row)
                lines.append(f"{op:6s} {width:5d} {row['sites']:7d} {row['pairs']:8d} {row['dense_gemm_gflops']:10.1f} | "
                             + " | ".join(f"{row[n + '_s']:.4f} {row[n + '_gflops']:5.1f} {row[n + '_of_dense']:4.0%}"
                                          for n in names) + f" | {ratio(row, 'landed', 'torch')} | {ratio(row, 'previous', 'torch')}")
                print(lines[-1], flush=True)

    result["load_average_end"] = os.getloadavg()
    lines.append(f"load average at the end {result['load_average_end']}")
    return write_results(args.out / (args.name if device.type == "cpu" else f"{args.name}_{device.type}"),
                         result, lines)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
