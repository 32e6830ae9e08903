"""spice.baseline: DBSCAN labels against scipy connected components, noise handling, frame rows on
a known answer and on real events (scipy components + scikit-learn ARI), eps tuning against a loop."""
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from spice.baseline import dbscan_class, dbscan_evaluate, dbscan_event, tune_dbscan
from spice.evaluate import FRAME_COLUMNS
from spice.metrics import ari, contingency, score_event
from test_evaluate import L, lines_event, make_event

DATA = Path(os.environ.get("SPICE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


@pytest.fixture(scope="module")
def events():
    rng = np.random.default_rng(5)
    return [make_event(rng, int(rng.integers(3, 9)), entry=i) for i in range(5)]


def components(coords, size=L):
    """26-connected components of voxels via scipy on a dense grid."""
    grid = np.zeros((size,) * 3, bool)
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


def test_frame_rows_known_answer():
    df = dbscan_evaluate([lines_event()], eps={0: 1.8, 1: 1.8}, min_voxels=10)
    assert list(df.columns) == list(FRAME_COLUMNS) and (df.method == "dbscan").all()
    assert (df.cluster_time_s > 0).all() and (df.net_time_s == 0).all() and df.source.tolist() == ["lines.h5:0"] * 2
    sep, merged = df.iloc[0], df.iloc[1]
    assert (sep.ari, sep.purity, sep.efficiency, sep.sbd, sep.n_true, sep.n_pred) == (1, 1, 1, 1, 2, 2)
    # class 1: one predicted cluster of 32 over true 12 + 20 (SPEC §5 by hand)
    assert merged.ari == pytest.approx(0, abs=1e-12) and merged.purity == pytest.approx(20 / 32)
    assert merged.efficiency == 1 and (merged.n_true, merged.n_pred, merged.n_voxels) == (2, 1, 32)
    assert merged.sbd == pytest.approx((24 / 44 + 40 / 52) / 2)  # BD(true, pred) < BD(pred, true) = 40/52
    # eps below the voxel pitch: every voxel of class 1 alone
    single = dbscan_evaluate([lines_event()], eps={0: 1.8, 1: 0.9}, min_voxels=10).iloc[1]
    assert (single.n_pred, single.purity) == (32, 1) and single.efficiency == pytest.approx((1 / 12 + 1 / 20) / 2)
    assert single.sbd == pytest.approx((12 * 2 / 13 + 20 * 2 / 21) / 32)  # BD(pred, true) < BD(true, pred)
    with pytest.raises(KeyError, match="eps for semantic class"):
        dbscan_evaluate([lines_event()], eps={0: 1.8})


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
def test_real_events_against_scipy_components_and_sklearn_ari():
    """DBSCAN(eps 1.8, min_samples 1) is 26-connectivity: per class, the ARI of the frame equals
    scikit-learn's ARI of scipy's connected components on the voxels SPEC §5 scores."""
    from sklearn.metrics import adjusted_rand_score

    from spice.data import read_larcv_root
    evs = read_larcv_root(DATA / "small_192px.root")[:2]
    df = dbscan_evaluate(evs, eps=1.8)
    n_rows = 0
    for i, ev in enumerate(evs):
        for c in np.unique(ev.semantic):
            sel = ev.semantic == c
            comp = components(ev.coords[sel], ev.spatial_size)
            inst = ev.instance[sel]
            ids, counts = np.unique(inst[inst >= 0], return_counts=True)
            keep = np.isin(inst, ids[counts >= 10])
            if not keep.any():
                continue
            row = df[(df.event == i) & (df["class"] == c)]
            assert row.ari.item() == pytest.approx(adjusted_rand_score(inst[keep], comp[keep]), abs=1e-12)
            assert row.n_pred.item() == len(np.unique(comp[keep])) and row.n_voxels.item() == keep.sum()
            n_rows += 1
    assert n_rows == len(df) >= 4
