"""Interactive plotly event display: real space beside embedding space, written as one offline HTML page.

Figure layout: one WebGL scatter3d trace per semantic class and panel (so the legend toggles a
class in both panels and the hover names the class without a string per voxel), plus the detector
box. Colour modes switch in the browser: a dropdown `update`s every voxel trace's `marker.color`
(one byte per voxel, base64-encoded) and the shared `coloraxis`; coordinates and hover fields are
stored once. Numeric arrays go into the page as base64 float32 / small unsigned ints.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from spice.display.colors import MODE_TITLES, ColorMode, color_modes

CAMERAS = {  # preset viewpoints (plotly scene camera eyes; the scene centre is the origin)
    "iso": dict(eye=dict(x=1.45, y=1.45, z=1.1), up=dict(x=0, y=0, z=1)),
    "front": dict(eye=dict(x=0, y=-2.2, z=0), up=dict(x=0, y=0, z=1)),
    "side": dict(eye=dict(x=2.2, y=0, z=0), up=dict(x=0, y=0, z=1)),
    "top": dict(eye=dict(x=0, y=0, z=2.2), up=dict(x=0, y=1, z=0)),
}


def marker_size(n_voxels: int) -> float:
    """Marker diameter (px): 2.5 up to 20k voxels, shrinking log-linearly to 1.5 at 100k and beyond.
    Large events overplot less, and software WebGL (a browser without a GPU) paints them about twice
    as fast (benchmarks/bench_display.py)."""
    t = np.clip(np.log(max(n_voxels, 1) / 20_000) / np.log(5), 0, 1)
    return float(round(2.5 - t, 2))


def _typed(a: np.ndarray) -> dict:
    """plotly.js typed-array spec (base64) for arrays placed where plotly.py does not encode them."""
    a = np.ascontiguousarray(a)
    dtype = {np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2", np.dtype(np.uint32): "u4",
             np.dtype(np.float32): "f4"}[a.dtype]
    return {"dtype": dtype, "bdata": base64.b64encode(a.tobytes()).decode("ascii")}


def _coloraxis(mode: ColorMode) -> dict:
    """Layout `coloraxis` for one colour mode (discrete: one flat band per code)."""
    if mode.discrete:
        n = len(mode.colors)
        scale = [[edge / n, c] for i, c in enumerate(mode.colors) for edge in (i, i + 1)]
        cmin, cmax = -0.5, n - 0.5
    else:
        cols = mode.colors
        scale = [[i / (len(cols) - 1), c] for i, c in enumerate(cols)]
        cmin, cmax = 0, 255
    bar = dict(title=dict(text=mode.title), tickvals=mode.tickvals, ticktext=mode.ticktext, len=0.8)
    return dict(colorscale=scale, cmin=cmin, cmax=cmax, showscale=bool(mode.tickvals), colorbar=bar)


def _box_trace(size: int) -> go.Scatter3d:
    """The 12 edges of the [0, size]^3 detector grid as one line trace (None breaks the line)."""
    corners = [(x, y, z) for z in (0, size) for y in (0, size) for x in (0, size)]
    edges = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    pts = []
    for a, b in edges:
        pts += [corners[a], corners[b], (None, None, None)]
    x, y, z = zip(*pts)
    return go.Scatter3d(x=x, y=y, z=z, mode="lines", line=dict(color="#888888", width=2), hoverinfo="skip",
                        showlegend=False, name="detector", scene="scene")


def _hover(fields: list[tuple[str, str]]) -> str:
    return "<br>".join(f"{label} {value}" for label, value in fields) + "<extra></extra>"


def event_figure(event, outputs: dict | None = None, predicted: np.ndarray | None = None,
                 color_by: str = "true_instance", title: str | None = None) -> go.Figure:
    """Plotly figure of one event: real space (left) and, with network `outputs`, embedding space (right).

    outputs: {"embedding": (N,3), "margin": (N,) or (N,1), "seediness": (N,) or (N,1)} numpy arrays
    (margin and seediness optional: their colour modes and hover fields appear when given);
    predicted: (N,) int predicted instance ids (−1 = none). color_by: one of spice.display.MODES
    available for the inputs; every available mode is in the figure's dropdown.
    """
    n = len(event)
    outputs = None if outputs is None else {k: np.asarray(v) for k, v in outputs.items()}
    if outputs is not None:
        if "embedding" not in outputs:
            raise ValueError(f"outputs need an 'embedding' (N,3) array, got keys {sorted(outputs)}")
        for key, width in (("embedding", 3), ("margin", 1), ("seediness", 1)):
            if key in outputs and (outputs[key].size != n * width or outputs[key].shape[0] != n):
                raise ValueError(f"outputs[{key!r}] must have {n} rows of {width} (event has {n} voxels), "
                                 f"got shape {outputs[key].shape}")
    if predicted is not None:
        predicted = np.asarray(predicted).reshape(-1).astype(np.int64)
        if predicted.shape != (n,):
            raise ValueError(f"predicted has {predicted.size} labels but the event has {n} voxels")
    modes = color_modes(event, outputs, predicted)
    if color_by not in modes:
        raise ValueError(f"color_by={color_by!r} is not available here; choose one of {list(modes)}")
    two = outputs is not None

    # Hover fields: real panel shows x,y,z from the trace; the embedding panel carries them in customdata.
    cols = [("energy", event.energy, "%{customdata[C]:.4g} MeV"),
            ("true instance", event.instance, "%{customdata[C]:d}")]
    if predicted is not None:
        cols.append(("predicted instance", predicted, "%{customdata[C]:d}"))
    for key in ("seediness", "margin"):
        if two and key in outputs:
            cols.append((key, outputs[key].reshape(-1), "%{customdata[C]:.3f}"))
    extra = np.stack([np.asarray(c[1], dtype=np.float32) for c in cols], axis=1)
    fields = [(label, fmt.replace("C", str(k))) for k, (label, _, fmt) in enumerate(cols)]
    xyz = event.coords.astype(np.float32)
    emb = outputs["embedding"].reshape(n, 3).astype(np.float32) if two else None
    k = len(cols)  # the embedding panel's customdata = hover fields + voxel x, y, z
    voxel_fields = [("voxel", f"(%{{customdata[{k}]}}, %{{customdata[{k + 1}]}}, %{{customdata[{k + 2}]}})")]

    fig = go.Figure()
    fig.add_trace(_box_trace(event.spatial_size))
    voxel_traces, masks = [], []
    initial = modes[color_by]
    for c in np.unique(event.semantic).tolist():
        name = event.labels[c]
        mask = event.semantic == c
        real_hover = _hover([("voxel", "(%{x}, %{y}, %{z})"), ("class", name)] + fields)
        common = dict(mode="markers", name=name, legendgroup=name,
                      marker=dict(size=marker_size(n), color=initial.codes[mask], coloraxis="coloraxis",
                                  line=dict(width=0)))
        fig.add_trace(go.Scatter3d(x=xyz[mask, 0], y=xyz[mask, 1], z=xyz[mask, 2], customdata=extra[mask],
                                   hovertemplate=real_hover, scene="scene", **common))
        voxel_traces.append(len(fig.data) - 1)
        masks.append(mask)
        if two:
            emb_hover = _hover([("embedding", "(%{x:.3f}, %{y:.3f}, %{z:.3f})")] + voxel_fields
                               + [("class", name)] + fields)
            fig.add_trace(go.Scatter3d(x=emb[mask, 0], y=emb[mask, 1], z=emb[mask, 2],
                                       customdata=np.concatenate([extra[mask], xyz[mask]], axis=1),
                                       hovertemplate=emb_hover, scene="scene2", showlegend=False, **common))
            voxel_traces.append(len(fig.data) - 1)
            masks.append(mask)

    # One dropdown entry per colour mode: new marker colours for every voxel trace + the colour axis.
    buttons = []
    for mode in modes.values():
        colors = [_typed(mode.codes[m]) for m in masks]
        layout = {f"coloraxis.{k}": v for k, v in _coloraxis(mode).items()}
        buttons.append(dict(label=MODE_TITLES[mode.name], method="update",
                            args=[{"marker.color": colors}, layout, voxel_traces]))
    camera_buttons = [dict(label=k, method="relayout", args=[{"scene.camera": v, "scene2.camera": v}])
                      for k, v in CAMERAS.items()]
    menus = [dict(type="dropdown", buttons=buttons, active=list(modes).index(color_by), x=0.0, y=1.0,
                  xanchor="left", yanchor="top", showactive=True),
             dict(type="buttons", direction="right", buttons=camera_buttons, x=0.2, y=1.0,
                  xanchor="left", yanchor="top", showactive=False)]

    size = event.spatial_size
    axis = dict(range=[0, size], showbackground=False, gridcolor="#e5e5e5")
    right = 0.92
    fig.update_layout(
        title=dict(text=title or _default_title(event), x=0.5, y=0.99),
        coloraxis=_coloraxis(initial), updatemenus=menus, template="plotly_white",
        margin=dict(l=0, r=0, t=60, b=0), legend=dict(x=0.0, y=0.0, xanchor="left", yanchor="bottom",
                                                       itemsizing="constant", title=dict(text="class (click to hide)")),
        scene=dict(domain=dict(x=[0.0, 0.49 if two else right], y=[0, 0.94]), aspectmode="cube",
                   xaxis=dict(title="x [voxel]", **axis), yaxis=dict(title="y [voxel]", **axis),
                   zaxis=dict(title="z [voxel]", **axis), camera=CAMERAS["iso"]),
        annotations=[dict(text="real space", x=0.245 if two else right / 2, y=0.95, xref="paper",
                          yref="paper", showarrow=False, font=dict(size=14))],
    )
    if two:
        lo, hi = (float(emb.min()), float(emb.max())) if n else (-1.0, 1.0)
        pad = 0.05 * (hi - lo) + 1e-6
        eaxis = dict(range=[lo - pad, hi + pad], showbackground=False, gridcolor="#e5e5e5")
        fig.update_layout(
            scene2=dict(domain=dict(x=[0.5, right], y=[0, 0.94]), aspectmode="cube", camera=CAMERAS["iso"],
                        xaxis=dict(title="embedding x", **eaxis), yaxis=dict(title="embedding y", **eaxis),
                        zaxis=dict(title="embedding z", **eaxis)))
        fig.add_annotation(text="embedding space", x=(0.5 + right) / 2, y=0.95, xref="paper", yref="paper",
                           showarrow=False, font=dict(size=14))
    return fig


def _default_title(event) -> str:
    path, entry = event.source
    where = f"{Path(path).name} entry {entry}" if path else "event"
    return f"{where}: {len(event)} voxels, {event.spatial_size}³ grid"


# Camera link: a camera change in one scene is copied to the other. `busy` plus the equality check
# stop the echo (our own relayout fires plotly_relayout again); presets set both scenes at once.
LINK_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var busy = false;
function spiceLinkCameras(ev) {
  if (busy || !ev || !gd._fullLayout.scene2) return;
  var keys = Object.keys(ev), upd = {}, from = null;
  for (var i = 0; i < keys.length; i++) {
    var m = keys[i].match(/^(scene2?)\\.camera(.*)$/);
    if (!m) continue;
    if (from && from !== m[1]) return;  // both scenes changed together (a preset): nothing to copy
    from = m[1];
    upd[(m[1] === 'scene' ? 'scene2' : 'scene') + '.camera' + m[2]] = ev[keys[i]];
  }
  if (!from) return;
  var to = from === 'scene' ? 'scene2' : 'scene';
  if (JSON.stringify(gd.layout[to].camera) === JSON.stringify(gd.layout[from].camera)) return;
  busy = true;
  Plotly.relayout(gd, upd).then(function () { busy = false; }, function () { busy = false; });
}
gd.on('plotly_relayout', spiceLinkCameras);
gd.on('plotly_relayouting', spiceLinkCameras);
window.spiceRendered = performance.now();  // ms after navigation start: first Plotly render done
requestAnimationFrame(function () {
  requestAnimationFrame(function () { window.spicePainted = performance.now(); });  // frame on screen
});
"""


def _atomic_write(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def to_html(fig: go.Figure, title: str | None = None, header_html: str = "") -> str:
    """The standalone page: plotly.js inlined (no CDN: opens offline from file://) + the camera link."""
    page = pio.to_html(fig, include_plotlyjs=True, full_html=True, div_id="spice-event",
                       default_height="94vh", default_width="100%", post_script=LINK_SCRIPT,
                       config={"displaylogo": False, "responsive": True})
    page_title = title or (fig.layout.title.text or "SPICE event display")
    head = f"<title>{html.escape(page_title)}</title><style>body{{margin:0;font-family:sans-serif}}</style>"
    page = page.replace("<head>", "<head>" + head, 1)
    return page.replace("<body>", "<body>" + header_html, 1)


def write_html(fig: go.Figure, path, title: str | None = None, header_html: str = "") -> Path:
    """Write `fig` as one self-contained HTML file (atomic: temporary name, then rename). Returns path."""
    return _atomic_write(Path(path), to_html(fig, title, header_html))
