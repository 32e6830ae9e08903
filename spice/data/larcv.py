"""Reader for the original PILArNet larcv2 ROOT files (SPEC §6), lazily per entry or whole.

uproot reads `sparse3d_data` (voxel id + energy, MeV), `sparse3d_fivetypes` (same ids, semantic
label) and the grid meta. It cannot stream `cluster3d_mcst`'s voxel lists (memberwise
vector<VoxelSet>), so we decode those from the raw basket bytes: per entry a 12-byte header
(4 byte-count, 2 version, 2 element version, 4 checksum), then per voxel set `int32 n`,
`n × uint64 id`, `n × float32 value`, all big-endian. The number of sets per entry is the length of
`_voxel_vv._id`. Instance of an image voxel = index of the lowest particle voxel set that holds it.
There is one set per entry of `particle_mcst`, then (normally) one trailing set of deposits tied to
no particle: that set is no particle, so a voxel held only by it, or by no set, gets instance −1.
"""
from __future__ import annotations

import os

import numpy as np
import uproot

from spice.data.event import PILARNET_FIVETYPES, DataError, Event

PRODUCTS = ("sparse3d_data", "sparse3d_fivetypes", "cluster3d_mcst", "particle_mcst")
_TENSOR = "larcv::SparseTensor3D/"
_VOXELS = _TENSOR + "larcv::VoxelSet/_voxel_v/_voxel_v."
_SETS = "larcv::ClusterVoxel3D/larcv::VoxelSetArray/_voxel_vv/_voxel_vv."
_PARTICLES = "larcv::ParticleSet/_part_v/_part_v._id"
_HEADER_BYTES = 12


def _branch(tree, product: str, sub: str):
    return tree[f"{product}_branch/{sub}"]


def decode_voxel_sets(buf: bytes, n_sets: int, path="", entry: int | None = None) -> list[np.ndarray]:
    """Voxel ids (uint64 arrays, one per set) of one `cluster3d_mcst` entry from its raw bytes."""
    mv = memoryview(buf)
    if len(mv) < _HEADER_BYTES:
        raise DataError(path, entry, f"cluster3d_mcst entry has {len(mv)} bytes, fewer than its header")
    count = int.from_bytes(mv[:4], "big") & 0x3FFFFFFF  # top bits flag the byte-count form
    if count + 4 != len(mv):
        raise DataError(path, entry, f"cluster3d_mcst byte count {count + 4} != entry size {len(mv)}")
    pos, sets = _HEADER_BYTES, []
    for k in range(n_sets):
        if pos + 4 > len(mv):
            raise DataError(path, entry, f"cluster3d_mcst entry ends inside voxel set {k} of {n_sets}")
        n = int.from_bytes(mv[pos:pos + 4], "big", signed=True)
        pos += 4
        if n < 0 or pos + 12 * n > len(mv):
            raise DataError(path, entry, f"cluster3d_mcst voxel set {k} claims {n} voxels past the entry end")
        sets.append(np.frombuffer(mv, ">u8", n, pos).astype(np.int64))
        pos += 12 * n  # ids then float32 values (values unused: energies come from sparse3d_data)
    if pos != len(mv):
        raise DataError(path, entry, f"cluster3d_mcst entry has {len(mv) - pos} undecoded bytes after {n_sets} sets")
    return sets


def instance_of(voxel_ids: np.ndarray, sets: list[np.ndarray]) -> np.ndarray:
    """(N,) int64 index of the lowest voxel set containing each image voxel id, −1 where none does."""
    out = np.full(len(voxel_ids), -1, dtype=np.int64)
    if not sets or not len(voxel_ids):
        return out
    ids = np.concatenate(sets)
    owner = np.repeat(np.arange(len(sets), dtype=np.int64), [len(s) for s in sets])
    order = np.lexsort((owner, ids))  # by id, then by set index: first of each id is the lowest set
    ids, owner = ids[order], owner[order]
    first = np.ones(len(ids), bool)
    first[1:] = ids[1:] != ids[:-1]
    ids, owner = ids[first], owner[first]
    pos = np.clip(np.searchsorted(ids, voxel_ids), 0, len(ids) - 1)
    hit = ids[pos] == voxel_ids
    out[hit] = owner[pos[hit]]
    return out


class LarcvReader:
    """Lazy reader of one larcv2 ROOT file: `len`, `counts()`, `read(entry)`, `read_range(a, b)`.

    Opens the file on first use (and again after a fork, for DataLoader workers).
    """

    def __init__(self, path, spatial_size: int | None = None):
        self.path = str(path)
        self._spatial_size = spatial_size
        self._file, self._pid = None, None
        self._check_file()
        self.num_entries = self._num_entries()

    def _fail(self, entry, reason):
        raise DataError(self.path, entry, reason)

    def _check_file(self):
        if not os.path.exists(self.path):
            self._fail(None, "file does not exist")
        with open(self.path, "rb") as f:
            head = f.read(20)
        if head[:4] != b"root":
            self._fail(None, f"not a ROOT file (magic {head[:4]!r}, expected b'root')")
        # ROOT file header: int32 version, int32 fBEGIN, fEND (int32, or int64 when version >= 1000000)
        version = int.from_bytes(head[4:8], "big")
        end = int.from_bytes(head[12:20] if version >= 1000000 else head[12:16], "big")
        size = os.path.getsize(self.path)
        if size < end:
            self._fail(None, f"truncated ROOT file: {size} bytes on disk, its header says {end}")

    def _open(self):
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = uproot.open(self.path)
            except Exception as exc:  # uproot raises several types for a damaged file
                self._fail(None, f"cannot open ROOT file ({type(exc).__name__}: {exc})")
            self._pid = os.getpid()
            missing = [p for p in PRODUCTS if f"{p}_tree" not in self._file]
            if missing:
                self._fail(None, f"missing products {missing} (found {sorted(self._file.keys(cycle=False))})")
        return self._file

    def _tree(self, product):
        return self._open()[f"{product}_tree"]

    def _num_entries(self) -> int:
        counts = {p: self._tree(p).num_entries for p in PRODUCTS}
        if len(set(counts.values())) != 1:
            self._fail(None, f"products have different entry counts {counts}")
        return counts[PRODUCTS[0]]

    def __len__(self) -> int:
        return self.num_entries

    def counts(self) -> np.ndarray:
        """(n_entries,) int64 voxels per entry, from the voxel-id branch of sparse3d_data only."""
        ids = self._array("sparse3d_data", _VOXELS + "_id", 0, self.num_entries)
        return np.array([len(a) for a in ids], dtype=np.int64)

    def _array(self, product, sub, start, stop):
        try:
            return _branch(self._tree(product), product, sub).array(
                library="np", entry_start=start, entry_stop=stop)
        except DataError:
            raise
        except Exception as exc:
            self._fail(None if stop - start != 1 else start,
                       f"cannot read {product}/{sub} ({type(exc).__name__}: {exc})")

    def _grid(self, start, stop) -> np.ndarray:
        """(stop-start,) grid size per entry from the meta, or the constructor's spatial_size."""
        try:
            nums = [self._array("sparse3d_data", _TENSOR + f"_meta._{a}num", start, stop) for a in "xyz"]
        except DataError:
            if self._spatial_size is None:
                raise
            return np.full(stop - start, self._spatial_size, dtype=np.int64)
        nums = np.stack(nums, axis=1).astype(np.int64)
        for i, row in enumerate(nums):
            if len(set(row.tolist())) != 1 or row[0] <= 0:
                self._fail(start + i, f"grid meta {row.tolist()} is not a positive cube")
        return nums[:, 0]

    def _cluster_bytes(self, start, stop) -> list[bytes]:
        """Raw bytes of cluster3d_mcst's voxel-set vector for entries start..stop-1 (basket API)."""
        br = _branch(self._tree("cluster3d_mcst"), "cluster3d_mcst", _SETS + "_voxel_v")
        out = []
        for b in range(br.num_baskets):
            b0, b1 = (int(x) for x in br.basket_entry_start_stop(b))
            if b1 <= start or b0 >= stop:
                continue
            try:
                basket = br.basket(b)
                data, offsets = np.asarray(basket.data), basket.byte_offsets
            except Exception as exc:
                self._fail(max(b0, start), f"cannot read cluster3d_mcst basket {b} ({type(exc).__name__}: {exc})")
            if offsets is None or len(offsets) != b1 - b0 + 1:
                self._fail(max(b0, start), f"cluster3d_mcst basket {b} has no per-entry offsets")
            for e in range(max(b0, start), min(b1, stop)):
                out.append(data[offsets[e - b0]:offsets[e - b0 + 1]].tobytes())
        if len(out) != stop - start:
            self._fail(None, f"cluster3d_mcst baskets cover {len(out)} of entries {start}..{stop - 1}")
        return out

    def read_range(self, start: int, stop: int) -> list[Event]:
        """Events start..stop-1, reading each branch once for the whole range."""
        if not 0 <= start <= stop <= self.num_entries:
            raise IndexError(f"{self.path}: entries {start}..{stop} outside 0..{self.num_entries}")
        ids = self._array("sparse3d_data", _VOXELS + "_id", start, stop)
        energy = self._array("sparse3d_data", _VOXELS + "_value", start, stop)
        sem_ids = self._array("sparse3d_fivetypes", _VOXELS + "_id", start, stop)
        sem = self._array("sparse3d_fivetypes", _VOXELS + "_value", start, stop)
        n_sets = self._array("cluster3d_mcst", _SETS + "_id", start, stop)
        n_particles = self._array("particle_mcst", _PARTICLES, start, stop)
        grids = self._grid(start, stop)
        raw = self._cluster_bytes(start, stop)
        return [self._event(start + i, ids[i], energy[i], sem_ids[i], sem[i], len(n_sets[i]), raw[i], int(grids[i]),
                            len(n_particles[i])) for i in range(stop - start)]

    def read(self, entry: int) -> Event:
        """One event, reading only that entry's baskets."""
        return self.read_range(entry, entry + 1)[0]

    def _event(self, entry, ids, energy, sem_ids, sem, n_sets, raw, grid, n_particles) -> Event:
        """One Event; voxel sets past the first `n_particles` (the trailing set) are no particle."""
        if n_sets not in (n_particles, n_particles + 1):
            self._fail(entry, f"cluster3d_mcst has {n_sets} voxel sets for {n_particles} particle_mcst entries "
                              f"(expected one per particle, plus one trailing set)")
        ids = np.asarray(ids).astype(np.int64)
        if len(energy) != len(ids):
            self._fail(entry, f"sparse3d_data has {len(ids)} ids but {len(energy)} values")
        if len(sem_ids) != len(ids) or not np.array_equal(np.asarray(sem_ids).astype(np.int64), ids):
            self._fail(entry, "sparse3d_fivetypes voxel ids differ from sparse3d_data's (count or order)")
        sem = np.asarray(sem)
        if not np.all(np.isfinite(sem)) or not np.all(sem == np.round(sem)):
            self._fail(entry, "sparse3d_fivetypes holds non-integer labels")
        if len(ids) and ids.max() >= grid ** 3:
            self._fail(entry, f"voxel id {int(ids.max())} outside the {grid}^3 grid")
        coords = np.stack([ids % grid, (ids // grid) % grid, ids // (grid * grid)], axis=1)
        sets = decode_voxel_sets(raw, n_sets, self.path, entry)
        event = Event(coords=coords.astype(np.int64), energy=np.asarray(energy, dtype=np.float32),
                      semantic=sem.astype(np.int64), instance=instance_of(ids, sets[:n_particles]), spatial_size=grid,
                      labels=PILARNET_FIVETYPES, source=(self.path, entry))
        return event.validate()


def read_larcv_root(path, spatial_size: int | None = None) -> list[Event]:
    """All events of a larcv2 ROOT file (labels PILARNET_FIVETYPES; grid from the file's meta,
    else `spatial_size`)."""
    reader = LarcvReader(path, spatial_size)
    return reader.read_range(0, len(reader))


__all__ = ["read_larcv_root", "LarcvReader", "decode_voxel_sets", "instance_of", "PRODUCTS"]
