"""PILArNet-M HDF5 files (SPEC §6): read (layouts v1/v2/v3, lazily per event) and write (atomic).

Datasets of shape (n_events,), each entry a flat variable-length array:
  point          float32 (N, 8): x, y, z, value (MeV), energy, time, electrons, dx
  cluster        int     (K, 5) v1 [size, fragment_id, group_id, interaction_id, semantic], (K, 6) v2/v3 (+pid)
  cluster_extra  float32 (K, 5) v2, (K, 6) v3 (absent or ignored in v1)
Points are stored cluster after cluster (sum(size) == N). Instance = group_id, semantic from the
cluster row. Root attributes: `label_convention` ("pilarnet_m" when absent, or "pilarnet_fivetypes")
and `spatial_size` (768 when absent).

One voxel listed twice: the public files may list a voxel in two cluster rows (two particles
depositing in it). PoLAr-MAE's and pimm's readers keep such points as they are; SPICE needs one site
per voxel, so the reader merges them by this rule (`merge_duplicate_voxels`): the voxel keeps its
first stored position, its energy is the sum of the listed values (all the charge deposited in it),
and its semantic label and instance come from one listed row, chosen by semantic priority
track (HIP, MIP) > shower > Michel > delta > low energy, then a particle (instance >= 0) over no
particle, then the earlier stored row. `counts()` still counts stored points (duplicates included).

Writing groups voxels into one cluster row per (instance, semantic) pair, unassigned voxels
(instance −1) first with ids −1. So that a read gives back the exact original voxel order, the
writer adds one dataset `spice_order` (vlen int64: original index of each stored point); readers
that do not know it ignore it, and files without it are read in stored order.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from spice.data.event import PILARNET_FIVETYPES, PILARNET_M, DataError, Event

LAYOUTS = {"v1": (5, None), "v2": (6, 5), "v3": (6, 6)}  # cluster width, cluster_extra width
CONVENTIONS = {"pilarnet_m": PILARNET_M, "pilarnet_fivetypes": PILARNET_FIVETYPES}
DEFAULT_SPATIAL_SIZE = 768
POINT_COLUMNS = 8
ORDER = "spice_order"


# Which row's labels a voxel listed in several rows keeps: lower rank wins (pimm's overlay order).
PRIORITY = {"track": 0, "HIP": 0, "MIP": 0, "shower": 1, "Shower": 1, "Michel": 2, "delta": 3, "Delta": 3,
            "low energy": 4}


def merge_duplicate_voxels(event: Event) -> Event:
    """The event with one voxel per coordinate, by the rule in the module docstring (unchanged when
    no coordinate repeats). Needs validated coordinates (inside the grid)."""
    L = event.spatial_size
    key = (event.coords[:, 0] * L + event.coords[:, 1]) * L + event.coords[:, 2]
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(uniq) == len(key):
        return event
    inverse = inverse.reshape(-1)
    rank = np.array([PRIORITY[name] for name in event.labels])[event.semantic]
    # by voxel, then rank, then particle before none, then stored order (lexsort: last key first)
    order = np.lexsort((np.arange(len(key)), event.instance < 0, rank, inverse))
    starts = np.searchsorted(inverse[order], np.arange(len(uniq)))
    winner = order[starts]  # (V,) row whose labels each voxel keeps
    energy = np.bincount(inverse, weights=event.energy.astype(np.float64), minlength=len(uniq))
    by_position = np.argsort(first, kind="stable")  # voxels in the order of their first stored point
    return Event(event.coords[first[by_position]], energy[by_position].astype(np.float32),
                 event.semantic[winner[by_position]], event.instance[winner[by_position]],
                 event.spatial_size, event.labels, event.source)


def convention_name(labels) -> str:
    for name, names in CONVENTIONS.items():
        if tuple(labels) == names:
            return name
    raise ValueError(f"unknown label convention {tuple(labels)}; known: {CONVENTIONS}")


class PilarnetMReader:
    """Lazy reader of one PILArNet-M HDF5 file: `len`, `counts()`, `read(entry)`, `read_range(a, b)`.

    Opens the file on first use (and again after a fork, for DataLoader workers).
    """

    def __init__(self, path):
        self.path = str(path)
        self._file, self._pid = None, None
        f = self._open()
        self.num_entries = int(f["point"].shape[0])
        conv = f.attrs.get("label_convention", "pilarnet_m")
        conv = conv.decode() if isinstance(conv, bytes) else str(conv)
        if conv not in CONVENTIONS:
            self._fail(None, f"unknown label_convention attribute {conv!r} (known: {sorted(CONVENTIONS)})")
        self.labels = CONVENTIONS[conv]
        self.spatial_size = int(f.attrs.get("spatial_size", DEFAULT_SPATIAL_SIZE))
        self.layout = self._detect_layout()

    def _fail(self, entry, reason):
        raise DataError(self.path, entry, reason)

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not os.path.exists(self.path):
                self._fail(None, "file does not exist")
            if not h5py.is_hdf5(self.path):
                self._fail(None, "not an HDF5 file (no HDF5 signature)")
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                self._fail(None, f"cannot open HDF5 file, truncated or corrupt ({exc})")
            self._pid = os.getpid()
            missing = [k for k in ("point", "cluster") if k not in self._file]
            if missing:
                self._fail(None, f"missing datasets {missing} (found {sorted(self._file.keys())})")
            shapes = {k: self._file[k].shape for k in ("point", "cluster", "cluster_extra") if k in self._file}
            if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
                self._fail(None, f"datasets must all have shape (n_events,), got {shapes}")
        return self._file

    def __len__(self) -> int:
        return self.num_entries

    def _raw(self, name, start, stop) -> list[np.ndarray]:
        try:
            return list(self._open()[name][start:stop])
        except DataError:
            raise
        except Exception as exc:  # h5py raises OSError/KeyError/TypeError for damaged data
            self._fail(start if stop - start == 1 else None, f"cannot read dataset {name!r} ({type(exc).__name__}: {exc})")

    def _detect_layout(self) -> str:
        f = self._open()
        stated = f.attrs.get("layout")
        if stated is not None:
            stated = stated.decode() if isinstance(stated, bytes) else str(stated)
            if stated not in LAYOUTS:
                self._fail(None, f"unknown layout attribute {stated!r}")
            return stated
        n = min(self.num_entries, 8)
        points, clusters = self._raw("point", 0, n), self._raw("cluster", 0, n)
        extras = self._raw("cluster_extra", 0, n) if "cluster_extra" in f else None
        for name, (cw, ew) in LAYOUTS.items():
            ok = True
            for i in range(n):
                c = clusters[i]
                if len(c) % cw or len(points[i]) % POINT_COLUMNS:
                    ok = False
                    break
                k = len(c) // cw
                if int(np.asarray(c).reshape(k, cw)[:, 0].sum()) != len(points[i]) // POINT_COLUMNS:
                    ok = False
                    break
                if ew is not None and (extras is None or len(extras[i]) != k * ew):
                    ok = False
                    break
            if ok:
                return name
        self._fail(None, "cannot detect the layout (v1/v2/v3): wrong shapes or sum(size) != N in the first events")

    def counts(self) -> np.ndarray:
        """(n_entries,) int64 voxels per event = sum of cluster sizes (reads only the small cluster dataset)."""
        cw = LAYOUTS[self.layout][0]
        out = np.empty(self.num_entries, dtype=np.int64)
        step = 4096
        for a in range(0, self.num_entries, step):
            for i, c in enumerate(self._raw("cluster", a, min(a + step, self.num_entries))):
                out[a + i] = int(np.asarray(c)[0::cw].sum()) if len(c) % cw == 0 else -1
        return out

    def read_range(self, start: int, stop: int) -> list[Event]:
        if not 0 <= start <= stop <= self.num_entries:
            raise IndexError(f"{self.path}: entries {start}..{stop} outside 0..{self.num_entries}")
        points, clusters = self._raw("point", start, stop), self._raw("cluster", start, stop)
        orders = self._raw(ORDER, start, stop) if ORDER in self._open() else [None] * (stop - start)
        return [self._event(start + i, points[i], clusters[i], orders[i]) for i in range(stop - start)]

    def read(self, entry: int) -> Event:
        """One event (h5py reads only that entry)."""
        return self.read_range(entry, entry + 1)[0]

    def _event(self, entry, point, cluster, order) -> Event:
        cw = LAYOUTS[self.layout][0]
        point, cluster = np.asarray(point), np.asarray(cluster)
        if len(point) % POINT_COLUMNS:
            self._fail(entry, f"point entry has {len(point)} values, not a multiple of {POINT_COLUMNS}")
        if len(cluster) % cw:
            self._fail(entry, f"cluster entry has {len(cluster)} values, not a multiple of {cw} (layout {self.layout})")
        point = point.reshape(-1, POINT_COLUMNS)
        cluster = cluster.reshape(-1, cw).astype(np.int64)
        sizes = cluster[:, 0]
        if (sizes < 0).any() or int(sizes.sum()) != len(point):
            self._fail(entry, f"sum(size) = {int(sizes.sum())} != N = {len(point)} points")
        xyz = point[:, :3]
        if not np.all(np.isfinite(xyz)) or not np.all(xyz == np.round(xyz)):
            self._fail(entry, "point coordinates are not integer voxel indices")
        event = Event(coords=xyz.astype(np.int64), energy=point[:, 3].astype(np.float32),
                      semantic=np.repeat(cluster[:, 4], sizes), instance=np.repeat(cluster[:, 2], sizes),
                      spatial_size=self.spatial_size, labels=self.labels, source=(self.path, entry))
        if order is not None:
            order = np.asarray(order, dtype=np.int64)
            if len(order) != len(point) or not np.array_equal(np.sort(order), np.arange(len(point))):
                self._fail(entry, f"{ORDER} is not a permutation of the {len(point)} points")
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            event = event.select(inverse)
        return merge_duplicate_voxels(event.validate())


def read_pilarnet_m(path) -> list[Event]:
    """All events of a PILArNet-M HDF5 file (layout detected; label convention from the attribute)."""
    reader = PilarnetMReader(path)
    return reader.read_range(0, len(reader))


def _encode(event: Event, layout: str):
    """Flat (point, cluster, cluster_extra, order) arrays of one event in the given layout."""
    cw, ew = LAYOUTS[layout]
    keys = np.stack([event.instance, event.semantic], axis=1)
    pairs, row = np.unique(keys, axis=0, return_inverse=True)  # rows sorted by (instance, semantic)
    row = row.reshape(-1)
    order = np.argsort(row, kind="stable")
    sizes = np.bincount(row, minlength=len(pairs))
    assigned = pairs[:, 0] >= 0
    cluster = np.full((len(pairs), cw), -1, dtype=np.int64)
    cluster[:, 0] = sizes
    cluster[:, 1] = np.where(assigned, np.arange(len(pairs)), -1)  # fragment id
    cluster[:, 2] = pairs[:, 0]  # group id = instance
    cluster[:, 4] = pairs[:, 1]  # semantic
    point = np.zeros((len(event), POINT_COLUMNS), dtype=np.float32)
    point[:, :3] = event.coords[order]
    point[:, 3] = point[:, 4] = event.energy[order]  # value and energy (MeV); time, electrons, dx unknown: 0
    extra = np.zeros((len(pairs), ew), dtype=np.float32) if ew else None
    return point.ravel(), cluster.ravel(), None if extra is None else extra.ravel(), order.astype(np.int64)


def write_pilarnet_m(events: list[Event], path, layout: str = "v2") -> Path:
    """Write events as a PILArNet-M HDF5 file (atomic: temporary name, then rename). Returns the path.

    All events must share spatial_size and label convention (recorded as root attributes).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    path = Path(path)
    sizes = {e.spatial_size for e in events} or {DEFAULT_SPATIAL_SIZE}
    conventions = {tuple(e.labels) for e in events} or {PILARNET_M}
    if len(sizes) != 1 or len(conventions) != 1:
        raise ValueError(f"events mix grids {sizes} or label conventions {conventions}")
    for e in events:
        e.validate()
    encoded = [_encode(e, layout) for e in events]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["label_convention"] = convention_name(conventions.pop())
            f.attrs["spatial_size"] = int(sizes.pop())
            f.attrs["layout"] = layout
            f.attrs["writer"] = "spice"
            columns = [("point", np.float32, 0), ("cluster", np.int64, 1), (ORDER, np.int64, 3)]
            if LAYOUTS[layout][1]:
                columns.append(("cluster_extra", np.float32, 2))
            for name, dtype, j in columns:
                ds = f.create_dataset(name, (len(events),), dtype=h5py.vlen_dtype(dtype))
                for i, enc in enumerate(encoded):
                    ds[i] = enc[j]
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = ["read_pilarnet_m", "write_pilarnet_m", "merge_duplicate_voxels", "PilarnetMReader", "LAYOUTS",
           "CONVENTIONS", "PRIORITY"]
