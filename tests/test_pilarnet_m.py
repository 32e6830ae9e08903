"""PILArNet-M HDF5: exact round trips in every layout, layout detection, label conventions, errors."""
import h5py
import numpy as np
import pytest

from spice.data import PILARNET_FIVETYPES, PILARNET_M, DataError, Event, read_pilarnet_m, synthetic, write_pilarnet_m
from spice.data.pilarnet_m import PilarnetMReader


def make_event(seed, n=60, size=64, labels=PILARNET_FIVETYPES):
    """A hand-made event: unsorted voxels, several instances, some unassigned (-1), mixed semantics."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(size ** 3, n, replace=False)
    coords = np.stack([flat % size, (flat // size) % size, flat // size ** 2], axis=1).astype(np.int64)
    return Event(coords=coords, energy=rng.uniform(0.01, 5, n).astype(np.float32),
                 semantic=rng.integers(0, len(labels), n).astype(np.int64),
                 instance=rng.integers(-1, 4, n).astype(np.int64), spatial_size=size, labels=labels)


@pytest.mark.parametrize("layout", ["v1", "v2", "v3"])
def test_round_trip_exact(tmp_path, layout):
    events = [make_event(s) for s in range(4)] + [make_event(9, n=0)]
    path = write_pilarnet_m(events, tmp_path / "ev.h5", layout=layout)
    back = read_pilarnet_m(path)
    assert len(back) == len(events)
    for i, (a, b) in enumerate(zip(events, back)):
        assert a.equals(b) and b.source == (str(path), i)
    assert [p.name for p in tmp_path.iterdir()] == ["ev.h5"]  # no temporary left


@pytest.mark.parametrize("layout", ["v1", "v2", "v3"])
def test_file_structure_and_detection_without_layout_attr(tmp_path, layout):
    events = [make_event(s) for s in range(3)]
    path = write_pilarnet_m(events, tmp_path / "ev.h5", layout=layout)
    cw, ew = {"v1": (5, None), "v2": (6, 5), "v3": (6, 6)}[layout]
    with h5py.File(path, "a") as f:
        del f.attrs["layout"]
        for i, e in enumerate(events):
            cluster = f["cluster"][i].reshape(-1, cw)
            point = f["point"][i].reshape(-1, 8)
            assert cluster[:, 0].sum() == len(e) == len(point)  # sum(size) == N
            rows = np.repeat(np.arange(len(cluster)), cluster[:, 0])
            # points stored cluster after cluster: each row's points carry its group id and semantic
            order = f["spice_order"][i]
            assert np.array_equal(cluster[rows, 2], e.instance[order])
            assert np.array_equal(cluster[rows, 4], e.semantic[order])
            assert np.array_equal(point[:, :3], e.coords[order])
            unassigned = cluster[:, 2] < 0
            assert (cluster[unassigned, 1] == -1).all() and not unassigned[np.argmax(~unassigned):].any()
            if ew:
                assert len(f["cluster_extra"][i]) == len(cluster) * ew
    reader = PilarnetMReader(path)
    assert reader.layout == layout and reader.counts().tolist() == [len(e) for e in events]
    assert reader.read(1).equals(events[1])


def test_label_convention_and_spatial_size_attributes(tmp_path):
    path = write_pilarnet_m([make_event(1, labels=PILARNET_M)], tmp_path / "m.h5")
    assert read_pilarnet_m(path)[0].labels == PILARNET_M
    with h5py.File(path, "a") as f:
        del f.attrs["label_convention"], f.attrs["spatial_size"], f.attrs["layout"], f["spice_order"]
    e = read_pilarnet_m(path)[0]
    assert e.labels == PILARNET_M and e.spatial_size == 768  # defaults of a public PILArNet-M file
    path = write_pilarnet_m([make_event(1)], tmp_path / "f.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["label_convention"] == "pilarnet_fivetypes"
    assert read_pilarnet_m(path)[0].labels == PILARNET_FIVETYPES


def test_write_refuses_mixed_events_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="mix"):
        write_pilarnet_m([make_event(1), make_event(2, labels=PILARNET_M)], tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_synthetic_round_trip(tmp_path):
    events = synthetic.generate(3, spatial_size=128, seed=0)
    back = read_pilarnet_m(write_pilarnet_m(events, tmp_path / "s.h5"))
    assert len(back) == 3 and all(a.equals(b) for a, b in zip(events, back))


# --- malformed files: one per case -------------------------------------------------------------

def raw_file(path, points, clusters, extras=None, **attrs):
    """A PILArNet-M-like file written directly with h5py (no spice writer involved)."""
    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for name, rows, dtype in (("point", points, np.float32), ("cluster", clusters, np.int64),
                                  ("cluster_extra", extras, np.float32)):
            if rows is None:
                continue
            ds = f.create_dataset(name, (len(rows),), dtype=h5py.vlen_dtype(dtype))
            for i, r in enumerate(rows):
                ds[i] = np.asarray(r, dtype).ravel()
    return path


GOOD_POINTS = [[[1, 2, 3, 0.5, 0.5, 0, 0, 0], [4, 5, 6, 1.5, 1.5, 0, 0, 0], [7, 8, 9, 2.5, 2.5, 0, 0, 0]]]
GOOD_CLUSTERS = [[[1, -1, -1, -1, 4, -1], [2, 0, 0, 0, 1, 13]]]
GOOD_EXTRAS = [np.zeros((2, 5))]


def test_public_style_file_reads(tmp_path):
    e = read_pilarnet_m(raw_file(tmp_path / "g.h5", GOOD_POINTS, GOOD_CLUSTERS, GOOD_EXTRAS))[0]
    assert e.instance.tolist() == [-1, 0, 0] and e.semantic.tolist() == [4, 1, 1]
    assert e.coords.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]] and e.energy.tolist() == [0.5, 1.5, 2.5]
    assert e.labels == PILARNET_M and e.spatial_size == 768


def p(x, e):
    """One point row (x, x, x) with value and energy e."""
    return [x, x, x, e, e, 0, 0, 0]


def test_voxel_in_two_cluster_rows_is_merged_by_the_stated_rule(tmp_path):
    """A public-style file listing voxels in several rows: one voxel each, first position, summed
    energy, labels of the row of highest semantic priority, then particle over none, then earlier."""
    points = [[p(10, 0.1), p(10, 1.0), p(20, 2.0), p(20, 3.0), p(30, 4.0), p(30, 0.5)],
              [p(5, 1.0), p(6, 1.0), p(5, 2.0), p(6, 2.0), p(6, 4.0)]]
    clusters = [[[1, -1, -1, -1, 4, -1],   # low energy: voxel 10
                 [2, 0, 0, 0, 0, 11],      # shower, particle 0: voxels 10, 20
                 [2, 1, 1, 0, 1, 13],      # track, particle 1: voxels 20, 30
                 [1, 2, 2, 0, 3, 11]],     # delta, particle 2: voxel 30
                [[2, -1, -1, -1, 1, -1],   # track, no particle: voxels 5, 6
                 [2, 3, 3, 0, 1, 13],      # track, particle 3: voxels 5, 6
                 [1, 4, 4, 0, 1, 13]]]     # track, particle 4: voxel 6
    path = raw_file(tmp_path / "dup.h5", points, clusters, [np.zeros((4, 5)), np.zeros((3, 5))])
    a, b = read_pilarnet_m(path)
    assert a.coords[:, 0].tolist() == [10, 20, 30]
    assert a.energy.tolist() == pytest.approx([1.1, 5.0, 4.5])
    assert a.semantic.tolist() == [0, 1, 1]  # shower over low energy; track over shower and over delta
    assert a.instance.tolist() == [0, 1, 1]
    assert b.coords[:, 0].tolist() == [5, 6] and b.energy.tolist() == pytest.approx([3.0, 7.0])
    assert b.instance.tolist() == [3, 3]  # a particle over none; of two particles the earlier row
    assert PilarnetMReader(path).counts().tolist() == [6, 5]  # stored points, duplicates included


def test_error_not_hdf5(tmp_path):
    p = tmp_path / "x.h5"
    p.write_bytes(b"plain text, not HDF5\n" * 20)
    with pytest.raises(DataError, match="not an HDF5 file") as e:
        read_pilarnet_m(p)
    assert str(p) in str(e.value)


def test_error_truncated(tmp_path):
    p = write_pilarnet_m([make_event(s, n=2000) for s in range(3)], tmp_path / "t.h5")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt|cannot read"):
        read_pilarnet_m(p)


def test_error_missing_dataset(tmp_path):
    p = raw_file(tmp_path / "m.h5", GOOD_POINTS, None)
    with pytest.raises(DataError, match="missing datasets \\['cluster'\\]"):
        read_pilarnet_m(p)


def test_error_wrong_shapes(tmp_path):
    p = raw_file(tmp_path / "w.h5", [np.ones(7)], GOOD_CLUSTERS, GOOD_EXTRAS, layout="v2")
    with pytest.raises(DataError, match="entry 0: point entry has 7 values"):
        read_pilarnet_m(p)
    p = raw_file(tmp_path / "w2.h5", GOOD_POINTS, [np.ones(7)], GOOD_EXTRAS)
    with pytest.raises(DataError, match="cannot detect the layout"):
        read_pilarnet_m(p)


def test_error_sum_size(tmp_path):
    bad = [[[1, -1, -1, -1, 4, -1], [5, 0, 0, 0, 1, 13]]]
    p = raw_file(tmp_path / "s.h5", GOOD_POINTS, bad, GOOD_EXTRAS, layout="v2")
    with pytest.raises(DataError, match="entry 0: sum\\(size\\) = 6 != N = 3"):
        read_pilarnet_m(p)


def test_error_nan_energy(tmp_path):
    pts = [np.array(GOOD_POINTS[0], float)]
    pts[0][1, 3] = np.inf
    with pytest.raises(DataError, match="entry 0: 1 voxel energies are NaN or infinite"):
        read_pilarnet_m(raw_file(tmp_path / "n.h5", pts, GOOD_CLUSTERS, GOOD_EXTRAS))


def test_error_outside_grid(tmp_path):
    p = raw_file(tmp_path / "o.h5", GOOD_POINTS, GOOD_CLUSTERS, GOOD_EXTRAS, spatial_size=8)
    with pytest.raises(DataError, match="outside the 8\\^3 grid"):
        read_pilarnet_m(p)
    pts = [np.array(GOOD_POINTS[0], float)]
    pts[0][0, 0] = 1.5
    with pytest.raises(DataError, match="not integer voxel indices"):
        read_pilarnet_m(raw_file(tmp_path / "o2.h5", pts, GOOD_CLUSTERS, GOOD_EXTRAS))


def test_error_unknown_labels(tmp_path):
    bad = [[[1, -1, -1, -1, 4, -1], [2, 0, 0, 0, 9, 13]]]
    with pytest.raises(DataError, match="unknown semantic labels \\[9\\]"):
        read_pilarnet_m(raw_file(tmp_path / "u.h5", GOOD_POINTS, bad, GOOD_EXTRAS))
    p = raw_file(tmp_path / "c.h5", GOOD_POINTS, GOOD_CLUSTERS, GOOD_EXTRAS, label_convention="mystery")
    with pytest.raises(DataError, match="unknown label_convention"):
        read_pilarnet_m(p)
