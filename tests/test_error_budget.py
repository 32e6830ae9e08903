"""spice.error_budget: the oracle steps on hand-made outputs whose answers are known."""
import numpy as np
import pytest

from spice.data import Event
from spice.error_budget import STEPS, budget_table, error_budget, nearest_centroid, target_seediness


def _event(sizes=(30, 20, 25), classes=(1, 1, 0)):
    """Instances of the given sizes and classes; voxel coordinates do not matter here."""
    n = sum(sizes)
    inst = np.repeat(np.arange(len(sizes)), sizes)
    sem = np.repeat(np.array(classes), sizes)
    coords = np.stack([np.arange(n), np.zeros(n, int), np.zeros(n, int)], 1)
    return Event(coords, np.ones(n, np.float32), sem, inst, 128)


def _outputs(event, spread=0.01, seed=0):
    """Each instance k embedded near its own point (k, 0, 0), small margin; seediness 1 at one voxel."""
    rng = np.random.default_rng(seed)
    centres = np.stack([event.instance.astype(float), np.zeros(len(event)), np.zeros(len(event))], 1)
    emb = centres + rng.normal(0, spread, centres.shape)
    return {"embedding": emb.astype(np.float32), "margin": np.full(len(event), 0.1, np.float32),
            "seediness": rng.uniform(0, 0.05, len(event)).astype(np.float32)}


def test_target_seediness_is_the_score_for_the_own_centroid():
    ev = _event()
    out = _outputs(ev)
    t = target_seediness(ev, out)
    k = 1
    mine = ev.instance == k
    mu = out["embedding"][mine].astype(float).mean(0)
    expected = np.exp(-((out["embedding"][mine] - mu) ** 2).sum(1) / (2 * 0.1 ** 2))
    np.testing.assert_allclose(t[mine], expected, rtol=1e-5)
    assert t.min() > 0.9                                  # spread 0.01 ≪ margin 0.1: every voxel near its centre


def test_unlabelled_voxels_get_no_target_and_nearest_centroid_recovers_the_instances():
    ev = _event()
    ev.instance[:3] = -1
    out = _outputs(ev)
    assert (target_seediness(ev, out)[:3] == 0).all()
    labels = nearest_centroid(ev, out)
    np.testing.assert_array_equal(labels[3:], ev.instance[3:])   # unlabelled voxels go to a nearest instance
    assert labels[0] == 0
    # an instance embedded on top of another one of the same class is lost to the one with the larger score
    out["embedding"][ev.instance == 1] = out["embedding"][ev.instance == 0][:20]
    merged = nearest_centroid(ev, out)
    assert len(np.unique(merged[ev.semantic == 1])) <= 2


def test_bad_seeds_with_a_good_embedding_show_as_a_seediness_gap():
    events = [_event(), _event((40, 15, 12, 33), (1, 1, 1, 0))]
    outputs = [_outputs(ev, seed=i) for i, ev in enumerate(events)]
    for ev, out in zip(events, outputs):                 # seeds that never pass s0 = 0.5: one cluster per class
        out["seediness"][:] = 0.1
    budget = error_budget(outputs, events, {c: (0.5, 0.3) for c in range(5)})
    wide = budget.pivot(index="step", columns="class_name", values="ari")
    assert list(budget["step"].unique()) == list(STEPS)
    assert wide.loc["network", "MIP"] == pytest.approx(0.0)          # several MIPs merged into one: ARI 0
    assert wide.loc["network", "HIP"] == pytest.approx(1.0)          # one HIP per event: nothing to split
    assert wide.loc["network, best thresholds", "MIP"] == pytest.approx(1.0)  # s0 = 0 seeds every voxel
    assert wide.loc["target seediness", "MIP"] == pytest.approx(1.0)
    assert wide.loc["nearest centroid", "MIP"] == pytest.approx(1.0)
    table = budget_table({"net": budget})
    assert table.columns.tolist()[:2] == ["network", "step"] and len(table) == len(STEPS)
