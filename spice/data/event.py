"""The two containers every other module speaks: one `Event`, and a collated sparse `Batch`.

Units: coordinates are integer voxel indices in [0, spatial_size) (PILArNet voxels are 0.3 cm),
energies are MeV. Instance −1 means "no particle" (unlabelled deposits).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Semantic label conventions. Never mix them: an Event carries the one it uses in `labels`.
PILARNET_FIVETYPES: tuple[str, ...] = ("HIP", "MIP", "Shower", "Delta", "Michel")  # 2020 larcv files
PILARNET_M: tuple[str, ...] = ("shower", "track", "Michel", "delta", "low energy")  # 2025 HDF5 files

VOXEL_SIZE_CM = 0.3


class DataError(ValueError):
    """Malformed input: names the file, the entry (event index, or None for the whole file) and the reason."""

    def __init__(self, path, entry: int | None, reason: str):
        self.path, self.entry, self.reason = str(path), entry, reason
        where = f"{self.path}" if entry is None else f"{self.path}, entry {entry}"
        super().__init__(f"{where}: {reason}")


@dataclass
class Event:
    """One LArTPC event: N active voxels.

    coords (N,3) int64 voxel indices (x, y, z); energy (N,) float32 MeV; semantic (N,) int64 index
    into `labels`; instance (N,) int64 particle id (−1 = none); spatial_size L of the L³ grid;
    source = (file, entry) it was read from ("", -1 for events made in memory).
    """

    coords: np.ndarray
    energy: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    spatial_size: int
    labels: tuple[str, ...] = PILARNET_FIVETYPES
    source: tuple[str, int] = ("", -1)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def validate(self) -> "Event":
        """Check shapes, finiteness, grid bounds and label range; raise DataError naming the source."""
        path, entry = self.source
        n = self.coords.shape[0] if self.coords.ndim == 2 else -1

        def fail(reason: str):
            raise DataError(path or "<memory>", entry if entry >= 0 else None, reason)

        if self.coords.ndim != 2 or self.coords.shape[1] != 3:
            fail(f"coordinates must have shape (N, 3), got {self.coords.shape}")
        for name in ("energy", "semantic", "instance"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                fail(f"{name} must have shape ({n},), got {arr.shape}")
        if not np.all(np.isfinite(self.energy)):
            bad = int(np.count_nonzero(~np.isfinite(self.energy)))
            fail(f"{bad} voxel energies are NaN or infinite")
        if n and (self.coords.min() < 0 or self.coords.max() >= self.spatial_size):
            fail(f"coordinates outside the {self.spatial_size}^3 grid "
                 f"(range {int(self.coords.min())}..{int(self.coords.max())})")
        if n and (self.semantic.min() < 0 or self.semantic.max() >= len(self.labels)):
            unknown = sorted(set(np.unique(self.semantic).tolist()) - set(range(len(self.labels))))
            fail(f"unknown semantic labels {unknown} (convention {self.labels})")
        return self

    def select(self, mask: np.ndarray) -> "Event":
        """The sub-event of the voxels where `mask` is true (same grid, labels and source)."""
        return Event(self.coords[mask], self.energy[mask], self.semantic[mask], self.instance[mask],
                     self.spatial_size, self.labels, self.source)

    def equals(self, other: "Event") -> bool:
        """Exact equality of every array and attribute (source excluded)."""
        return (self.spatial_size == other.spatial_size and tuple(self.labels) == tuple(other.labels)
                and all(np.array_equal(getattr(self, k), getattr(other, k))
                        for k in ("coords", "energy", "semantic", "instance")))


@dataclass
class Batch:
    """Events concatenated into one sparse tensor, the input of every model call.

    coords (M,4) int64 [batch index, x, y, z]; energy (M,) float32 MeV; semantic, instance (M,)
    int64; offsets (B+1,) int64 so event b owns rows offsets[b]:offsets[b+1].
    """

    coords: torch.Tensor
    energy: torch.Tensor
    semantic: torch.Tensor
    instance: torch.Tensor
    offsets: torch.Tensor
    spatial_size: int
    labels: tuple[str, ...] = PILARNET_FIVETYPES
    sources: list = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def batch_index(self) -> torch.Tensor:
        """(M,) int64 event index of each voxel (the first coordinate column)."""
        return self.coords[:, 0]

    def to(self, device) -> "Batch":
        return Batch(self.coords.to(device), self.energy.to(device), self.semantic.to(device),
                     self.instance.to(device), self.offsets.to(device), self.spatial_size,
                     self.labels, self.sources)


def collate(events: list[Event]) -> Batch:
    """Concatenate events into a Batch. All events must share spatial_size and label convention."""
    if not events:
        raise ValueError("collate needs at least one event")
    sizes = {e.spatial_size for e in events}
    conventions = {tuple(e.labels) for e in events}
    if len(sizes) != 1 or len(conventions) != 1:
        raise ValueError(f"cannot batch events with different grids {sizes} or label conventions {conventions}")
    counts = [len(e) for e in events]
    batch_col = np.repeat(np.arange(len(events), dtype=np.int64), counts)
    coords = np.concatenate([e.coords for e in events]).astype(np.int64, copy=False)
    return Batch(
        coords=torch.from_numpy(np.concatenate([batch_col[:, None], coords], axis=1)),
        energy=torch.from_numpy(np.concatenate([e.energy for e in events]).astype(np.float32, copy=False)),
        semantic=torch.from_numpy(np.concatenate([e.semantic for e in events]).astype(np.int64, copy=False)),
        instance=torch.from_numpy(np.concatenate([e.instance for e in events]).astype(np.int64, copy=False)),
        offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)),
        spatial_size=sizes.pop(),
        labels=conventions.pop(),
        sources=[e.source for e in events],
    )
