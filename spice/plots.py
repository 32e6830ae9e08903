"""Matplotlib figures of the paper, each drawn from a DataFrame (or one Event) and returned as a Figure.

Frames follow docs/CONTRACTS.md: the per-event frame of `spice.evaluate.evaluate` (one row per
(event, class): class, class_name, ari, purity, efficiency, sbd, n_true, n_pred, net_time_s,
cluster_time_s, device, method) and `instance_table` (extent_voxels, mean_margin). Save with
`spice.tables.save_figure`. Nothing here computes a metric; it only draws.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: notebooks and tests never need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

METRICS = ("purity", "efficiency", "ari", "sbd")
METRIC_LABELS = {"purity": "Purity", "efficiency": "Efficiency", "ari": "ARI", "sbd": "SBD"}
LOSS_COLUMNS = ("total", "emb", "mask", "smoothing", "inter", "seed")


def _classes(frame: pd.DataFrame, labels=None) -> list[tuple[int, str]]:
    """(class index, class name) pairs present in `frame`, by class index; names from the
    `class_name` column, else from `labels` (a sequence indexed by class), else the index."""
    if "class_name" in frame.columns:
        pairs = frame[["class", "class_name"]].drop_duplicates().sort_values("class")
        return [(int(c), str(n)) for c, n in pairs.itertuples(index=False)]
    return [(int(c), str(labels[int(c)]) if labels is not None else str(c)) for c in sorted(frame["class"].unique())]


def _instance_colors(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N,4) RGBA: a random distinct colour per label value (labels < 0 grey), as in the paper's displays."""
    uniq = np.unique(labels)
    rng = np.random.default_rng(seed)
    palette = plt.get_cmap("tab20")(np.arange(20) % 20)
    order = rng.permutation(max(len(uniq), 1))
    lut = {u: palette[order[k] % 20] for k, u in enumerate(uniq)}
    out = np.array([lut[v] for v in labels]) if len(labels) else np.zeros((0, 4))
    if len(labels):
        out[labels < 0] = (0.6, 0.6, 0.6, 0.5)
    return out


def _scatter3d(ax, xyz: np.ndarray, colors, title: str, size: float = 1.5):
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=colors, s=size, linewidths=0, depthshade=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.tick_params(labelsize=6)


# ---------------------------------------------------------------------------------------------- events
def fig_event(event, title: str | None = None) -> plt.Figure:
    """Figure 1: one event as three 3-D scatters: energy (MeV, log colour), semantic class, instance.
    The energy colour bar has a grid column of its own, clear of the panel's z-axis labels."""
    fig = plt.figure(figsize=(15, 5))
    grid = fig.add_gridspec(1, 4, width_ratios=[1, 0.03, 1, 1], wspace=0.3, left=0.02, right=0.97)
    xyz = event.coords.astype(float)
    ax = fig.add_subplot(grid[0], projection="3d")
    log_e = np.log10(np.clip(event.energy.astype(float), 1e-3, None))
    energy = plt.cm.ScalarMappable(plt.Normalize(log_e.min(), log_e.max()), "viridis")
    _scatter3d(ax, xyz, energy.to_rgba(log_e), "Energy deposition")
    cbar = fig.colorbar(energy, cax=fig.add_subplot(grid[1]), label="log10(E / MeV)")
    cbar.ax.set_box_aspect(12)  # a bar of about half the panel's height, centred
    cbar.ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[2], projection="3d")
    cmap = plt.get_cmap("tab10")
    _scatter3d(ax, xyz, cmap(event.semantic % 10), "Semantic labels")
    present = sorted(set(event.semantic.tolist()))
    ax.legend(handles=[plt.Line2D([], [], ls="", marker="o", color=cmap(c % 10), label=event.labels[c])
                       for c in present], fontsize=7, loc="upper left")
    ax = fig.add_subplot(grid[3], projection="3d")
    _scatter3d(ax, xyz, _instance_colors(event.instance), "Instance labels")
    if title:
        fig.suptitle(title)
    return fig


def fig_true_vs_pred(coords: np.ndarray, true: np.ndarray, pred: np.ndarray, embedding: np.ndarray | None = None,
                     title: str | None = None) -> plt.Figure:
    """Figures 4, 9, 11-16: true instances in the image, (optionally) true instances in embedding space,
    predicted instances in the image. coords (N,3) voxels, embedding (N,3) normalised units."""
    panels = 3 if embedding is not None else 2
    fig = plt.figure(figsize=(5 * panels, 5))
    xyz = coords.astype(float)
    _scatter3d(fig.add_subplot(1, panels, 1, projection="3d"), xyz, _instance_colors(true), "True instances")
    if embedding is not None:
        _scatter3d(fig.add_subplot(1, panels, 2, projection="3d"), np.asarray(embedding, float),
                   _instance_colors(true), "Embedding (true instances)")
    _scatter3d(fig.add_subplot(1, panels, panels, projection="3d"), xyz, _instance_colors(pred, seed=1),
               "Predicted instances")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------ architecture
def fig_architecture(filters: int, depth: int, reps: int = 2) -> plt.Figure:
    """Figure 3: the U-shaped network: shared encoder, embedding and seediness decoders, channels per level."""
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.8 * (depth + 1)))
    levels = depth + 1
    box = dict(boxstyle="round,pad=0.3", lw=1)

    def block(x, y, text, color):
        ax.text(x, y, text, ha="center", va="center", fontsize=8, bbox={**box, "fc": color})

    for i in range(levels):
        y = levels - i
        ch = (i + 1) * filters
        block(0, y, f"enc {i}: {reps}x res {ch}ch", "#cfe2f3")
        block(3, y, f"emb dec {i}: {reps}x res {ch}ch", "#d9ead3")
        block(6, y, f"seed dec {i}: {reps}x res {ch}ch", "#fce5cd")
        if i < depth:
            ax.annotate("", xy=(0, y - 0.65), xytext=(0, y - 0.35), arrowprops=dict(arrowstyle="->"))
            ax.text(0.15, y - 0.5, "conv2x2 s2", fontsize=6)
            for x in (3, 6):
                ax.annotate("", xy=(x, y - 0.35), xytext=(x, y - 0.65), arrowprops=dict(arrowstyle="->"))
                ax.text(x + 0.15, y - 0.5, "deconv2x2", fontsize=6)
            ax.plot([1.1, 1.9], [y, y], ls=":", c="k", lw=0.8)
            ax.plot([1.1, 4.9], [y - 0.1, y - 0.1], ls=":", c="grey", lw=0.8)
    block(-2.2, levels, "input: [x̂, ŷ, ẑ, E]", "white")
    block(3, 0.2, "head: tanh(o)+x̂ (3), σ (1)", "#d9ead3")
    block(6, 0.2, "head: seediness (1)", "#fce5cd")
    ax.set_xlim(-3.5, 7.5)
    ax.set_ylim(-0.3, levels + 0.6)
    ax.axis("off")
    ax.set_title(f"SPICE: sparse UResNet, F={filters}, depth={depth}, reps={reps} (dotted: skip concatenations)")
    return fig


def fig_loss_curves(losses: pd.DataFrame) -> plt.Figure:
    """Training losses (log y) vs iteration, the stage boundary marked. Columns: iteration|step, stage?, losses."""
    xcol = next(c for c in ("iteration", "step", "iter") if c in losses.columns)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for col in LOSS_COLUMNS:
        if col in losses.columns and losses[col].notna().any():
            y = losses[col].astype(float)
            ax.plot(losses[xcol], y.where(y > 0), label=col, lw=1)
    if "stage" in losses.columns and losses["stage"].nunique() > 1:
        for x in losses.loc[losses["stage"].ne(losses["stage"].shift()), xcol].iloc[1:]:
            ax.axvline(x, c="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(xcol)
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("Training losses (dashed: stage 1 -> stage 2)")
    return fig


# ----------------------------------------------------------------------------------------- tuning
def fig_threshold_heatmaps(grid: pd.DataFrame, value: str = "score", label: str = "mean SBD",
                           labels=None) -> plt.Figure:
    """Table II companion: the grid-search objective (column `value`) over (s0, p0), one heat map per
    class, the best cell starred. `grid` is `spice.tune.grid_search`'s frame [class, s0, p0, score, n]."""
    classes = _classes(grid, labels)
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3.6), squeeze=False)
    for ax, (c, name) in zip(axes[0], classes):
        table = grid[grid["class"] == c].pivot_table(index="p0", columns="s0", values=value, aggfunc="mean")
        s0, p0 = table.columns.to_numpy(float), table.index.to_numpy(float)
        im = ax.imshow(table.to_numpy(), origin="lower", aspect="auto", cmap="viridis",
                       extent=(s0.min(), s0.max(), p0.min(), p0.max()) if len(s0) > 1 and len(p0) > 1 else None)
        iy, ix = np.unravel_index(np.nanargmax(table.to_numpy()), table.shape)
        if len(s0) > 1 and len(p0) > 1:
            ax.plot(s0[ix], p0[iy], "r*", ms=10)
        ax.set_title(f"{name}: best s0={s0[ix]:.2f}, p0={p0[iy]:.3f}", fontsize=9)
        ax.set_xlabel("s0")
        ax.set_ylabel("p0")
        fig.colorbar(im, ax=ax, label=label)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------- evaluation
def fig_metric_distributions(frame: pd.DataFrame, metrics=("purity", "efficiency", "ari"), bins: int = 25) -> plt.Figure:
    """Figure 5: per-class histograms of each metric over events (rows: metrics, colours: classes), log y."""
    classes = _classes(frame)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    edges = np.linspace(-0.5 if "ari" in metrics else 0.0, 1.0, bins + 1)
    for ax, metric in zip(axes[0], metrics):
        for c, name in classes:
            values = frame.loc[frame["class"] == c, metric].dropna().to_numpy(float)
            ax.hist(values, bins=edges, histtype="step", lw=1.5, label=f"{name} (n={len(values)})")
        ax.set_yscale("log")
        ax.set_xlabel(METRIC_LABELS.get(metric, metric))
        ax.set_ylabel("events")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def count_confusion(frame: pd.DataFrame, max_count: int = 15) -> pd.DataFrame:
    """Row-normalised table P(n_pred | n_true), counts clipped to `max_count` (rows: n_true, cols: n_pred)."""
    t = frame["n_true"].clip(upper=max_count).astype(int)
    p = frame["n_pred"].clip(upper=max_count).astype(int)
    return pd.crosstab(t, p, normalize="index")


def fig_count_confusion(frame: pd.DataFrame, max_count: int = 15) -> plt.Figure:
    """Figure 7: normalised confusion of predicted vs true instance count, one panel per class."""
    classes = _classes(frame)
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3.8), squeeze=False)
    for ax, (c, name) in zip(axes[0], classes):
        conf = count_confusion(frame[frame["class"] == c], max_count)
        n = max(int(conf.index.max()), int(conf.columns.max())) + 1
        full = np.zeros((n, n))
        for i in conf.index:
            for j in conf.columns:
                full[i, j] = conf.loc[i, j]
        im = ax.imshow(full, origin="lower", cmap="Blues", vmin=0, vmax=1)
        ax.plot([0, n - 1], [0, n - 1], c="r", lw=0.5, ls=":")
        ax.set_xlabel("predicted instances")
        ax.set_ylabel("true instances")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def fig_metrics_vs_count(frame: pd.DataFrame, metrics=("purity", "efficiency", "ari"), max_count: int = 15) -> plt.Figure:
    """Figure 8: box plots (IQR boxes, 1.5 IQR whiskers) of each metric vs true instance count, per class."""
    classes = _classes(frame)
    fig, axes = plt.subplots(len(metrics), len(classes), figsize=(3.6 * len(classes), 2.8 * len(metrics)),
                             squeeze=False)
    for col, (c, name) in enumerate(classes):
        sub = frame[frame["class"] == c]
        counts = sorted(sub["n_true"].clip(upper=max_count).astype(int).unique())
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            data = [sub.loc[sub["n_true"].clip(upper=max_count) == k, metric].dropna().to_numpy(float) for k in counts]
            ax.boxplot(data, positions=counts, whis=1.5, widths=0.6, showfliers=False)
            ax.set_ylim(-0.05 if metric != "ari" else -0.55, 1.05)
            if row == len(metrics) - 1:
                ax.set_xlabel("true instances")
            if col == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            if row == 0:
                ax.set_title(name)
    fig.tight_layout()
    return fig


def fig_margin_extent(instances: pd.DataFrame, bins: int = 30, labels=None, margin: str = "mean_margin") -> plt.Figure:
    """Figure 6: learned margin σ (column `margin`) vs true spatial extent (voxels), 2-D histogram per
    class; `instances` is `spice.evaluate.instance_table` rows."""
    classes = _classes(instances, labels)
    fig, axes = plt.subplots(1, len(classes), figsize=(4 * len(classes), 3.6), squeeze=False)
    for ax, (c, name) in zip(axes[0], classes):
        sub = instances[instances["class"] == c]
        h = ax.hist2d(sub["extent_voxels"].to_numpy(float), sub[margin].to_numpy(float), bins=bins,
                      cmap="viridis", cmin=1)
        fig.colorbar(h[3], ax=ax, label="instances")
        ax.set_xlabel("true extent (voxels)")
        ax.set_ylabel(f"{margin.replace('_', ' ')} σ")
        ax.set_title(f"{name} (n={len(sub)})")
    fig.tight_layout()
    return fig


def fig_timing(frame: pd.DataFrame, bins: int = 30, recorded: pd.DataFrame | None = None) -> plt.Figure:
    """Figure 10: per-event wall time of the network and of clustering, one histogram per device (named).

    recorded: means measured elsewhere (`spice.tables.recorded_gpu_timing`), drawn as dashed lines on a log
    axis, named as recorded, and what was timed there said in the title (for a build machine without that
    device)."""
    per_event = frame.groupby(["device", "event"], as_index=False)[["net_time_s", "cluster_time_s"]].first()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8 if recorded is not None else 4), squeeze=False)
    for ax, col, what in zip(axes[0], ("net_time_s", "cluster_time_s"), ("network", "clustering")):
        for device, sub in per_event.groupby("device"):
            t = sub[col].to_numpy(float)
            edges = np.geomspace(max(t.min(), 1e-6) / 1.2, t.max() * 1.2, bins) if recorded is not None else bins
            ax.hist(t, bins=edges, histtype="step", lw=1.5, label=f"{device}: mean {t.mean():.3g} s")
        if recorded is not None:
            for k, row in enumerate(recorded.itertuples()):
                if col == "cluster_time_s" and k:  # one clustering time per recorded device
                    continue
                value = row.net_time_s_mean if col == "net_time_s" else row.cluster_time_s_mean
                name = row.device.split(" (")[0] + " (recorded)"
                batch = f", batch {row.network_batch}" if col == "net_time_s" else ""
                ax.axvline(value, ls="--", color=f"C{k + 3}", label=f"{name}{batch}: {value:.3g} s")
            ax.set_xscale("log")
        ax.set_xlabel(f"{what} wall time per event (s)")
        ax.set_ylabel("events")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    if recorded is not None:
        fig.suptitle("histograms: measured here, the network trained in this run; dashed: " + "; ".join(sorted(set(
            f"{d} ({s})" for d, s in zip(recorded["device"], recorded["source"])))), fontsize=7)
    fig.tight_layout()
    return fig


def fig_method_comparison(frame: pd.DataFrame, metrics=("purity", "efficiency", "ari")) -> plt.Figure:
    """SPICE vs baseline: mean of each metric per class and method (bars, error = standard error)."""
    classes = _classes(frame)
    methods = sorted(frame["method"].unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    x = np.arange(len(classes))
    width = 0.8 / max(len(methods), 1)
    for ax, metric in zip(axes[0], metrics):
        for k, method in enumerate(methods):
            g = frame[frame["method"] == method].groupby("class")[metric]
            mean = np.array([g.mean().get(c, np.nan) for c, _ in classes])
            sem = np.array([g.sem().get(c, np.nan) for c, _ in classes])
            ax.bar(x + (k - (len(methods) - 1) / 2) * width, mean, width, yerr=sem, label=method, capsize=2)
        ax.set_xticks(x, [n for _, n in classes])
        ax.set_ylabel(f"mean {METRIC_LABELS.get(metric, metric)}")
        ax.set_ylim(min(0, ax.get_ylim()[0]), 1.05)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- data and training
def fig_dataset_comparison(real: dict, generated: dict, title: str = "real sample vs generated events") -> plt.Figure:
    """Distributions of `spice.data.summary.statistics` for the real sample and generated events of the
    same grid: voxels per event, instance size per class (log x), energy per voxel, 26-neighbour degree,
    and the 26-connected fragments of each shower instance (log x). Histograms are normalised to unit
    area so samples of different sizes compare."""
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6), constrained_layout=True)
    style = {"real": dict(color="k", histtype="step", lw=1.6), "generated": dict(color="C1", alpha=0.5)}
    for name, stats in (("generated", generated), ("real", real)):
        ev, inst, vox = stats["events"], stats["instances"], stats["voxels"]
        axes[0].hist(ev["voxels"], bins=np.linspace(0, max(ev["voxels"].max(), 1), 15), density=True,
                     label=name, **style[name])
        if len(inst):
            axes[1].hist(np.log10(inst["voxels"]), bins=np.linspace(0, 4.5, 19), density=True, **style[name])
        axes[2].hist(np.log10(vox["energy_mev"].clip(lower=1e-3)), bins=np.linspace(-2.5, 1, 29), density=True,
                     **style[name])
        axes[3].hist(vox["degree"], bins=np.arange(-0.5, 27), density=True, **style[name])
        showers = inst[inst["class_name"].str.lower() == "shower"] if len(inst) else inst
        if len(showers):
            axes[4].hist(np.log10(showers["fragments"]), bins=np.linspace(0, 3, 16), density=True, **style[name])
    for ax, xl in zip(axes, ("voxels per event", "log10 instance size (voxels)", "log10 energy per voxel (MeV)",
                             "occupied 26-neighbours", "log10 fragments per shower")):
        ax.set_xlabel(xl)
        ax.set_yticks([])
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def fig_learning_curve(curves: dict[str, pd.DataFrame]) -> plt.Figure:
    """Validation ARI per class against iteration and against training wall time (minutes), one line
    style per network; `curves` maps a network name to a spice.learning_curve frame."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True, sharey=True)
    styles = ["-o", "--s", ":^", "-.v"]
    for k, (name, curve) in enumerate(curves.items()):
        for j, (c, cname) in enumerate(_classes(curve)):
            sub = curve[curve["class"] == c].sort_values("iteration")
            kw = dict(color=f"C{j}", ms=3, lw=1.2, label=f"{cname} ({name})")
            axes[0].plot(sub["iteration"], sub["ari"], styles[k % 4], **kw)
            axes[1].plot(sub["seconds"] / 60, sub["ari"], styles[k % 4], **kw)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("training wall time (min)")
    axes[0].set_ylabel("validation ARI (best of a coarse threshold grid)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Learning curves")
    return fig
