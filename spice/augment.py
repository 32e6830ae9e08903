"""Training-time augmentation by the detector's symmetries: the 48 rotations and reflections of the
cube (axis permutations times sign flips), then a translation inside the L^3 grid.

A LArTPC image has no preferred orientation for the clustering task (the drift direction is not
treated specially by the voxelised data), so every symmetry of the cube maps a valid event onto a
valid event with the same labels. Voxel order and labels are kept; only coordinates change.
At inference the same symmetries can average the network's outputs (spice.evaluate, `symmetries`):
`unsymmetry_points` maps an embedding predicted on a transformed event back to the event's frame.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np
import torch

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


def unsymmetry_points(points: torch.Tensor, k: int, spatial_size: int, half: float) -> torch.Tensor:
    """The inverse of `symmetry` k, extended from voxels to points: (N,3) points in normalised coordinates
    x̂ = (x − half)/half (SPICE.normalized_coords, half = model grid / 2) of the image under symmetry k
    of an L³ event (L = spatial_size) -> the same points in the event's own frame. Used to average an
    embedding (N,3) over symmetries."""
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"cube symmetry index must be in [0, 48), got {k}")
    out = points.clone()
    shift = (spatial_size - 1 - 2 * half) / half  # x -> L-1-x in normalised coordinates: x̂ -> shift − x̂
    for axis in range(3):
        if (k % 8) >> axis & 1:
            out[:, axis] = shift - out[:, axis]
    original = torch.empty_like(out)
    original[:, list(PERMUTATIONS[k // 8])] = out
    return original
