"""Is the learned margin the one the loss asks for? (issue 11; Figure 6 in numbers)

For each true instance of each class in N generated validation events, with the network's embedding
held fixed: the margin σ (normalised units) that minimises the instance's own mask term of the loss
(SPEC §2: Lovász hinge of 2·p_·k − 1 over the class's voxels, p_ik = exp(−‖e_i − μ_k‖² / (2σ²))),
scanned on a geometric grid, beside the instance's learned mean margin σ_k. Prints per class the
medians of both, the instances' spread in embedding space (mean ‖e_i − μ_k‖), and the mask term at the
learned σ_k and at the best σ. A network whose learned σ_k sits at one value for every class while
the best σ differs by class has not learned its margins.

    .venv/bin/python benchmarks/margin_scan.py weights/reference-cpu/checkpoint.pt [--events 10] [--seed 1000]
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from spice.data.synthetic import generate
from spice.evaluate import predict
from spice.losses import lovasz_hinge
from spice.train import load_model

SIGMA_GRID = np.geomspace(0.01, 1.5, 40)


def instance_rows(event, outputs, grid=SIGMA_GRID, min_voxels: int = 10) -> list[dict]:
    """One row per true instance (≥ min_voxels voxels) of `event`: class, voxels, learned σ_k, best σ,
    spread, mask term at σ_k and at the best σ (grid values of the scan)."""
    e = torch.as_tensor(np.asarray(outputs["embedding"]), dtype=torch.float64)
    m = np.asarray(outputs["margin"], dtype=np.float64).reshape(-1)
    sig = torch.as_tensor(grid, dtype=torch.float64)
    rows = []
    for c in np.unique(event.semantic):
        idx = np.flatnonzero((event.semantic == c) & (event.instance >= 0))
        inst = event.instance[idx]
        for k in np.unique(inst):
            own = inst == k
            if own.sum() < min_voxels:
                continue
            y = torch.as_tensor(own, dtype=torch.float64)[:, None].expand(-1, len(grid))
            d2 = ((e[idx] - e[idx][own].mean(0)) ** 2).sum(1, keepdim=True)            # (n,1)
            losses = lovasz_hinge(2 * torch.exp(-d2 / (2 * sig[None] ** 2)) - 1, y).numpy()  # (grid,)
            learned = float(m[idx][own].mean())
            rows.append({"class": int(c), "voxels": int(own.sum()), "learned_sigma": learned,
                         "best_sigma": float(grid[int(np.argmin(losses))]),
                         "spread": float(d2[own].sqrt().mean()),
                         "mask_at_learned": float(np.interp(learned, grid, losses)),
                         "mask_at_best": float(losses.min())})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--seed", type=int, default=1000, help="generator seed (1000: the validation events)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.checkpoint, "cpu").eval()
    events = generate(args.events, args.size, seed=args.seed)
    rows = [r for ev in events for r in instance_rows(ev, predict(model, ev))]
    df = pd.DataFrame(rows)
    df["class_name"] = [events[0].labels[c] for c in df["class"]]
    table = df.groupby("class_name", sort=False).agg(
        instances=("voxels", "size"), voxels=("voxels", "median"), learned_sigma=("learned_sigma", "median"),
        learned_sigma_spread=("learned_sigma", lambda s: s.max() - s.min()), best_sigma=("best_sigma", "median"),
        spread=("spread", "median"), mask_at_learned=("mask_at_learned", "median"),
        mask_at_best=("mask_at_best", "median"))
    print(f"{args.checkpoint}: {args.events} events (size {args.size}, seed {args.seed}); medians over instances, "
          "σ and spread in normalised units (× L/2 for voxels)")
    print(table.round(4).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
