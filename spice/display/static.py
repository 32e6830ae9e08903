"""Static event display for the paper (matplotlib; no browser needed): the same panels and colours
as the interactive page, saved as PNG or PDF."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps, colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from spice.display.colors import CONTINUOUS_CMAP, LEVELS, MODE_TITLES, color_modes


def _box(ax, size: int) -> None:
    """Draw the 12 edges of the [0, size]^3 detector grid."""
    corners = np.array([(x, y, z) for z in (0, size) for y in (0, size) for x in (0, size)], dtype=float)
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:
                ax.plot(*corners[[a, b]].T, color="#888888", lw=0.6)


def _panel(ax, xyz: np.ndarray, rgba: np.ndarray, lo: float, hi: float, title: str, unit: str,
           marker_size: float) -> None:
    ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=rgba, s=marker_size, linewidths=0, depthshade=False)
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(lo, hi)
    ax.set_box_aspect((1, 1, 1))  # equal aspect: the ranges are equal too
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(f"x {unit}", fontsize=8)
    ax.set_ylabel(f"y {unit}", fontsize=8)
    ax.set_zlabel(f"z {unit}", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.view_init(elev=28, azim=45)  # the interactive "iso" preset: eye (1.45, 1.45, 1.1)


def event_figure_static(event, outputs: dict | None = None, predicted: np.ndarray | None = None,
                        color_by: str = "true_instance", path=None, title: str | None = None,
                        marker_size: float = 1.5, dpi: int = 200) -> Figure:
    """Matplotlib figure: real space (left) and, with `outputs`, embedding space (right), coloured as in
    `event_figure`. Saved to `path` (format from the suffix, e.g. .png or .pdf; atomic) when given."""
    predicted = None if predicted is None else np.asarray(predicted).reshape(-1).astype(np.int64)
    modes = color_modes(event, outputs, predicted)
    if color_by not in modes:
        raise ValueError(f"color_by={color_by!r} is not available here; choose one of {list(modes)}")
    mode = modes[color_by]
    rgba = mode.rgba()
    two = outputs is not None
    fig = Figure(figsize=(12.5 if two else 7, 6), layout="constrained")
    ax = fig.add_subplot(1, 2 if two else 1, 1, projection="3d")
    _panel(ax, event.coords, rgba, 0, event.spatial_size, "real space", "[voxel]", marker_size)
    _box(ax, event.spatial_size)
    axes = [ax]
    if two:
        emb = np.asarray(outputs["embedding"], dtype=np.float64).reshape(-1, 3)
        lo, hi = (emb.min(), emb.max()) if emb.size else (-1.0, 1.0)
        pad = 0.05 * (hi - lo) + 1e-6
        ax2 = fig.add_subplot(1, 2, 2, projection="3d")
        _panel(ax2, emb, rgba, lo - pad, hi + pad, "embedding space", "", marker_size)
        axes.append(ax2)
    if mode.tickvals:  # the same colour bar as the page: ticks in code units, labelled in physical units
        if mode.discrete:
            cmap = mcolors.ListedColormap(mode.colors)
            norm = mcolors.BoundaryNorm(np.arange(len(mode.colors) + 1) - 0.5, cmap.N)
        else:
            cmap, norm = colormaps[CONTINUOUS_CMAP], mcolors.Normalize(0, LEVELS - 1)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes, shrink=0.6, pad=0.02)
        bar.set_ticks(mode.tickvals, labels=mode.ticktext)
        bar.set_label(mode.title)
    fig.suptitle(title or f"{len(event)} voxels, coloured by {MODE_TITLES[mode.name].lower()}", fontsize=12)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")  # keep the suffix: it sets the format
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    return fig
