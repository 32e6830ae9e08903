"""`EventDataset`: a lazy torch Dataset over PILArNet files of either format.

Construction reads metadata only (entry counts, and per-event voxel counts when `min_voxels` > 0:
for HDF5 the sum of the small `cluster` sizes, for ROOT the voxel-id branch of sparse3d_data).
`min_voxels` therefore filters on the stored voxel count, before `energy_threshold` is applied at
read time; an event may end with fewer voxels than `min_voxels` after the threshold.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from spice.data.event import DataError, Event
from spice.data.larcv import LarcvReader
from spice.data.pilarnet_m import PilarnetMReader

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def open_reader(path):
    """A LarcvReader or PilarnetMReader chosen by the file's magic bytes (extension is not trusted)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(path, None, "file does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"root":
        return LarcvReader(path)
    if head == HDF5_MAGIC or path.endswith((".h5", ".hdf5")):
        return PilarnetMReader(path)  # also handles HDF5 files with a user block (signature further in)
    raise DataError(path, None, f"neither a ROOT nor an HDF5 file (magic {head!r})")


class EventDataset(Dataset):
    """Events of one or more files, indexable lazily: `len(ds)`, `ds[i] -> Event`.

    energy_threshold: voxels with energy < threshold (MeV) are dropped at read time.
    min_voxels: events whose stored voxel count is below it are left out of the index.
    """

    def __init__(self, paths, energy_threshold: float = 0.0, min_voxels: int = 0):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [str(Path(p)) for p in paths]
        if not self.paths:
            raise ValueError("EventDataset needs at least one file")
        self.energy_threshold, self.min_voxels = float(energy_threshold), int(min_voxels)
        self.readers = [open_reader(p) for p in self.paths]
        files, entries = [], []
        for k, reader in enumerate(self.readers):
            keep = np.arange(len(reader))
            if self.min_voxels > 0:
                keep = keep[reader.counts() >= self.min_voxels]
            files.append(np.full(len(keep), k, dtype=np.int64))
            entries.append(keep.astype(np.int64))
        self.index = np.stack([np.concatenate(files), np.concatenate(entries)], axis=1)  # (n, 2) [file, entry]

    def __len__(self) -> int:
        return len(self.index)

    def source(self, i: int) -> tuple[str, int]:
        k, entry = self.index[i]
        return self.paths[k], int(entry)

    def __getitem__(self, i: int) -> Event:
        if not -len(self) <= i < len(self):
            raise IndexError(f"event {i} outside a dataset of {len(self)}")
        k, entry = self.index[i]
        event = self.readers[k].read(int(entry))
        if self.energy_threshold > 0:
            event = event.select(event.energy >= self.energy_threshold)
        return event
