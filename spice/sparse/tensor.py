"""The backend-neutral sparse tensor: active sites (batch index first) and their features.

`coords` are integer voxel indices on the grid of this tensor's `stride`: a tensor at stride 2**i
holds coordinates floor(c / 2**i) of the input grid. `context` is backend state shared by every
tensor of one forward pass (the kernel-map cache of the torch backend, the coordinate manager of
MinkowskiEngine); layers that act on features only pass it along untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SparseTensor:
    """coords (M,4) int64 [b, x, y, z]; feats (M,C) float; stride: int (1, 2, 4, ...); context: backend state."""

    coords: torch.Tensor
    feats: torch.Tensor
    stride: int = 1
    context: Any = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def channels(self) -> int:
        return int(self.feats.shape[1])

    def with_feats(self, feats: torch.Tensor) -> "SparseTensor":
        """The same sites (coords, stride, context) carrying new features (M, C')."""
        if feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"features have {feats.shape[0]} rows, the tensor has {self.coords.shape[0]} sites")
        return SparseTensor(self.coords, feats, self.stride, self.context)


def cat(tensors: list[SparseTensor]) -> SparseTensor:
    """Concatenate features (along channels) of tensors on the same sites in the same row order."""
    first = tensors[0]
    for t in tensors[1:]:
        same = t.coords is first.coords or (t.coords.shape == first.coords.shape and torch.equal(t.coords, first.coords))
        if t.stride != first.stride or not same:
            raise ValueError("cat: sparse tensors must share coordinates, row order and stride")
    return first.with_feats(torch.cat([t.feats for t in tensors], dim=1))
