"""Two learning curves side by side (issue 11 ablations): validation ARI per class at the iterations both hold.

Each folder is a released weights folder (weights/<name>/...) with its learning_curve.csv (spice.release,
spice.learning_curve: 40 validation events, best point of a coarse threshold grid per snapshot). Prints one
markdown row per shared iteration: the ARI of each class for A, for B, and B − A, then the mean over the rows.
Curves compare only when made the same way (same validation events, same schedule and data stream).

    .venv/bin/python benchmarks/compare_curves.py weights/reference-cpu/part-b weights/depth5-cpu/part-b [--classes HIP MIP Shower Delta]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def read_curve(folder: Path) -> pd.DataFrame:
    """(iteration × class_name) ARI table of folder/learning_curve.csv; exits with one line when it is missing."""
    path = Path(folder) / "learning_curve.csv"
    if not path.is_file():
        sys.exit(f"compare_curves: {path}: no learning curve (release a run with snapshots first)")
    curve = pd.read_csv(path)
    missing = {"iteration", "class_name", "ari"} - set(curve.columns)
    if missing:
        sys.exit(f"compare_curves: {path}: columns {sorted(missing)} are missing")
    return curve.pivot_table(index="iteration", columns="class_name", values="ari")


def compare(a: pd.DataFrame, b: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Rows at the iterations of both curves: A, B and B − A per class, and a last row of means."""
    shared = a.index.intersection(b.index)
    rows = pd.DataFrame(index=shared)
    for c in classes:
        rows[f"{c} A"] = a.loc[shared, c]
        rows[f"{c} B"] = b.loc[shared, c]
        rows[f"{c} B−A"] = b.loc[shared, c] - a.loc[shared, c]
    rows.loc["mean"] = rows.mean()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="weights folder A (the baseline)")
    ap.add_argument("b", type=Path, help="weights folder B (the variant)")
    ap.add_argument("--classes", nargs="+", default=["HIP", "MIP", "Shower", "Delta"])
    args = ap.parse_args(argv)
    a, b = read_curve(args.a), read_curve(args.b)
    absent = [c for c in args.classes if c not in a.columns or c not in b.columns]
    if absent:
        sys.exit(f"compare_curves: classes {absent} are not in both curves")
    rows = compare(a, b, args.classes)
    if len(rows) == 1:
        sys.exit(f"compare_curves: {args.a} and {args.b} share no iteration")
    print(f"A = {args.a}, B = {args.b}: validation ARI at the iterations both curves hold")
    print(rows.to_markdown(floatfmt=".3f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
