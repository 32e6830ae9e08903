"""A folder of event pages with an index: a summary table (per-class ARI / purity / efficiency) that
links to one interactive page per event."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from spice.display.interactive import _atomic_write, event_figure, write_html

METRIC_COLUMNS = ("ari", "purity", "efficiency")


def _scores(events, predicted) -> pd.DataFrame | None:
    """Per-(event, class) scores from spice.metrics.score_event, or None when it is unavailable."""
    try:
        from spice.metrics import score_event
    except ImportError:
        return None
    rows = []
    for i, (event, pred) in enumerate(zip(events, predicted)):
        if pred is None:
            continue
        for row in score_event(event.instance, np.asarray(pred), event.semantic, labels=tuple(event.labels)):
            rows.append({"event": i, **row})
    return pd.DataFrame(rows)


def _page_name(i: int) -> str:
    return f"event_{i:04d}.html"


def write_gallery(events, outputs=None, path=".", predicted=None, metrics: pd.DataFrame | None = None,
                  titles=None, color_by: str | None = None) -> Path:
    """Write `path/index.html` plus `path/event_XXXX.html` per event; returns the index path.

    outputs / predicted: lists aligned with `events` (entries may be None) or None. metrics: a frame
    with an `event` column (position in `events`) and per-class rows (class_name, ari, purity,
    efficiency, ...); when absent and predictions are given, spice.metrics.score_event computes it.
    titles: optional caption per event (e.g. the failure mode it shows).
    """
    events = list(events)
    folder = Path(path)
    n = len(events)
    outputs = list(outputs) if outputs is not None else [None] * n
    predicted = list(predicted) if predicted is not None else [None] * n
    titles = list(titles) if titles is not None else [None] * n
    if not (len(outputs) == len(predicted) == len(titles) == n):
        raise ValueError(f"{n} events but {len(outputs)} outputs, {len(predicted)} predictions, "
                         f"{len(titles)} titles")
    if metrics is None and any(p is not None for p in predicted):
        metrics = _scores(events, predicted)

    back = '<p style="margin:6px 12px"><a href="index.html">&larr; all events</a></p>'
    rows = []
    for i, (event, out, pred, caption) in enumerate(zip(events, outputs, predicted, titles)):
        mode = color_by or ("predicted_instance" if pred is not None else "true_instance")
        name = caption or _event_name(event, i)
        fig = event_figure(event, out, pred, color_by=mode, title=name)
        write_html(fig, folder / _page_name(i), title=name, header_html=back)
        rows.append({"event": i, "page": _page_name(i), "title": name, "voxels": len(event),
                     "true instances": int(np.unique(event.instance[event.instance >= 0]).size)})
    summary = pd.DataFrame(rows)
    table = _table_html(summary, metrics)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>SPICE event gallery</title>"
            f"<style>{CSS}</style></head><body><h1>SPICE event gallery</h1>"
            f"<p>{n} events. Click an event to open its interactive display (real space and embedding "
            f"space, rotate one to rotate both; the menu switches colour modes).</p>{table}</body></html>")
    return _atomic_write(folder / "index.html", page)


def _event_name(event, i: int) -> str:
    path, entry = event.source
    return f"{Path(path).name} entry {entry}" if path else f"event {i}"


def _table_html(summary: pd.DataFrame, metrics: pd.DataFrame | None) -> str:
    """One row per (event, class) with metrics, or one per event without; the event cell links its page."""
    frame = summary
    if metrics is not None and len(metrics):
        keep = [c for c in ("event", "class_name", *METRIC_COLUMNS, "n_true", "n_pred") if c in metrics]
        frame = summary.merge(metrics[keep], on="event", how="left")
    names = {"class_name": "class", "ari": "ARI", "n_true": "true in class", "n_pred": "predicted in class"}
    head = "".join(f"<th>{html.escape(names.get(c, c))}</th>" for c in frame.columns if c != "page")
    body = []
    for rec in frame.to_dict("records"):
        cells = []
        for col, val in rec.items():
            if col == "page":
                continue
            if col == "title":
                cells.append(f"<td><a href='{html.escape(rec['page'])}'>{html.escape(str(val))}</a></td>")
            elif isinstance(val, float):
                cells.append(f"<td>{'' if np.isnan(val) else f'{val:.4f}'}</td>")
            else:
                cells.append(f"<td>{html.escape(str(val))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = ("body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
       "td:nth-child(2){text-align:left}")
