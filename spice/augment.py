"""Training-time augmentation by the detector's symmetries: the 48 rotations and reflections of the
cube (axis permutations times sign flips), then a translation inside the L^3 grid.

A LArTPC image has no preferred orientation for the clustering task (the drift direction is not
treated specially by the voxelised data), so every symmetry of the cube maps a valid event onto a
valid event with the same labels. Voxel order and labels are kept; only coordinates change.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np

from spice.data.event import Event

PERMUTATIONS = tuple(permutations(range(3)))  # 6 axis orders
N_SYMMETRIES = 48                             # 6 permutations x 8 sign patterns


def symmetry(coords: np.ndarray, k: int, spatial_size: int) -> np.ndarray:
    """(N,3) int voxel coords -> the image under cube symmetry k in [0, 48): axes permuted by
    PERMUTATIONS[k // 8], then axis a reflected (x -> L-1-x) where bit a of k % 8 is set."""
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"cube symmetry index must be in [0, 48), got {k}")
    out = coords[:, list(PERMUTATIONS[k // 8])].copy()
    for axis in range(3):
        if (k % 8) >> axis & 1:
            out[:, axis] = spatial_size - 1 - out[:, axis]
    return out


def augment_event(event: Event, rng: np.random.Generator, translate: bool = True) -> Event:
    """A random cube symmetry of `event`, then (with `translate`) a random shift that keeps every voxel
    inside the grid (uniform over the free room along each axis). Energies and labels are unchanged."""
    L = event.spatial_size
    coords = symmetry(event.coords, int(rng.integers(N_SYMMETRIES)), L)
    if translate and len(coords):
        lo, hi = coords.min(0), coords.max(0)
        coords = coords + rng.integers(-lo, L - hi)  # shift in [-lo, L-1-hi] per axis
    return Event(coords.astype(np.int64), event.energy, event.semantic, event.instance, L, event.labels,
                 event.source)
