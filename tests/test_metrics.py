"""spice.metrics against scikit-learn, hand-computed cases and explicit loops over clusters."""
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from spice.metrics import ari, efficiency, purity, sbd, score_event


def loop_metrics(true, pred):
    """Purity, efficiency and SBD by looping over sets (SPEC §5 literally)."""
    T = [set(np.flatnonzero(true == t)) for t in np.unique(true)]
    P = [set(np.flatnonzero(pred == p)) for p in np.unique(pred)]
    pur = np.mean([max(len(p & t) for t in T) / len(p) for p in P])
    eff = np.mean([max(len(p & t) for p in P) / len(t) for t in T])

    def bd(A, B):
        return np.mean([max(2 * len(a & b) / (len(a) + len(b)) for b in B) for a in A])

    return pur, eff, min(bd(P, T), bd(T, P))


def partitions(rng):
    for n in (1, 2, 5, 37, 400):
        yield np.zeros(n, int), np.zeros(n, int)  # both one cluster
        yield np.arange(n), np.arange(n)  # both all singletons
        yield np.zeros(n, int), np.arange(n)
        yield np.arange(n), np.zeros(n, int)
        for k in (2, 5, 50):
            yield rng.integers(0, k, n), rng.integers(0, k + 1, n) * 7 - 3  # arbitrary label values
            t = rng.integers(0, k, n)
            yield t, np.where(rng.random(n) < 0.1, rng.integers(0, k, n), t)  # close to the truth


def test_ari_equals_sklearn():
    rng = np.random.default_rng(0)
    count = 0
    for t, p in partitions(rng):
        assert abs(ari(t, p) - adjusted_rand_score(t, p)) <= 1e-12, (t, p)
        count += 1
    assert count == 50


def test_purity_efficiency_sbd_equal_loops():
    rng = np.random.default_rng(1)
    for t, p in partitions(rng):
        pur, eff, s = loop_metrics(t, p)
        assert purity(t, p) == pytest.approx(pur, abs=1e-12)
        assert efficiency(t, p) == pytest.approx(eff, abs=1e-12)
        assert sbd(t, p) == pytest.approx(s, abs=1e-12)


def test_hand_computed():
    true = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([5, 5, 5, 9, 9, 9])
    # pred 5: 3/3 pure; pred 9: 2 of 3 from true 1 -> purity (1 + 2/3) / 2
    assert purity(true, pred) == pytest.approx((1 + 2 / 3) / 2)
    # true 0: best 3/4; true 1: 2/2 -> (3/4 + 1) / 2
    assert efficiency(true, pred) == pytest.approx((0.75 + 1) / 2)
    # dice: (t0,p5)=6/7, (t0,p9)=2/7, (t1,p9)=4/5. BD(true,pred)=(6/7+4/5)/2, BD(pred,true)=(6/7+4/5)/2
    assert sbd(true, pred) == pytest.approx((6 / 7 + 4 / 5) / 2)
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert ari([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert np.isnan(purity([], []))
    with pytest.raises(ValueError, match="length mismatch"):
        ari([0, 1], [0])


def test_score_event_filters_and_matches_direct_calls():
    rng = np.random.default_rng(2)
    n = 3000
    sem = rng.integers(0, 3, n)
    true = rng.integers(-1, 40, n)
    true[:30] = 99  # instance 99: 30 voxels spread over the classes (~10 per class)
    pred = np.where(rng.random(n) < 0.8, true, rng.integers(0, 40, n))
    rows = score_event(torch.from_numpy(true), pred, sem, min_voxels=12, labels=("a", "b", "c", "d"))
    assert [r["class"] for r in rows] == [0, 1, 2] and rows[1]["class_name"] == "b"
    for r in rows:
        c = r["class"]
        in_c = (sem == c) & (true >= 0)
        ids, counts = np.unique(true[in_c], return_counts=True)
        big = set(ids[counts >= 12].tolist())
        keep = in_c & np.isin(true, list(big))
        t, p = true[keep], pred[keep]
        assert r["n_voxels"] == keep.sum() and r["n_true"] == len(big)
        assert r["n_pred"] == len(np.unique(p))
        assert r["ari"] == pytest.approx(adjusted_rand_score(t, p), abs=1e-12)
        pur, eff, s = loop_metrics(t, p)
        assert (r["purity"], r["efficiency"], r["sbd"]) == pytest.approx((pur, eff, s), abs=1e-12)


def test_score_event_drops_small_classes_and_unlabelled():
    sem = np.array([0] * 12 + [1] * 5 + [2] * 3)
    true = np.array([0] * 12 + [1] * 5 + [-1] * 3)
    pred = np.zeros(20, int)
    rows = score_event(true, pred, sem, min_voxels=10)
    assert len(rows) == 1 and rows[0]["class"] == 0 and rows[0]["n_voxels"] == 12
    assert rows[0]["ari"] == 1.0 and rows[0]["sbd"] == 1.0
    assert score_event(true, pred, sem, min_voxels=100) == []
    with pytest.raises(ValueError, match="length mismatch"):
        score_event(true, pred[:3], sem)
