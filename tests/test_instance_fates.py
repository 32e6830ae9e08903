"""spice.instance_fates: found / split / lost instances, with the cause of each loss, on a hand-built event."""
import numpy as np
import pytest

from spice.cluster import cluster_event
from spice.data import Event
from spice.instance_fates import fates_table, instance_fates

THRESHOLDS = {0: (0.5, 0.5), 1: (0.5, 0.5)}


def _event_and_outputs():
    """MIP (class 1): A found at e = 0; B in two far-apart halves (split); C 0.05 from A with lower seediness
    (absorbed by A's seed); D far away but below s0 (lost); E 5 voxels (not scored); 4 voxels of instance −1.
    HIP (class 0): one instance alone."""
    groups = [  # (class, instance, voxels, embedding, seediness)
        (1, 0, 20, (0.0, 0.0, 0.0), 0.9), (1, 1, 10, (1.0, 0.0, 0.0), 0.9), (1, 1, 10, (1.0, 1.0, 0.0), 0.9),
        (1, 2, 18, (0.05, 0.0, 0.0), 0.8), (1, 3, 15, (-1.0, -1.0, -1.0), 0.2), (1, 4, 5, (1.0, 1.0, 1.0), 0.9),
        (1, -1, 4, (0.0, 0.0, 1.0), 0.9), (0, 7, 12, (0.5, 0.5, 0.5), 0.9)]
    sem, inst, emb, seed = [], [], [], []
    for c, k, n, e, s in groups:
        sem += [c] * n
        inst += [k] * n
        emb += [e] * n
        seed += [s] * n
    seed[0] = 0.95                                  # A's seed comes first
    n = len(sem)
    coords = np.stack([np.arange(n) % 16, np.arange(n) // 16, np.zeros(n, int)], 1)
    event = Event(coords=coords, energy=np.ones(n, np.float32), semantic=np.array(sem), instance=np.array(inst),
                  spatial_size=16)
    outputs = {"embedding": np.array(emb, np.float32), "margin": np.full(n, 0.1, np.float32),
               "seediness": np.array(seed, np.float32)}
    return event, outputs


def test_fates_and_causes_of_each_instance():
    event, outputs = _event_and_outputs()
    predicted = cluster_event(outputs, event.semantic, THRESHOLDS)
    frame = instance_fates([outputs], [event], [predicted], THRESHOLDS).set_index(["class", "instance"])
    assert sorted(frame.index) == [(0, 7), (1, 0), (1, 1), (1, 2), (1, 3)]     # E (5 voxels) and −1 not scored
    assert frame.loc[(1, 0), "fate"] == "found" and frame.loc[(1, 0), "clusters"] == 1
    assert frame.loc[(1, 1), "fate"] == "split" and frame.loc[(1, 1), "clusters"] == 2
    assert frame.loc[(1, 2), "fate"] == "lost" and not frame.loc[(1, 2), "below_s0"]
    assert frame.loc[(1, 3), "fate"] == "lost" and frame.loc[(1, 3), "below_s0"]
    assert frame.loc[(0, 7), "fate"] == "found" and np.isnan(frame.loc[(0, 7), "neighbour_distance"])
    assert frame.loc[(1, 2), "neighbour_distance"] == pytest.approx(0.05, abs=1e-6)
    assert frame.loc[(1, 3), "neighbour_distance"] == pytest.approx(np.sqrt(3.0), abs=1e-6)   # to A
    assert frame.loc[(1, 1), "neighbour_distance"] == pytest.approx(np.hypot(0.95, 0.5), abs=1e-6)  # B's mean to C
    assert frame.loc[(1, 1), "voxels"] == 20 and frame.loc[(1, 0), "margin"] == pytest.approx(0.1)


def test_table_shares_per_class():
    event, outputs = _event_and_outputs()
    predicted = cluster_event(outputs, event.semantic, THRESHOLDS)
    table = fates_table(instance_fates([outputs], [event], [predicted], THRESHOLDS), delta=0.2).set_index("class_name")
    mip = table.loc["MIP"]
    assert (mip.instances, mip.found, mip.split, mip.lost) == (4, 0.25, 0.25, 0.5)
    assert mip["lost: below s0"] == 0.5 and mip["lost: inside 2δ = 0.4"] == 0.5    # C inside, D outside
    assert mip["lost: neighbour distance"] == pytest.approx(round((0.05 + np.sqrt(3)) / 2, 3))
    assert table.loc["HIP", "found"] == 1.0 and np.isnan(table.loc["HIP", "lost: below s0"])


def test_majority_tie_goes_to_the_lower_instance():
    """A cluster holding 10 voxels of each of two instances belongs to the lower id; the other is lost."""
    n = 20
    event = Event(coords=np.stack([np.arange(n), np.zeros(n, int), np.zeros(n, int)], 1), energy=np.ones(n, np.float32),
                  semantic=np.ones(n, int), instance=np.repeat([3, 1], 10), spatial_size=32)
    outputs = {"embedding": np.zeros((n, 3), np.float32), "margin": np.full(n, 0.1, np.float32),
               "seediness": np.full(n, 0.9, np.float32)}
    frame = instance_fates([outputs], [event], [np.zeros(n, int)], THRESHOLDS).set_index("instance")
    assert frame.loc[1, "fate"] == "found" and frame.loc[3, "fate"] == "lost"
