"""Is network B better than network A on the same events? Paired per-class differences with their standard error.

Reads two frames written by `spice evaluate --out` on the same events (one row per event and class), pairs
the rows by (event, class), and prints per class: the events both score, A's and B's mean of the metric, the
mean of B − A over the pairs, its standard error (sample std / √n) and the ratio of the two. A difference
within about two standard errors is not resolved by these events (issue 11: the ablations were judged on
40-60 events, where the paired standard error of the ARI is 0.01-0.06).

    python -m spice evaluate --checkpoint weights/A/checkpoint.pt --thresholds weights/A/thresholds.json \
        --data build/val3000.h5 --out build/eval_A.csv      # and the same for B
    .venv/bin/python benchmarks/paired_difference.py build/eval_A.csv build/eval_B.csv [--metric ari]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["event", "class", "class_name"]


def read_frame(path: Path, metric: str) -> pd.DataFrame:
    """The frame at `path`; exits with one line naming the file when it is missing or lacks a column."""
    if not Path(path).is_file():
        sys.exit(f"paired_difference: {path}: no such file (write it with `spice evaluate --out`)")
    frame = pd.read_csv(path)
    missing = set(KEYS + [metric]) - set(frame.columns)
    if missing:
        sys.exit(f"paired_difference: {path}: columns {sorted(missing)} are missing")
    return frame[KEYS + [metric]]


def paired(a: pd.DataFrame, b: pd.DataFrame, metric: str = "ari") -> pd.DataFrame:
    """Per class over the (event, class) rows present in both frames: n, mean A, mean B, mean and standard
    error of B − A, and mean / standard error (NaN where n < 2)."""
    both = a.merge(b, on=KEYS, suffixes=(" A", " B"))
    diff = both[f"{metric} B"] - both[f"{metric} A"]
    rows = []
    for (c, name), idx in both.groupby(["class", "class_name"], sort=True).groups.items():
        d = diff.loc[idx].to_numpy(float)
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size >= 2 else np.nan
        rows.append({"class_name": name, "n": d.size, f"{metric} A": both.loc[idx, f"{metric} A"].mean(),
                     f"{metric} B": both.loc[idx, f"{metric} B"].mean(), "B − A": d.mean(), "standard error": se,
                     "(B − A) / se": d.mean() / se if se > 0 else np.nan})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--metric", default="ari", choices=["ari", "sbd", "purity", "efficiency"])
    args = ap.parse_args(argv)
    table = paired(read_frame(args.a, args.metric), read_frame(args.b, args.metric), args.metric)
    if table.empty:
        sys.exit(f"paired_difference: {args.a} and {args.b} share no (event, class) rows")
    print(f"A = {args.a}, B = {args.b}")
    print(table.round(3).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
