"""Colours of the event displays, shared by the interactive (plotly) and static (matplotlib) figures.

Every colour mode turns the N voxels of an event into small integer codes plus a colour table:
discrete modes (class, instance, correct/incorrect) index a list of colours; continuous modes
(energy, seediness, margin) are quantised to 0..255 along a matplotlib colormap (256 levels is
finer than the eye can tell, and one byte per voxel keeps the HTML page small).

Instance palette: Okabe & Ito's eight colour-blind-safe colours first. Beyond those no palette is
safe for every viewer, so the extension maximises distinctness instead: a fixed grid of 288 HLS
colours (36 hues, 4 lightness levels, 2 saturations) taken in greedy farthest-point order (each
next colour is the grid colour farthest, in "redmean" RGB distance, from all colours already used,
grey and white included), so the first extra colours differ in lightness as well as hue. Past 296
instances, hue steps by the golden ratio and lightness by the plastic number (a low-discrepancy
walk). Deterministic; grey is reserved for "no instance".
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from matplotlib import colormaps, colors as mcolors

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
NONE_COLOR = "#BBBBBB"  # voxels without an instance (true −1 or not predicted)
CORRECT_COLORS = ("#009E73", "#D55E00", NONE_COLOR)  # correct, incorrect, no true instance
CONTINUOUS_CMAP = "viridis"  # perceptually uniform and colour-blind safe
LEVELS = 256

MODES = ("energy", "semantic", "true_instance", "predicted_instance", "correct", "seediness", "margin")
MODE_TITLES = {"energy": "Energy", "semantic": "Semantic class", "true_instance": "True instance",
               "predicted_instance": "Predicted instance", "correct": "Correct / incorrect",
               "seediness": "Seediness", "margin": "Margin"}


def _redmean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) "redmean" colour distance between RGB rows in [0, 1] (a cheap perceptual metric)."""
    r = 0.5 * (a[:, None, 0] + b[None, :, 0])
    d2 = (a[:, None, :] - b[None, :, :]) ** 2
    return np.sqrt((2 + r) * d2[..., 0] + 4 * d2[..., 1] + (3 - r) * d2[..., 2])


@lru_cache(maxsize=1)
def _extension() -> tuple[str, ...]:
    """288 colours after Okabe-Ito: an HLS grid (36 hues x 4 lightness x 2 saturation) in greedy
    farthest-point order: each next colour is the one farthest from all chosen so far, Okabe-Ito,
    the grey of "no instance" and the white background included."""
    cand = np.array([colorsys.hls_to_rgb(h / 36, light, sat) for h in range(36)
                     for light in (0.3, 0.45, 0.6, 0.75) for sat in (0.55, 0.9)])
    taken = mcolors.to_rgba_array([*OKABE_ITO, NONE_COLOR, "#FFFFFF"])[:, :3]
    dist = _redmean(cand, taken).min(axis=1)
    order = []
    for _ in range(len(cand)):
        k = int(np.argmax(dist))
        order.append(k)
        dist = np.minimum(dist, _redmean(cand, cand[k:k + 1])[:, 0])
    return tuple(mcolors.to_hex(cand[k]) for k in order)


def palette(n: int) -> list[str]:
    """n distinct hex colours: Okabe-Ito, then the greedy farthest-point extension, then (past 296)
    a low-discrepancy walk over hue and lightness."""
    out = list((OKABE_ITO + _extension())[:n])
    seen, k = set(out), 0
    while len(out) < n:  # hue by the golden ratio, lightness by the plastic number: a 2-D low-discrepancy walk
        k += 1
        rgb = colorsys.hls_to_rgb((k * 0.6180339887) % 1.0, 0.25 + 0.5 * ((k * 0.7548776662) % 1.0), 0.75)
        if mcolors.to_hex(rgb) not in seen:
            seen.add(mcolors.to_hex(rgb))
            out.append(mcolors.to_hex(rgb))
    return out


def continuous_colors(stops: int = 16) -> list[str]:
    """The continuous colormap sampled at `stops` evenly spaced points (hex), for plotly colorscales."""
    cmap = colormaps[CONTINUOUS_CMAP]
    return [mcolors.to_hex(cmap(t)) for t in np.linspace(0.0, 1.0, stops)]


@dataclass
class ColorMode:
    """One colouring of an event's voxels.

    codes (N,) unsigned ints; discrete: index into `colors`; continuous: level 0..255 along the
    colormap. tickvals/ticktext label the colour bar in code units (empty: no colour bar).
    """

    name: str
    codes: np.ndarray
    discrete: bool
    colors: list[str]
    tickvals: list[float]
    ticktext: list[str]
    unit: str = ""

    @property
    def title(self) -> str:
        return MODE_TITLES[self.name] + (f" [{self.unit}]" if self.unit else "")

    def rgba(self) -> np.ndarray:
        """(N,4) float RGBA of every voxel (what the static figure draws)."""
        if self.discrete:
            table = mcolors.to_rgba_array(self.colors)
        else:
            table = colormaps[CONTINUOUS_CMAP](np.linspace(0.0, 1.0, LEVELS))
        return table[self.codes.astype(np.int64)]


def _smallest_uint(n: int) -> type:
    return np.uint8 if n <= 256 else (np.uint16 if n <= 65536 else np.uint32)


def _quantise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = (LEVELS - 1) / (hi - lo) if hi > lo else 0.0
    return np.clip(np.rint((values - lo) * scale), 0, LEVELS - 1).astype(np.uint8)


def _level(value: float, lo: float, hi: float) -> float:
    return float((value - lo) * (LEVELS - 1) / (hi - lo)) if hi > lo else 0.0


def _continuous(name: str, values: np.ndarray, lo: float, hi: float, ticks: np.ndarray, unit: str = "",
                fmt=lambda v: f"{v:g}") -> ColorMode:
    ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    return ColorMode(name, _quantise(values, lo, hi), False, continuous_colors(),
                     [_level(t, lo, hi) for t in ticks], [fmt(t) for t in ticks], unit)


def energy_mode(energy: np.ndarray) -> ColorMode:
    """log10 energy, colour bar labelled in MeV at 1-2-5 steps."""
    log_e = np.log10(np.clip(energy.astype(np.float64), 1e-4, None))
    lo, hi = (float(log_e.min()), float(log_e.max())) if log_e.size else (-2.0, 1.0)
    decades = np.arange(np.floor(lo), np.ceil(hi) + 1)
    ticks = np.log10(np.concatenate([10.0 ** decades * m for m in (1, 2, 5)]))
    ticks = np.sort(ticks)
    if np.count_nonzero((ticks >= lo) & (ticks <= hi)) > 6:  # wide range: decades only
        ticks = decades
    return _continuous("energy", log_e, lo, hi, ticks, "MeV", fmt=lambda t: f"{10 ** t:.3g}")


def match_to_true(true: np.ndarray, pred: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """(N,) int64: the true instance each voxel's predicted instance is matched to, −1 if unmatched.

    Matching is per semantic class (as the metrics score it): Hungarian assignment maximising the
    voxel overlap between true instances (≥ 0) and predicted instances (≥ 0); pairs without overlap
    are not matches. A predicted instance that spans classes is matched separately in each class.
    """
    from scipy.optimize import linear_sum_assignment

    from spice.metrics import contingency

    matched = np.full(true.shape, -1, dtype=np.int64)
    for c in np.unique(semantic):
        idx = np.flatnonzero((semantic == c) & (true >= 0) & (pred >= 0))
        if idx.size == 0:
            continue
        t = contingency(true[idx], pred[idx])
        overlap = np.zeros((t.a.size, t.b.size), dtype=np.int64)
        overlap[t.rows, t.cols] = t.counts
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        keep = overlap[rows, cols] > 0
        true_ids, pred_ids = np.unique(true[idx]), np.unique(pred[idx])
        target = np.full(pred_ids.size, -1, dtype=np.int64)  # pred_ids[j] is matched to target[j]
        target[cols[keep]] = true_ids[rows[keep]]
        cls = np.flatnonzero(semantic == c)
        pos = np.minimum(np.searchsorted(pred_ids, pred[cls]), pred_ids.size - 1)
        matched[cls] = np.where(pred_ids[pos] == pred[cls], target[pos], -1)
    return matched


def instance_modes(true: np.ndarray, pred: np.ndarray | None, semantic: np.ndarray) -> list[ColorMode]:
    """True instance, and with predictions predicted instance (matched ones share the true colour) and
    correct/incorrect voxels (its predicted instance was matched to its own true instance)."""
    true_ids = np.unique(true[true >= 0])
    n_true = true_ids.size
    true_code = np.full(true.shape, -1, dtype=np.int64)
    true_code[true >= 0] = np.searchsorted(true_ids, true[true >= 0])
    pred_code = None
    n_colors = n_true
    if pred is not None:
        matched = match_to_true(true, pred, semantic)
        pred_code = np.full(pred.shape, -1, dtype=np.int64)
        hit = matched >= 0
        pred_code[hit] = np.searchsorted(true_ids, matched[hit])
        lonely = ~hit & (pred >= 0)  # predicted voxels whose instance found no true partner
        lonely_ids, inverse = np.unique(pred[lonely], return_inverse=True)
        pred_code[lonely] = n_true + inverse.ravel()
        n_colors = n_true + lonely_ids.size
    colors = palette(n_colors) + [NONE_COLOR]  # code n_colors = grey
    dtype = _smallest_uint(len(colors))

    def mode(name, code):
        return ColorMode(name, np.where(code < 0, n_colors, code).astype(dtype), True, colors, [], [])

    modes = [mode("true_instance", true_code)]
    if pred is not None:
        modes.append(mode("predicted_instance", pred_code))
        correct = np.where(true < 0, 2, np.where(matched == true, 0, 1)).astype(np.uint8)
        modes.append(ColorMode("correct", correct, True, list(CORRECT_COLORS), [0, 1, 2],
                               ["correct", "incorrect", "no true instance"]))
    return modes


def color_modes(event, outputs: dict | None = None, predicted: np.ndarray | None = None) -> dict[str, ColorMode]:
    """Every colour mode available for this event, keyed by name, in the order of MODES."""
    out = {"energy": energy_mode(event.energy)}
    labels = list(event.labels)
    out["semantic"] = ColorMode("semantic", event.semantic.astype(np.uint8), True, palette(len(labels)),
                                list(range(len(labels))), labels)
    for m in instance_modes(event.instance, predicted, event.semantic):
        out[m.name] = m
    outputs = outputs or {}
    if "seediness" in outputs:
        seed = np.asarray(outputs["seediness"], dtype=np.float64).reshape(-1)
        out["seediness"] = _continuous("seediness", seed, 0.0, 1.0, np.linspace(0, 1, 5))
    if "margin" in outputs:
        margin = np.asarray(outputs["margin"], dtype=np.float64).reshape(-1)
        hi = float(margin.max()) if margin.size else 1.0
        out["margin"] = _continuous("margin", margin, 0.0, hi, _nice_ticks(hi), fmt=lambda v: f"{v:.3g}")
    return {k: out[k] for k in MODES if k in out}


def _nice_ticks(hi: float) -> np.ndarray:
    """About five round tick values from 0 to hi."""
    if hi <= 0:
        return np.array([0.0])
    step = 10 ** np.floor(np.log10(hi / 4))
    for m in (1, 2, 5, 10):
        if hi / (m * step) <= 5:
            break
    return np.arange(0, hi + 1e-12, m * step)
