"""EventDataset over mixed files (lazy index, filters) and the Table I summary."""
import numpy as np
import pandas as pd
import pytest
import torch

from spice.data import (PILARNET_FIVETYPES, DataError, Event, EventDataset, collate, read_larcv_root,
                        read_pilarnet_m, summary, write_pilarnet_m)


def small_event(n, seed, size=32):
    rng = np.random.default_rng(seed)
    flat = rng.choice(size ** 3, n, replace=False)
    return Event(np.stack([flat % size, flat // size % size, flat // size ** 2], 1).astype(np.int64),
                 rng.uniform(0, 2, n).astype(np.float32), rng.integers(0, 5, n).astype(np.int64),
                 rng.integers(-1, 3, n).astype(np.int64), size)


@pytest.fixture
def h5_file(tmp_path):
    return write_pilarnet_m([small_event(n, s) for s, n in enumerate([10, 3, 25, 0, 7])], tmp_path / "a.h5")


def test_index_and_lazy_reads_mixed_formats(h5_file, real_root_file):
    ds = EventDataset([h5_file, real_root_file])
    assert len(ds) == 10
    events = read_pilarnet_m(h5_file) + read_larcv_root(real_root_file)
    for i in (0, 4, 5, 9, -1):
        assert ds[i].equals(events[i]) and ds[i].source == events[i].source
    assert ds.source(7) == (str(real_root_file), 2)
    with pytest.raises(IndexError):
        ds[10]


def test_min_voxels_and_energy_threshold(h5_file):
    ds = EventDataset(h5_file, energy_threshold=0.5, min_voxels=7)
    assert [ds.source(i)[1] for i in range(len(ds))] == [0, 2, 4]  # stored counts 10, 25, 7 kept
    full = read_pilarnet_m(h5_file)
    for i, entry in enumerate([0, 2, 4]):
        keep = full[entry].energy >= 0.5
        assert ds[i].equals(full[entry].select(keep)) and (ds[i].energy >= 0.5).all()


def test_index_built_without_reading_events(h5_file, monkeypatch):
    from spice.data.pilarnet_m import PilarnetMReader
    def no_read(*a, **k):
        raise AssertionError("event data read at construction")
    monkeypatch.setattr(PilarnetMReader, "read_range", no_read)
    assert len(EventDataset(h5_file, min_voxels=5)) == 3


def test_dataloader_with_collate(h5_file):
    loader = torch.utils.data.DataLoader(EventDataset(h5_file), batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert [b.batch_size for b in batches] == [2, 2, 1]
    assert batches[0].coords.shape == (13, 4)


def test_rejects_unknown_format(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, not a data file")
    with pytest.raises(DataError, match="neither a ROOT nor an HDF5 file"):
        EventDataset([p])


def test_summary_matches_pandas_groupby():
    events = [small_event(n, s) for s, n in enumerate([40, 0, 25, 60])]
    table = summary(events).set_index("class")
    rows = pd.concat([pd.DataFrame({"event": i, "cls": e.semantic, "inst": e.instance}) for i, e in enumerate(events)])
    for c, name in enumerate(PILARNET_FIVETYPES):
        sub = rows[rows.cls == c]
        per_event = sub[sub.inst >= 0].groupby("event").inst.nunique().reindex(sub.event.unique(), fill_value=0)
        assert table.loc[name, "n_voxels"] == len(sub)
        assert table.loc[name, "n_events"] == sub.event.nunique()
        assert table.loc[name, "n_instances"] == per_event.sum()
        assert table.loc[name, "mean_instances_per_event"] == pytest.approx(per_event.mean())
        assert table.loc[name, "std_instances_per_event"] == pytest.approx(per_event.std(ddof=0))


def test_summary_real_file(real_root_file):
    table = summary(read_larcv_root(real_root_file)).set_index("class")
    assert table.n_voxels.to_dict() == {"HIP": 3686, "MIP": 4685, "Shower": 18230, "Delta": 781, "Michel": 0}
    assert table.loc["Michel", "n_events"] == 0 and table.loc["Michel", "n_instances"] == 0
    assert (table.n_instances >= table.n_events).all()
