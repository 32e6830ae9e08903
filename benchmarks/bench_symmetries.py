"""Averaging the network's outputs over the cube's symmetries at inference (issue 11): validation ARI per
class and network time per event, for K = 1 (the paper's single pass), 8 (the reflections), 16 and 48.

Each K is scored like a learning-curve snapshot (spice.learning_curve): the best point of the coarse
(s0, p0) grid on the same generated validation events (default: the release's first 40, seed 1000),
so every K gets thresholds made for its own outputs. It is a choice of K on validation events, not a
test-set result. The outputs come from spice.evaluate.forward_events, the path `spice evaluate
--symmetries K` and `spice tune --symmetries K` take.

    .venv/bin/python benchmarks/bench_symmetries.py weights/reference-cpu/checkpoint.pt [--events 40] [--ks 1 8 16 48]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from spice.data.synthetic import generate
from spice.evaluate import forward_events
from spice.learning_curve import CURVE_P0, CURVE_S0
from spice.provenance import cpu_model
from spice.train import load_model
from spice.tune import choose, grid_search


def score(model, events, k: int) -> tuple[dict[str, float], float]:
    """({class name: best-grid mean ARI}, network seconds per event) with outputs averaged over k symmetries."""
    outputs, seconds = [], 0.0
    for ev in events:
        (out,), dt = forward_events(model, [ev], symmetries=k)
        outputs.append(out)
        seconds += dt
    grid, _ = grid_search(outputs, events, CURVE_S0, CURVE_P0, objective="ari")
    best = choose(grid, ["s0", "p0"])
    labels = events[0].labels
    return {labels[int(r["class"])]: float(r["score"]) for _, r in best.iterrows()}, seconds / len(events)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 8, 16, 48])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        sys.exit(f"bench_symmetries: {args.checkpoint}: no such checkpoint")
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint, "cpu").eval()
    events = generate(args.events, model.spatial_size, seed=args.seed)
    rows = []
    for k in args.ks:
        t0 = time.perf_counter()
        ari, per_event = score(model, events, k)
        rows.append({"symmetries": k, **ari, "network s / event": per_event,
                     "wall s": time.perf_counter() - t0})
        print(f"K={k} done in {rows[-1]['wall s']:.0f} s", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).set_index("symmetries")
    print(f"{args.checkpoint}: validation ARI (best coarse grid point) on {args.events} generated events "
          f"(seed {args.seed}), {cpu_model()}, {args.threads} threads")
    print(table.round(3).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
