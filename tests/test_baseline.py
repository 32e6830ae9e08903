"""spice.baseline: DBSCAN labels against scipy connected components, noise handling, frame layout,
and eps tuning against a direct loop."""
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from spice.baseline import dbscan_class, dbscan_evaluate, dbscan_event, tune_dbscan
from spice.evaluate import FRAME_COLUMNS
from spice.metrics import ari, contingency, score_event
from test_evaluate import L, make_event

DATA = Path(os.environ.get("SPICE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(5)
    return [make_event(rng, int(rng.integers(3, 9)), entry=i) for i in range(5)]


def components(coords):
    """26-connected components of voxels via scipy on a dense grid."""
    grid = np.zeros((L, L, L), bool)
    grid[tuple(coords.T)] = True
    lab, _ = ndimage.label(grid, structure=np.ones((3, 3, 3)))
    return lab[tuple(coords.T)]


def test_min_samples_1_is_26_connectivity(events):
    for ev in events:
        pred = dbscan_event(ev, eps=1.8)
        for c in np.unique(ev.semantic):
            sel = ev.semantic == c
            assert ari(components(ev.coords[sel]), pred[sel]) == 1.0
        # ids unique across classes: no predicted id spans two classes
        t = contingency(ev.semantic, pred)
        assert (t.b == np.bincount(pred)).all() and len(np.unique(t.cols)) == len(t.cols)
        assert pred.min() == 0 and len(np.unique(pred)) == pred.max() + 1


def test_noise_becomes_singletons():
    coords = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [10, 10, 10], [20, 20, 20]])
    lab = dbscan_class(coords, eps=1.5, min_samples=3)
    np.testing.assert_array_equal(lab, [0, 0, 0, 1, 2])
    assert dbscan_class(np.zeros((0, 3)), 1.8).shape == (0,)


def test_frame_layout_and_rows(events):
    df = dbscan_evaluate(events, eps={0: 1.8, 1: 2.5, 2: 1.8}, min_voxels=5)
    assert list(df.columns) == list(FRAME_COLUMNS) and (df.method == "dbscan").all()
    assert (df.cluster_time_s > 0).all() and (df.net_time_s == 0).all()
    for i, ev in enumerate(events):
        pred = dbscan_event(ev, {0: 1.8, 1: 2.5, 2: 1.8})
        want = score_event(ev.instance, pred, ev.semantic, min_voxels=5)
        got = df[df.event == i]
        assert got.ari.tolist() == [r["ari"] for r in want]
        assert got.n_pred.tolist() == [r["n_pred"] for r in want]
    with pytest.raises(KeyError, match="eps for semantic class"):
        dbscan_evaluate(events, eps={0: 1.8})


def test_tune_dbscan_against_loop(events):
    eps_grid = [1.0, 1.8, 3.0]
    grid, best = tune_dbscan(events, eps_grid, objective="sbd", min_voxels=5)
    for c, eps in best.items():
        means = []
        for e in eps_grid:
            vals = [r["sbd"] for ev in events
                    for r in score_event(ev.instance, dbscan_event(ev, e), ev.semantic, min_voxels=5)
                    if r["class"] == c]
            means.append(np.mean(vals))
            assert grid[(grid["class"] == c) & (grid.eps == e)].score.item() == pytest.approx(means[-1], abs=1e-12)
        assert eps == eps_grid[int(np.argmax(np.round(means, 12)))]  # first maximum: smallest eps


@pytest.mark.skipif(not (DATA / "small_192px.root").exists(), reason="real PILArNet sample absent")
def test_real_events():
    from spice.data import read_larcv_root
    evs = read_larcv_root(DATA / "small_192px.root")[:2]
    df = dbscan_evaluate(evs, eps=1.8)
    assert len(df) >= 2 and df[["ari", "purity", "efficiency", "sbd"]].apply(np.isfinite).all().all()
    assert ((df.sbd > 0) & (df.sbd <= 1)).all()
