"""spice.display: colours, instance matching, the plotly figure, the offline page (opened in headless
Chromium as a person would), the static matplotlib figure and the gallery."""
from __future__ import annotations

import base64
import itertools
import json
import re
import sys
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib import colors as mcolors

from spice.data.event import Event
from spice.display import (MODES, color_modes, event_figure, event_figure_static, match_to_true, palette,
                           write_gallery, write_html)
from spice.display.colors import NONE_COLOR, OKABE_ITO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import Browser, chromium_path  # noqa: E402


def make_event(n_instances=12, per_instance=300, size=192, seed=0):
    """Straight tracks of jittered voxels, 4 classes, 20 unlabelled voxels; outputs that cluster each
    instance near its centre; predictions with one relabel, one half split off, one merge."""
    rng = np.random.default_rng(seed)
    coords, inst = [], []
    for k in range(n_instances):
        start, d = rng.uniform(0.2 * size, 0.8 * size, 3), rng.normal(size=3)
        t = rng.uniform(0, 0.3 * size, per_instance)
        p = start + t[:, None] * d / np.linalg.norm(d) + rng.normal(0, 1.0, (per_instance, 3))
        coords.append(np.clip(np.rint(p), 0, size - 1).astype(np.int64))
        inst.append(np.full(per_instance, k))
    c, i = np.concatenate(coords), np.concatenate(inst)
    first = np.sort(np.unique(c, axis=0, return_index=True)[1])  # one voxel per grid cell
    c, i = c[first], i[first]
    s = i % 4
    i[:20] = -1
    energy = rng.lognormal(-1, 1, len(c)).astype(np.float32)
    event = Event(c, energy, s.astype(np.int64), i.astype(np.int64), size)
    centre = {k: c[i == k].mean(0) for k in np.unique(i)}
    emb = np.stack([centre[k] for k in i]) / (size / 2) - 1 + rng.normal(0, 0.02, (len(c), 3))
    outputs = {"embedding": emb.astype(np.float32),
               "margin": rng.uniform(0.05, 0.3, (len(c), 1)).astype(np.float32),
               "seediness": rng.uniform(0, 1, len(c)).astype(np.float32)}
    pred = i.copy()
    pred[i == 1] = 50                                            # relabelled: still matches true 1
    pred[(i == 2) & (np.arange(len(c)) % 10 == 0)] = 60          # a tenth of true 2 split off
    pred[i == 6] = 10                                            # true 6 merged into true 10 (both class 2)
    return event, outputs, pred


@pytest.fixture(scope="module")
def sample():
    return make_event()


def _decode(spec) -> np.ndarray:
    """A plotly typed-array spec (or plain array) back to numpy."""
    if isinstance(spec, dict):
        dt = {"u1": np.uint8, "u2": np.uint16, "u4": np.uint32, "f4": np.float32, "f8": np.float64,
              "i1": np.int8, "i2": np.int16, "i4": np.int32}[spec["dtype"]]
        a = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=dt)
        shape = spec.get("shape")  # plotly.py writes it as "rows, cols"
        return a.reshape([int(v) for v in str(shape).split(",")]) if shape else a
    return np.asarray(spec)


# ------------------------------------------------------------------------------------------ palette
def test_palette_okabe_ito_first_distinct_deterministic():
    p = palette(600)
    assert p[:8] == list(OKABE_ITO)
    assert len(set(p)) == 600 and NONE_COLOR not in p and "#ffffff" not in [c.lower() for c in p]
    assert palette(600) == p and palette(60) == p[:60]  # prefixes are stable: colours never reshuffle
    rgb = mcolors.to_rgba_array(p[:60])[:, :3]
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 9 * np.eye(60)
    assert dist.min() > 0.15  # well spread beyond 50 instances (RGB cube diagonal is 1.73)


# ------------------------------------------------------------------------------------------ matching
def _best_total_overlap(true, pred) -> int:
    """Largest total overlap of any one-to-one true/predicted pairing, by trying them all (small inputs)."""
    t_ids, p_ids = np.unique(true), np.unique(pred)
    overlap = np.array([[np.sum((true == t) & (pred == p)) for p in p_ids] for t in t_ids])
    k = min(len(t_ids), len(p_ids))
    return max(sum(overlap[r, c] for r, c in zip(rows, cols))
               for rows in itertools.permutations(range(len(t_ids)), k)
               for cols in itertools.combinations(range(len(p_ids)), k))


def test_match_to_true_equals_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 60
        true = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.7, true * 10, rng.integers(0, 5, n))
        sem = np.zeros(n, dtype=np.int64)
        matched = match_to_true(true, pred, sem)
        for p in np.unique(pred):  # one partner per predicted instance, shared by all its voxels
            assert len(set(matched[pred == p].tolist())) == 1
        got = {int(p): int(m) for p, m in zip(pred, matched) if m >= 0}
        assert len(set(got.values())) == len(got)  # one-to-one
        # the optimum may not be unique: compare its total overlap with the brute-force optimum
        assert sum(np.sum((true == t) & (pred == p)) for p, t in got.items()) == _best_total_overlap(true, pred)


def test_match_is_per_class_and_ignores_unlabelled():
    true = np.array([0, 0, 0, 1, 1, -1, -1])
    pred = np.array([5, 5, 5, 5, 5, 5, -1])
    sem = np.array([0, 0, 0, 1, 1, 0, 1])
    m = match_to_true(true, pred, sem)
    # pred 5 is matched to true 0 in class 0 and to true 1 in class 1; true −1 voxels carry the class match.
    assert m.tolist() == [0, 0, 0, 1, 1, 0, -1]


# ------------------------------------------------------------------------------------------ colours
def test_color_modes(sample):
    event, outputs, pred = sample
    modes = color_modes(event, outputs, pred)
    assert list(modes) == list(MODES)
    assert list(color_modes(event)) == ["energy", "semantic", "true_instance"]
    assert np.array_equal(modes["semantic"].codes, event.semantic)
    assert modes["semantic"].ticktext == list(event.labels)
    # energy: log-monotone levels spanning 0..255
    e = modes["energy"].codes[np.argsort(event.energy, kind="stable")]
    assert np.all(np.diff(e.astype(int)) >= 0) and e[0] == 0 and e[-1] == 255
    assert np.array_equal(modes["seediness"].codes, np.rint(outputs["seediness"].astype(np.float64) * 255).astype(np.uint8))
    # true instance: same colour <=> same instance; unlabelled voxels grey
    t = modes["true_instance"]
    lab = event.instance >= 0
    pairs = set(zip(event.instance[lab].tolist(), t.codes[lab].tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert {t.colors[c] for c in t.codes[~lab]} == {NONE_COLOR}
    # predicted: relabelled instance 1 keeps its true colour; the split-off third gets an unused colour
    p = modes["predicted_instance"]
    assert np.array_equal(p.codes[event.instance == 1], t.codes[event.instance == 1])
    split = pred == 60
    assert set(p.codes[split].tolist()).isdisjoint(set(t.codes[lab].tolist()))
    # correct: exactly the voxels whose predicted id is matched to their own true id
    c = modes["correct"].codes
    assert np.all(c[~lab] == 2)
    assert np.all(c[split] == 1) and np.all(c[event.instance == 1] == 0)
    assert np.all(c[(event.instance == 2) & ~split] == 0)
    n6, n10 = np.sum(event.instance == 6), np.sum(event.instance == 10)  # merged into pred 10
    assert n6 != n10
    winner, loser = (6, 10) if n6 > n10 else (10, 6)
    assert np.all(c[event.instance == winner] == 0) and np.all(c[event.instance == loser] == 1)
    assert np.all(p.codes[event.instance == loser] == t.codes[event.instance == winner][0])


# ------------------------------------------------------------------------------------------ figure
def test_event_figure_structure(sample):
    event, outputs, pred = sample
    fig = event_figure(event, outputs, pred, color_by="predicted_instance").to_dict()
    lay = fig["layout"]
    voxel = [t for t in fig["data"] if t.get("mode") == "markers"]
    classes = np.unique(event.semantic)
    assert len(voxel) == 2 * len(classes)
    assert all(t["type"] == "scatter3d" for t in fig["data"])  # WebGL
    assert {t["scene"] for t in voxel} == {"scene", "scene2"}
    assert sum(len(_decode(t["x"])) for t in voxel if t["scene"] == "scene") == len(event)
    # equal aspect over the detector grid, with its 12-edge outline
    for ax in ("xaxis", "yaxis", "zaxis"):
        assert lay["scene"][ax]["range"] == [0, event.spatial_size]
    assert lay["scene"]["aspectmode"] == lay["scene2"]["aspectmode"] == "cube"
    box = [t for t in fig["data"] if t.get("mode") == "lines"][0]
    assert sum(v is None for v in box["x"]) == 12
    # hover names every field
    hover = voxel[0]["hovertemplate"]
    for field in ("energy", "MeV", "class", "true instance", "predicted instance", "seediness", "margin", "voxel"):
        assert field in hover
    assert event.labels[classes[0]] in hover
    # the dropdown holds every mode; decoding its colours gives back independent facts per voxel
    menu = lay["updatemenus"][0]
    assert [b["label"] for b in menu["buttons"]] == ["Energy", "Semantic class", "True instance",
                                                      "Predicted instance", "Correct / incorrect",
                                                      "Seediness", "Margin"]
    assert menu["active"] == 3
    semantic_button = menu["buttons"][1]
    idx = semantic_button["args"][2]
    for spec, i in zip(semantic_button["args"][0]["marker.color"], idx):
        cls = event.labels.index(fig["data"][i]["name"])
        assert np.all(_decode(spec) == cls)
    energy_button = menu["buttons"][0]
    real = [k for k, i in enumerate(idx) if fig["data"][i]["scene"] == "scene"]
    levels = np.concatenate([_decode(energy_button["args"][0]["marker.color"][k]) for k in real])
    energies = np.concatenate([_decode(fig["data"][idx[k]]["customdata"])[:, 0] for k in real])
    order = np.argsort(energies, kind="stable")
    assert np.all(np.diff(levels[order].astype(int)) >= 0)
    assert [b["label"] for b in lay["updatemenus"][1]["buttons"]] == ["iso", "front", "side", "top"]


def test_event_figure_without_outputs_and_bad_input(sample):
    event, outputs, pred = sample
    fig = event_figure(event)
    assert "scene2" not in fig.to_dict()["layout"]
    assert [b["label"] for b in fig.layout.updatemenus[0].buttons] == ["Energy", "Semantic class", "True instance"]
    with pytest.raises(ValueError, match="color_by='seediness' is not available"):
        event_figure(event, color_by="seediness")
    with pytest.raises(ValueError, match="embedding"):
        event_figure(event, {"embedding": outputs["embedding"][:-1]})
    with pytest.raises(ValueError, match="predicted has"):
        event_figure(event, predicted=pred[:5])
    # outputs without seediness/margin (the notebooks pass embedding + margin): those modes just drop out
    fig = event_figure(event, {"embedding": outputs["embedding"], "margin": outputs["margin"]})
    assert "Seediness" not in [b.label for b in fig.layout.updatemenus[0].buttons]


def test_write_html_self_contained_and_atomic(sample, tmp_path):
    event, outputs, pred = sample
    path = write_html(event_figure(event, outputs, pred), tmp_path / "e.html")
    text = path.read_text()
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind
    assert "Plotly.newPlot" in text and len(text) > 3_000_000  # plotly.js inlined
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: works offline
    assert "plotly_relayout" in text and "scene2.camera" in text


# ------------------------------------------------------------------------------------------ static
def test_static_figure_same_colours(sample, tmp_path):
    event, outputs, pred = sample
    fig = event_figure_static(event, outputs, pred, color_by="predicted_instance", path=tmp_path / "e.png")
    axes3d = [a for a in fig.axes if a.name == "3d"]
    assert len(axes3d) == 2
    drawn = axes3d[0].collections[0].get_facecolors()
    modes = color_modes(event, outputs, pred)
    m = modes["predicted_instance"]
    expected = mcolors.to_rgba_array([m.colors[c] for c in m.codes])  # the plotly page's colour table
    # mplot3d re-orders points by depth when drawing: compare the colours as multisets
    got = np.unique(np.round(drawn, 6), axis=0, return_counts=True)
    want = np.unique(np.round(expected, 6), axis=0, return_counts=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    img = mpimg.imread(tmp_path / "e.png")
    assert img.shape[0] > 500 and (img[..., :3].std(axis=2) > 0.1).mean() > 0.001  # coloured voxels drew
    event_figure_static(event, color_by="energy", path=tmp_path / "e.pdf")
    assert (tmp_path / "e.pdf").read_bytes()[:4] == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.pdf", "e.png"]


# ------------------------------------------------------------------------------------------ gallery
def test_gallery(sample, tmp_path):
    from sklearn.metrics import adjusted_rand_score

    event, outputs, pred = sample
    other = make_event(5, 200, seed=1)
    index = write_gallery([event, other[0]], [outputs, None], tmp_path / "g", predicted=[pred, other[2]],
                          titles=["with <outputs>", None])
    text = index.read_text()
    pages = re.findall(r"href='([^']+)'", text)
    assert pages == ["event_0000.html"] * 4 + ["event_0001.html"] * 4  # one row per (event, class)
    assert all((tmp_path / "g" / p).is_file() for p in set(pages))
    assert "with &lt;outputs&gt;" in text
    # the ARI shown for event 0, class 2 equals an independent computation (instances >= 10 voxels)
    keep = (event.semantic == 2) & (event.instance >= 0)
    sizes = {k: np.sum(event.instance[keep] == k) for k in np.unique(event.instance[keep])}
    keep &= np.array([sizes.get(k, 0) >= 10 for k in event.instance])
    ari = adjusted_rand_score(event.instance[keep], pred[keep])
    row = re.search(r"<tr><td>0</td><td><a[^>]*>[^<]*</a></td><td>\d+</td><td>\d+</td><td>Shower</td>"
                    r"<td>([0-9.]+)</td>", text)
    assert row and abs(float(row.group(1)) - ari) < 1e-4
    page = (tmp_path / "g" / "event_0000.html").read_text()
    assert 'href="index.html"' in page and "scene2" in page


# ------------------------------------------------------------------------------------------ browser
needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="chromium not installed (Debian package `chromium`)")


def _coloured_fraction(img: np.ndarray) -> float:
    """Fraction of clearly coloured pixels (voxels; axes, grid and text are grey)."""
    rgb = img[..., :3]
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 0.25).mean())


@pytest.fixture(scope="module")
def page(sample, tmp_path_factory):
    event, outputs, pred = sample
    path = write_html(event_figure(event, outputs, pred), tmp_path_factory.mktemp("page") / "event.html")
    with Browser() as browser:
        browser.open(path)
        yield browser, path, sample


CAMS = ("(() => { const g = document.getElementById('spice-event');"
        " return [g.layout.scene.camera.eye, g.layout.scene2.camera.eye]; })()")


@needs_chromium
@pytest.mark.browser
def test_page_draws_both_panels_offline_without_errors(page, tmp_path):
    browser, path, _ = page
    shot = browser.screenshot(tmp_path / "page.png")
    img = mpimg.imread(shot)
    body = img[120:]  # below the title and menus
    left, right = body[:, : img.shape[1] // 2], body[:, img.shape[1] // 2:]
    assert _coloured_fraction(left) > 0.002, "real-space panel drew no voxels"
    assert _coloured_fraction(right) > 0.002, "embedding panel drew no voxels"
    assert browser.errors == []
    assert all(u.startswith(("file:", "data:", "blob:")) for u in browser.requests), browser.requests


@needs_chromium
@pytest.mark.browser
def test_dragging_one_panel_rotates_the_other(page):
    browser, _, _ = page
    w, h = browser.width, browser.height
    before = browser.evaluate(CAMS)
    browser.drag(0.25 * w, 0.6 * h, 0.35 * w, 0.5 * h)   # rotate the real-space panel with the mouse
    time.sleep(0.3)
    real, emb = browser.evaluate(CAMS)
    assert real != before[0] and emb == real
    browser.drag(0.75 * w, 0.6 * h, 0.7 * w, 0.7 * h)    # and the embedding panel
    time.sleep(0.3)
    real2, emb2 = browser.evaluate(CAMS)
    assert emb2 != emb and real2 == emb2
    assert browser.errors == []


@needs_chromium
@pytest.mark.browser
def test_menus_switch_camera_and_colour_mode(page, tmp_path):
    browser, _, (event, outputs, pred) = page
    browser.click_text(".updatemenu-button", "top")
    time.sleep(0.3)
    real, emb = browser.evaluate(CAMS)
    assert real == emb and abs(real["z"] - 2.2) < 1e-9 and abs(real["x"]) < 1e-9
    browser.click_text(".updatemenu-header", "True instance")    # open the dropdown ...
    time.sleep(0.3)
    browser.click_text(".updatemenu-dropdown-button", "Energy")    # ... and pick a mode
    time.sleep(0.5)
    state = json.loads(browser.evaluate("""(() => { const g = document.getElementById('spice-event');
        const v = g._fullData.filter(t => t.mode === 'markers');
        return JSON.stringify({cmax: g._fullLayout.coloraxis.cmax, bar: g._fullLayout.coloraxis.showscale,
            names: v.map(t => t.name + '|' + t.scene), colors: v.map(t => Array.from(t.marker.color)),
            energy: v.map(t => Array.from(t.customdata, r => r[0]))}); })()"""))
    assert state["cmax"] == 255 and state["bar"] is True
    levels = np.concatenate(state["colors"])
    energy = np.concatenate(state["energy"])
    assert len(levels) == 2 * len(event)
    order = np.argsort(energy, kind="stable")
    assert np.all(np.diff(levels[order]) >= 0)  # colour levels follow energy in the browser too
    shot = browser.screenshot(tmp_path / "energy.png")
    assert _coloured_fraction(mpimg.imread(shot)[120:]) > 0.002
    assert browser.errors == []


def make_large_event(n_voxels=100_000, size=768, seed=0):
    """Exactly n_voxels voxels on 200 tracks, with outputs and predictions (for the large-page check)."""
    event, outputs, pred = make_event(200, int(n_voxels / 200 * 1.15), size, seed)  # spare for duplicates
    keep = np.arange(len(event)) < n_voxels
    assert keep.sum() == n_voxels
    return event.select(keep), {k: v[keep] for k, v in outputs.items()}, pred[keep]


@needs_chromium
@pytest.mark.browser
@pytest.mark.slow
def test_large_event_page_opens(tmp_path):
    event, outputs, pred = make_large_event()
    t0 = time.perf_counter()
    path = write_html(event_figure(event, outputs, pred), tmp_path / "large.html")
    build_s = time.perf_counter() - t0
    mb = path.stat().st_size / 1e6
    with Browser() as browser:
        open_s = browser.open(path, timeout=180)
        painted_ms = browser.evaluate("window.spicePainted")
        shot = browser.screenshot(tmp_path / "large.png")
        assert browser.errors == []
    print(f"\n{len(event)} voxels: page {mb:.1f} MB, built in {build_s:.1f} s, first frame painted "
          f"{painted_ms / 1000:.1f} s after navigation (open {open_s:.1f} s; benchmarks/bench_display.py)")
    assert mb < 40
    img = mpimg.imread(shot)[120:]
    assert _coloured_fraction(img[:, : img.shape[1] // 2]) > 0.002


# ------------------------------------------------------------------------------------------ real data
def test_real_pilarnet_event(real_root_file, tmp_path):
    """The biggest event of the real 192px sample: page with its true instances, and the static figure."""
    from spice.data import read_larcv_root

    event = max(read_larcv_root(real_root_file), key=len)
    fig = event_figure(event, color_by="semantic").to_dict()
    voxel = [t for t in fig["data"] if t.get("mode") == "markers"]
    assert sum(len(_decode(t["x"])) for t in voxel) == len(event)
    assert {t["name"] for t in voxel} == {event.labels[c] for c in np.unique(event.semantic)}
    assert "small_192px.root entry" in fig["layout"]["title"]["text"]
    path = write_html(event_figure(event), tmp_path / "real.html")
    static = event_figure_static(event, color_by="energy", path=tmp_path / "real.png")
    assert len(static.axes) == 2  # one 3-D panel + the energy colour bar
    if chromium_path() is not None:
        with Browser() as browser:
            browser.open(path)
            img = mpimg.imread(browser.screenshot(tmp_path / "real_page.png"))
            assert _coloured_fraction(img[120:]) > 0.001 and browser.errors == []


def test_marker_size_shrinks_for_large_events():
    from spice.display.interactive import marker_size
    sizes = [marker_size(n) for n in (1, 20_000, 40_000, 100_000, 10**6)]
    assert sizes[0] == sizes[1] == 2.5 and sizes[-2] == sizes[-1] == 1.5
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
    event, _, _ = make_event(3, 30, 64, 0)
    fig = event_figure(event)
    assert {t.marker.size for t in fig.data if t.mode == "markers"} == {marker_size(len(event))}
