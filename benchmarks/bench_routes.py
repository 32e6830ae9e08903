"""Gather table or per-offset pairs (issue 12): which route is faster for each layer of the torch backend.

1. Per layer. For the coordinate sets of true-scale generated events (batch of 192³ events, levels 0-3 of the U-Net,
and 512³ events for the paper size), each 3³ submanifold and 2³ down/up map is timed at several widths
both ways, forward + input gradient + weight gradient, the two routes interleaved repeat by repeat (so
load from other processes hits both alike). Printed per case: the map's fill (pairs / table entries),
milliseconds per route, the ratio table / pairs, and the route `spice.sparse.torch_backend.use_pairs`
picks.
2. Per network: forward + backward of the demo network (F16 D4, the batch of 192³ events) and the paper
   network (F32 D6, one 512³ event) with the table everywhere against the rule's choice, interleaved.
Writes benchmarks/results/bench_routes_{cpu_<threads>t,cuda}.{json,txt}.

    .venv/bin/python benchmarks/bench_routes.py [--threads 1] [--repeats 5] [--events 8] [--device cpu|cuda] [--out DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import json
import os
import platform
import time
from pathlib import Path

import torch

from spice.data import collate
from spice.data.synthetic import generate
from spice.model import SPICE
from spice.provenance import cpu_model
from spice.sparse import torch_backend as tb

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def forced(route: str, device: str):
    """Every route of the torch backend (Gather and Pick) runs as one GEMM ("table") or as pairs while inside."""
    saved = dict(tb.PAIRS_MIN_WORK), dict(tb.PAIRS_FILL)
    tb.PAIRS_MIN_WORK[device] = (0, 0)
    tb.PAIRS_FILL[device] = 1.01 if route == "pairs" else -1.0
    try:
        yield
    finally:
        for table, old in zip((tb.PAIRS_MIN_WORK, tb.PAIRS_FILL), saved):
            table.clear()
            table.update(old)


def levels(events, device, depth: int):
    """SparseTensors (features unused) at strides 1, 2, 4, ... of the collated events."""
    batch = collate(events)
    coords = batch.coords.to(device)
    x = tb.make_input(coords, torch.zeros(coords.shape[0], 1, device=device))
    out = [x]
    for _ in range(depth):
        x = tb.downsample_conv2(x, torch.zeros(8, 1, 1, device=device))
        out.append(x)
    return out


def time_once(fn, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def case(kind: str, fine, coarse, c_in: int, c_out: int, device: str, repeats: int) -> dict:
    """Time one layer both ways; the map is built (and its pairs listed) before timing."""
    gen = torch.Generator().manual_seed(0)
    src = coarse if kind == "up" else fine
    feats = torch.randn(len(src), c_in, generator=gen).to(device).requires_grad_()
    w = (torch.randn(27 if kind == "subm" else 8, c_in, c_out, generator=gen) * 0.1).to(device).requires_grad_()

    def step():
        if kind == "subm":
            y = tb.submanifold_conv3(fine.with_feats(feats), w)
        elif kind == "down":
            y = tb.downsample_conv2(fine.with_feats(feats), w)
        else:
            y = tb.upsample_conv2(coarse.with_feats(feats), w, fine)
        y.feats.backward(torch.ones_like(y.feats))
        return y

    y = step()
    cmap_key = {"subm": (fine.stride, "subm3"), "down": (fine.stride, "down2"), "up": (fine.stride, "up2")}[kind]
    cmap = fine.context.maps[cmap_key][1]
    cmap = cmap[1] if isinstance(cmap, tuple) else cmap
    gather = cmap.forward if isinstance(cmap.forward, tb.Gather) else cmap.backward
    n_src = cmap.n_in if gather is cmap.forward else cmap.n_out
    times = {"table": [], "pairs": []}
    for route in times:                      # warm-up of both routes
        with forced(route, device):
            step()
    for _ in range(repeats):
        for route in times:
            with forced(route, device):
                times[route].append(time_once(step, device))
    best = {r: min(t) * 1e3 for r, t in times.items()}
    return {"kind": kind, "stride": fine.stride, "sites": len(y.feats), "c_in": c_in, "c_out": c_out,
            "fill": round(gather.fill(n_src), 3), "table_ms": round(best["table"], 2),
            "pairs_ms": round(best["pairs"], 2), "table_over_pairs": round(best["table"] / best["pairs"], 2),
            "picked": "pairs" if tb.use_pairs(gather, n_src, c_in, c_out, torch.device(device)) else "table"}


def network(label: str, cfg: dict, events, device: str, repeats: int) -> dict:
    """Forward+backward seconds of one SPICE network on the collated events: table everywhere vs the rule."""
    batch = collate(events).to(device)
    torch.manual_seed(0)
    model = SPICE(**cfg, reps=2, spatial_size=events[0].spatial_size, backend="torch").to(device).train()

    def run():
        model.zero_grad(set_to_none=True)
        out = model(batch)
        (out["embedding"].sum() + out["margin"].sum() + out["seediness"].sum()).backward()

    contexts = {"table": lambda: forced("table", device), "rule": contextlib.nullcontext}
    for make in contexts.values():
        with make():
            run()
    times = {name: [] for name in contexts}
    for _ in range(repeats):
        for name, make in contexts.items():
            with make():
                times[name].append(time_once(run, device))
    best = {name: min(t) for name, t in times.items()}
    return {"network": label, "events": len(events), "voxels": int(batch.coords.shape[0]),
            "table_s": round(best["table"], 3), "rule_s": round(best["rule"], 3),
            "table_over_rule": round(best["table"] / best["rule"], 2)}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--events", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--net-repeats", type=int, default=3)
    ap.add_argument("--skip-paper", action="store_true", help="no 512³ cases")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 small event, 1 repeat, no paper size")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ns = ap.parse_args(argv)
    if ns.quick:
        ns.events, ns.repeats, ns.net_repeats, ns.skip_paper = 1, 1, 1, True
    torch.set_num_threads(ns.threads)
    load0 = os.getloadavg()
    rows = []
    sets = {"demo 192³": (generate(ns.events, 64 if ns.quick else 192, seed=3000), [16, 32, 64, 128])}
    if not ns.skip_paper:
        sets["paper 512³"] = (generate(1, 512, seed=3000), [32, 64, 128, 192])
    for name, (events, widths) in sets.items():
        lv = levels(events, ns.device, 3)
        for level in range(4):
            for width in widths:
                for kind in ("subm", "down", "up") if level < 3 else ("subm",):
                    r = case(kind, lv[level], lv[level + 1] if level < 3 else None, width, width, ns.device,
                             ns.repeats)
                    r = {"set": name, "level": level, **r}
                    rows.append(r)
                    print(f"{name:10s} level {level} {kind:4s} width {width:3d} sites {r['sites']:7d} "
                          f"fill {r['fill']:.2f}  table {r['table_ms']:8.2f} ms  pairs {r['pairs_ms']:8.2f} ms  "
                          f"table/pairs {r['table_over_pairs']:5.2f}  picked {r['picked']}", flush=True)
    nets = [network("demo F16 D4", {"filters": 16, "depth": 4}, sets["demo 192³"][0], ns.device, ns.net_repeats)]
    if not ns.skip_paper:
        nets.append(network("paper F32 D6", {"filters": 32, "depth": 6}, sets["paper 512³"][0], ns.device,
                            ns.net_repeats))
    for r in nets:
        print(f"{r['network']}: {r['events']} events, {r['voxels']} voxels, forward+backward table {r['table_s']:.3f} s, "
              f"rule {r['rule_s']:.3f} s: x{r['table_over_rule']:.2f}", flush=True)
    load1 = os.getloadavg()
    wrong = [r for r in rows if (r["table_over_pairs"] > 1.1 and r["picked"] == "table")
             or (r["table_over_pairs"] < 0.9 and r["picked"] == "pairs")]
    summary = (f"{len(rows)} cases; the rule picks the slower route by more than 10% in {len(wrong)}; "
               f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
               f"{ns.threads} thread(s), {cpu_model()}")
    print(summary)
    suffix = "_cuda" if ns.device == "cuda" else f"_cpu_{ns.threads}t"
    out = ns.out
    out.mkdir(parents=True, exist_ok=True)
    doc = {"device": ns.device, "threads": ns.threads, "repeats": ns.repeats, "load_start": load0[0],
           "load_end": load1[0], "machine": platform.platform(), "rows": rows, "networks": nets,
           "summary": summary}
    tmp = out / f"bench_routes{suffix}.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / f"bench_routes{suffix}.json")
    lines = [f"{r['set']:10s} level {r['level']} {r['kind']:4s} width {r['c_in']:3d} fill {r['fill']:.2f} "
             f"table {r['table_ms']:8.2f} ms pairs {r['pairs_ms']:8.2f} ms table/pairs {r['table_over_pairs']:5.2f} "
             f"picked {r['picked']}" for r in rows]
    lines += [f"{r['network']}: {r['events']} events, {r['voxels']} voxels, forward+backward table {r['table_s']:.3f} s, "
              f"rule {r['rule_s']:.3f} s: x{r['table_over_rule']:.2f}" for r in nets]
    tmp = out / f"bench_routes{suffix}.txt.tmp"
    tmp.write_text("\n".join(["$ " + " ".join(["benchmarks/bench_routes.py", *(sys.argv[1:] if argv is None else argv)]), *lines, summary, ""]))
    tmp.replace(out / f"bench_routes{suffix}.txt")
    return out / f"bench_routes{suffix}"


if __name__ == "__main__":
    main()
