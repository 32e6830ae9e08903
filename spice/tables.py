"""Write a table as CSV + Markdown + LaTeX (atomically), with a provenance sidecar JSON.

`save_table(df, "figures/table3_metrics", provenance=...)` writes table3_metrics.{csv,md,tex,json}.
`save_figure(fig, "figures/fig05_metrics", provenance=...)` writes fig05_metrics.{png,pdf,json}.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from spice.provenance import write_json


def _atomic_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def to_markdown(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """GitHub-flavoured Markdown of `df` (index dropped)."""
    return df.to_markdown(index=False, floatfmt=floatfmt) + "\n"


def to_latex(df: pd.DataFrame, precision: int = 4, caption: str | None = None) -> str:
    """A LaTeX table of `df` (index dropped; booktabs rules); underscores etc. escaped."""
    styled = df.style.hide(axis="index").format(precision=precision, escape="latex").format_index(escape="latex", axis=1)
    return styled.to_latex(hrules=True, caption=caption)


def save_table(df: pd.DataFrame, stem, provenance: dict | None = None, caption: str | None = None) -> list[Path]:
    """Write `df` to `<stem>.csv`, `.md`, `.tex` (+ `.json` provenance); returns the written paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [
        _atomic_text(stem.with_suffix(".csv"), df.to_csv(index=False)),
        _atomic_text(stem.with_suffix(".md"), (f"{caption}\n\n" if caption else "") + to_markdown(df)),
        _atomic_text(stem.with_suffix(".tex"), to_latex(df, caption=caption)),
    ]
    if provenance is not None:
        paths.append(write_json(stem.with_suffix(".json"), {**provenance, "outputs": [p.name for p in paths]}))
    return paths


def save_figure(fig, stem, provenance: dict | None = None, dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure to `<stem>.png` and `.pdf` atomically (+ `.json` provenance)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        final = stem.with_suffix("." + ext)
        tmp = final.with_name(final.stem + ".tmp." + ext)  # keep the extension so matplotlib picks the format
        # no creation date in the PDF: the same run gives byte-identical files (provenance is in the .json)
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else None)
        os.replace(tmp, final)
        paths.append(final)
    if provenance is not None:
        paths.append(write_json(stem.with_suffix(".json"), {**provenance, "outputs": [p.name for p in paths]}))
    return paths


# ----------------------------------------------------------------------------- the paper's tables
# SPEC §7 / §4: the values the paper reports, keyed by PILArNet five-type class name.
PAPER_TABLE_II = {"HIP": (0.65, 0.29), "MIP": (0.5, 0.087), "Shower": (0.25, 0.036), "Delta": (0.85, 0.27),
                  "Michel": (0.0, 0.087)}
PAPER_TABLE_III = {"HIP": (0.9824, 0.9843, 0.9743), "MIP": (0.9783, 0.9809, 0.9612),
                   "Shower": (0.9317, 0.9275, 0.8408), "Delta": (0.9832, 0.9873, 0.9567),
                   "Michel": (0.9906, 0.9941, 0.9746)}
PAPER_DATASET = "PILArNet 512px test set, 19,900 events"


def metrics_table(frame: pd.DataFrame, dataset: str, paper: bool = True) -> pd.DataFrame:
    """Table III: mean purity / efficiency / ARI / SBD per class from the per-event frame, with the
    paper's values alongside (NaN for classes the paper has no number for) and the datasets named."""
    g = frame.groupby(["class", "class_name"], sort=True)
    out = g[["purity", "efficiency", "ari", "sbd"]].mean().reset_index()
    out.insert(2, "events", g.size().to_numpy())
    out.insert(0, "dataset", dataset)
    if paper:
        for k, name in enumerate(("purity", "efficiency", "ari")):
            out[f"paper_{name}"] = [PAPER_TABLE_III.get(n, (np.nan,) * 3)[k] for n in out["class_name"]]
        out["paper_dataset"] = PAPER_DATASET
    return out.drop(columns="class")


def complete_thresholds(thresholds: dict, labels, default=(0.5, 0.1)) -> tuple[dict, list[int]]:
    """Thresholds for every class of `labels`: the tuned ones, else the paper's Table II value for that
    class name, else `default`. Returns ({class: (s0, p0)}, classes that were not tuned)."""
    out, filled = dict(thresholds), []
    for c, name in enumerate(labels):
        if c not in out:
            out[c] = PAPER_TABLE_II.get(name, default)
            filled.append(c)
    return out, filled


def thresholds_table(thresholds: dict, labels, untuned=()) -> pd.DataFrame:
    """Table II: (s0, p0) per class next to the paper's. `thresholds` maps class index -> (s0, p0);
    classes in `untuned` are marked as defaults (no validation event had that class)."""
    rows = []
    for c, (s0, p0) in sorted(thresholds.items()):
        name = labels[int(c)]
        ps0, pp0 = PAPER_TABLE_II.get(name, (np.nan, np.nan))
        rows.append({"class_name": name, "s0": float(s0), "p0": float(p0), "paper_s0": ps0, "paper_p0": pp0,
                     "source": "default (not in validation set)" if c in untuned else "tuned"})
    return pd.DataFrame(rows)


def fraction_above(frame: pd.DataFrame, metric: str = "ari", threshold: float = 0.92) -> pd.DataFrame:
    """Fraction of (event, class) entries, and of the true particles they hold, with `metric` > threshold;
    per class and over all classes (the paper: 90% of particles with ARI > 0.92)."""
    def row(sub, name):
        above = sub[metric] > threshold
        return {"class_name": name, "entries": len(sub), f"fraction_entries_{metric}_gt_{threshold}": above.mean(),
                "particles": int(sub["n_true"].sum()),
                f"fraction_particles_{metric}_gt_{threshold}": sub.loc[above, "n_true"].sum() / max(sub["n_true"].sum(), 1)}
    rows = [row(sub, name) for (_, name), sub in frame.groupby(["class", "class_name"], sort=True)]
    rows.append(row(frame, "all"))
    return pd.DataFrame(rows)


def margin_table(instances: dict[str, pd.DataFrame], labels=None) -> pd.DataFrame:
    """Figure 6 in numbers: per network and class, how far the learned margin varies and whether it
    follows the true extent. `instances` maps a network's name to its `spice.evaluate.instance_table`
    rows. Columns: instances, median true extent (voxels), the mean margin's 5th / 50th / 95th
    percentiles over instances (voxels) and its relative spread (p95 − p5) / p50, and Spearman's rank
    correlation of margin with extent (NaN below 3 instances or when either is constant)."""
    rows = []
    for network, table in instances.items():
        for c, sub in table.groupby("class", sort=True):
            m = sub["mean_margin_voxels"].to_numpy(float)
            p5, p50, p95 = np.percentile(m, [5, 50, 95])
            rank_corr = (sub["extent_voxels"].rank().corr(sub["mean_margin_voxels"].rank())
                         if len(sub) >= 3 and np.ptp(m) > 0 and np.ptp(sub["extent_voxels"]) > 0 else np.nan)
            rows.append({"network": network, "class_name": labels[c] if labels is not None else str(c),
                         "instances": len(sub), "extent_median_voxels": float(sub["extent_voxels"].median()),
                         "margin_p5_voxels": p5, "margin_median_voxels": p50, "margin_p95_voxels": p95,
                         "margin_relative_spread": (p95 - p5) / p50 if p50 > 0 else np.nan,
                         "spearman_margin_extent": rank_corr})
    return pd.DataFrame(rows)


def claims_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each claim of the paper beside this project's value for every evaluated network ({name: per-event
    frame}): Table III purity / efficiency / ARI per class, "90% of particles with ARI > 0.92" and "mean
    purity and efficiency above 96%". verdict: "pass" when the value reaches the paper's, else "short by x"."""
    rows = []

    def add(claim, paper, name, value):
        verdict = "–" if np.isnan(value) else ("pass" if value >= paper else f"short by {paper - value:.3f}")
        rows.append({"claim": claim, "paper": paper, "network": name, "value": value, "verdict": verdict})

    for name, frame in frames.items():
        means = frame.groupby("class_name")[["purity", "efficiency", "ari"]].mean()
        for cls, values in PAPER_TABLE_III.items():
            for k, metric in enumerate(("purity", "efficiency", "ari")):
                value = float(means.loc[cls, metric]) if cls in means.index else np.nan
                add(f"Table III {cls} {metric}", values[k], name, value)
        overall = fraction_above(frame, "ari", 0.92).iloc[-1]  # the "all" row
        add("90% of particles with ARI > 0.92", 0.90, name, float(overall["fraction_particles_ari_gt_0.92"]))
        for metric in ("purity", "efficiency"):
            add(f"mean {metric} above 96% (all classes)", 0.96, name, float(frame[metric].mean()))
    return pd.DataFrame(rows, columns=["claim", "paper", "network", "value", "verdict"])


def recorded_gpu_timing(path) -> pd.DataFrame:
    """Wall time per event on a GPU, read from a `benchmarks/gpu_checks.py` report (JSON) for a build machine
    without one: one row per way of running the network (batch 1, batched), with the torch backend's
    inference time, the clustering time on the network's outputs, what was timed and the file."""
    import json

    report = json.loads(Path(path).read_text())
    torch_row = next(r for r in report["backends"] if r["backend"] == "torch")
    cfg = report["config"]
    what = (f"F{cfg['filters']} D{cfg['depth']} on {cfg['spatial_size']}³ events of "
            f"{cfg['mean_voxels_per_event'] / 1e3:.1f}k voxels")
    device = f"{report['device']} (recorded {report['date'][:10]}: {what})"
    cluster = report.get("clustering", {}).get("network_outputs_s_per_event", np.nan)
    return pd.DataFrame([
        {"device": device, "network_batch": 1, "net_time_s_mean": torch_row["infer_batch1_s_per_event"],
         "cluster_time_s_mean": cluster, "source": str(path)},
        {"device": device, "network_batch": torch_row["infer_batched_size"],
         "net_time_s_mean": torch_row["infer_batched_s_per_event"], "cluster_time_s_mean": cluster,
         "source": str(path)}])

