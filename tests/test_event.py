"""Event validation and batch collation (spice/data/event.py)."""
import numpy as np
import pytest

from spice.data import PILARNET_FIVETYPES, DataError, Event, collate


def make_event(n=5, size=16, seed=0, source=("mem.h5", 3)):
    rng = np.random.default_rng(seed)
    return Event(coords=rng.integers(0, size, (n, 3)).astype(np.int64),
                 energy=rng.random(n).astype(np.float32),
                 semantic=rng.integers(0, 5, n).astype(np.int64),
                 instance=rng.integers(-1, 3, n).astype(np.int64),
                 spatial_size=size, labels=PILARNET_FIVETYPES, source=source)


def test_valid_event_passes_and_counts():
    e = make_event()
    assert e.validate() is e and len(e) == 5


@pytest.mark.parametrize("field,value,message", [
    ("energy", np.array([np.nan, 1, 1, 1, 1], np.float32), "NaN or infinite"),
    ("coords", np.full((5, 3), 16, np.int64), "outside the 16^3 grid"),
    ("semantic", np.array([0, 1, 7, 1, 1], np.int64), "unknown semantic labels [7]"),
    ("instance", np.zeros(4, np.int64), "instance must have shape (5,)"),
    ("coords", np.zeros((5, 2), np.int64), "shape (N, 3)"),
])
def test_bad_events_name_file_entry_and_reason(field, value, message):
    e = make_event()
    setattr(e, field, value)
    with pytest.raises(DataError) as err:
        e.validate()
    assert "mem.h5, entry 3" in str(err.value) and message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_collate_offsets_batch_column_and_order():
    a, b = make_event(4, seed=1), make_event(6, seed=2)
    batch = collate([a, b])
    assert batch.batch_size == 2 and batch.offsets.tolist() == [0, 4, 10]
    assert batch.coords.shape == (10, 4) and batch.batch_index.tolist() == [0] * 4 + [1] * 6
    assert np.array_equal(batch.coords[4:, 1:].numpy(), b.coords)
    assert np.array_equal(batch.energy[:4].numpy(), a.energy)
    assert np.array_equal(batch.instance[4:].numpy(), b.instance)


def test_collate_refuses_mixed_grids_or_conventions():
    a, b = make_event(), make_event(size=32)
    with pytest.raises(ValueError, match="different grids"):
        collate([a, b])
    with pytest.raises(ValueError, match="at least one"):
        collate([])


def test_select_and_equals():
    e = make_event(8)
    mask = e.energy > 0.5
    sub = e.select(mask)
    assert len(sub) == int(mask.sum()) and sub.equals(e.select(mask)) and not sub.equals(e)
