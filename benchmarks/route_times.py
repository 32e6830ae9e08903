"""Where a network's forward+backward time goes, per convolution shape and route (issue 12).

Wraps the torch backend's three route calls (spice.sparse.torch_backend.route_mm: forward and input
gradients; mirrored_grads: both gradients of a submanifold layer; route_tmm: other weight gradients) with
a wall-clock timer, runs one warm-up and one timed forward+backward of SPICE(filters, depth) on `--events`
generated events of grid `--size`, and prints the time per (call, route kind, table or pairs, sites,
K, the layer's Cin and Cout, fill), largest first; the mode is "fused" where the fused CPU kernels run it. route_mm is also the input gradient of down, up and
non-mirrored layers, with the widths of that product (Cout -> Cin). CPU only (the calls are synchronous there).

    .venv/bin/python benchmarks/route_times.py [--filters 32] [--depth 6] [--size 512] [--events 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

import spice.sparse.torch_backend as tb
from spice.sparse import cpu_fused
from bench_sparse import ROOT, fwd_bwd, machine
from profile_model import network_arguments
from spice.data import collate
from spice.data.synthetic import generate
from spice.model import SPICE
from spice.sparse.kernel_map import Gather


def fused(route, k: int | None, c_in: int, c_out: int) -> bool:
    """Whether torch_backend runs a float32 (Cin -> Cout) product of `route` in the fused CPU kernels
    (cpu_fused.fits; a Pick's weight [k, Cin, Cout] must also fit the kernels' cache budget, cpu_fused.fits_pick;
    k None: a weight gradient)."""
    src = torch.empty(0, c_in)
    if k is None or isinstance(route, Gather):
        return cpu_fused.fits(src)
    return cpu_fused.fits_pick(src, torch.empty(k, c_in, c_out, device="meta"))


def mode(route, n_src: int, c_in: int, c_out: int, device) -> str:
    """'pairs' or 'table'/'pick', the way torch_backend's torch routes run this route."""
    if tb.use_pairs(route, n_src, c_in, c_out, device):
        return "pairs"
    return "table" if isinstance(route, Gather) else "pick"


def shape_of(call: str, route, n_src: int, k: int, c_in: int, c_out: int, device, transposed: bool = False) -> tuple:
    """The row key: the layer's (Cin, Cout); `transposed` when the route multiplies by Wᵀ (Cout -> Cin)."""
    kind = "gather" if isinstance(route, Gather) else "pick"
    how = mode(route, n_src, c_out, c_in, device) if transposed else mode(route, n_src, c_in, c_out, device)
    if call == "weight grad":
        how = "fused" if fused(route, None, c_in, c_out) else how
    elif call == "submanifold backward":
        how = "fused" if fused(route, None, c_in, c_out) and fused(route, k, c_out, c_in) else how
    else:
        how = "fused" if (fused(route, k, c_out, c_in) if transposed else fused(route, k, c_in, c_out)) else how
    return (call, kind, how, n_src, k, c_in, c_out, round(route.fill(n_src), 2))


def timed(times: dict, fn, key):
    """fn, with its wall time added to times[key(*args)]."""
    def inner(*args):
        t0 = time.perf_counter()
        out = fn(*args)
        seconds = time.perf_counter() - t0                  # before the key, whose route checks are not timed
        entry = times[key(*args)]
        entry[0] += seconds
        entry[1] += 1
        return out
    return inner


def main(argv=None) -> Path:
    ap = network_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--rows", type=int, default=24, help="shapes printed, largest time first")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    batch = collate(generate(args.events, args.size, args.seed))
    model = SPICE(filters=args.filters, depth=args.depth, reps=2, spatial_size=args.size, backend="torch").train()
    fwd_bwd(model, batch)                                   # warm-up: maps built, allocator warm

    times: dict = collections.defaultdict(lambda: [0.0, 0])
    saved = tb.route_mm, tb.mirrored_grads, tb.route_tmm
    tb.route_mm = timed(times, tb.route_mm, lambda r, src, w: shape_of(
        "forward / input grad", r, src.shape[0], w.shape[0], w.shape[1], w.shape[2], device))
    tb.mirrored_grads = timed(times, tb.mirrored_grads, lambda r, f, g, w: shape_of(
        "submanifold backward", r, g.shape[0], w.shape[0], w.shape[1], w.shape[2], device, transposed=True))
    tb.route_tmm = timed(times, tb.route_tmm, lambda r, src, other: shape_of(
        "weight grad", r, src.shape[0], r.table.shape[1], src.shape[1], other.shape[1], device))
    try:
        t0 = time.perf_counter()
        fwd_bwd(model, batch)
        total = time.perf_counter() - t0
    finally:
        tb.route_mm, tb.mirrored_grads, tb.route_tmm = saved

    in_routes = sum(t for t, _ in times.values())
    n_sites = int(batch.coords.shape[0])
    lines = [f"SPICE F{args.filters} D{args.depth}, {args.events} generated {args.size}³ events ({n_sites} voxels), "
             f"forward+backward, torch backend, {args.threads} thread(s)",
             f"machine: {machine(device)}",
             f"forward+backward {total:.3f} s, of which in the convolutions' routes {in_routes:.3f} s",
             "call | route | mode | sites in | K | Cin | Cout | fill | seconds | calls | share"]
    for key, (seconds, calls) in sorted(times.items(), key=lambda kv: -kv[1][0])[:args.rows]:
        lines.append(" | ".join(str(x) for x in key) + f" | {seconds:.3f} | {calls} | {seconds / total:.1%}")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"route_times_F{args.filters}_D{args.depth}_{args.size}_b{args.events}_{args.threads}t.txt"
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


if __name__ == "__main__":
    main()
