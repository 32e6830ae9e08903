"""Kernel maps of the torch backend: for every kernel offset k, the (in_row, out_row) pairs it connects.

Sites are found by packing [b, x, y, z] into one int64 key (b most significant) and binary search
(`torch.searchsorted`) in the sorted keys, so everything runs on CPU or CUDA without Python loops
over voxels. Offsets are ordered x-fastest (docs/CONTRACTS.md): 3^3 k = (dx+1) + 3(dy+1) + 9(dz+1),
2^3 k = dx + 2dy + 4dz.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

IDENTITY3 = 13  # the centre offset (0, 0, 0) of the 3^3 kernel


@dataclass
class KernelMap:
    """Pairs of one convolution, grouped by offset: rows in_rows[s_k:s_k+counts[k]] feed out_rows[...] via W[k].

    in_rows, out_rows (P,) int64; counts: pairs per offset (len K); n_out: output rows;
    identity: offset whose map is every row onto itself (done as one dense matmul, not in the pairs), or -1.
    """

    in_rows: torch.Tensor
    out_rows: torch.Tensor
    counts: list[int]
    n_out: int
    identity: int = -1


@dataclass
class MapCache:
    """Per-forward-pass state of the torch backend: the key radix and the maps built so far.

    maps[(stride, kind)] = (coordinate tensors it was built from, value); a map is reused only for
    the very same coordinate tensors, so every layer at one level shares one map.
    """

    radix: int
    maps: dict = field(default_factory=dict)

    def get(self, key, sources: tuple, build):
        entry = self.maps.get(key)
        if entry is not None and len(entry[0]) == len(sources) and all(a is b for a, b in zip(entry[0], sources)):
            return entry[1]
        value = build()
        self.maps[key] = (sources, value)
        return value


def make_cache(coords: torch.Tensor) -> MapCache:
    """A cache whose radix R fits every coordinate (and its ±1 neighbours) of `coords` (M,4) int64."""
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"sparse coordinates must have shape (M, 4) [b, x, y, z], got {tuple(coords.shape)}")
    if coords.dtype != torch.int64:
        raise ValueError(f"sparse coordinates must be int64, got {coords.dtype}")
    if coords.numel() and int(coords.min()) < 0:
        raise ValueError("sparse coordinates and batch indices must be non-negative")
    spatial = int(coords[:, 1:].max()) if coords.numel() else 0
    batches = int(coords[:, 0].max()) + 1 if coords.numel() else 1
    radix = spatial + 3
    if batches * radix ** 3 >= 2 ** 62:
        raise ValueError(f"coordinates up to {spatial} with {batches} events overflow the int64 site keys")
    return MapCache(radix)


def pack(coords: torch.Tensor, radix: int) -> torch.Tensor:
    """(…, 4) int64 [b, x, y, z] -> (…,) int64 keys; x, y, z may be −1 (shifted by one)."""
    b, x, y, z = coords.unbind(-1)
    return ((b * radix + (x + 1)) * radix + (y + 1)) * radix + (z + 1)


def unpack(keys: torch.Tensor, radix: int) -> torch.Tensor:
    """Inverse of `pack`: (M,) keys -> (M, 4) int64 [b, x, y, z]."""
    z = keys % radix - 1
    y = (keys // radix) % radix - 1
    x = (keys // radix ** 2) % radix - 1
    b = keys // radix ** 3
    return torch.stack([b, x, y, z], dim=1)


@dataclass
class SiteIndex:
    """Sorted keys of a coordinate set for lookups: `rows(query_keys)` gives the row of each key or −1."""

    sorted_keys: torch.Tensor
    order: torch.Tensor

    @staticmethod
    def build(coords: torch.Tensor, radix: int) -> "SiteIndex":
        keys = pack(coords, radix)
        sorted_keys, order = torch.sort(keys, stable=True)
        if sorted_keys.numel() > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
            dup = unpack(sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]][:1], radix)[0].tolist()
            raise ValueError(f"duplicate sparse coordinate [b, x, y, z] = {dup}; every site must be unique")
        return SiteIndex(sorted_keys, order)

    def rows(self, query: torch.Tensor) -> torch.Tensor:
        n = self.sorted_keys.numel()
        if n == 0:
            return torch.full_like(query, -1)
        pos = torch.searchsorted(self.sorted_keys, query).clamp_(max=n - 1)
        found = self.sorted_keys[pos] == query
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


def offsets3(device=None) -> torch.Tensor:
    """(27, 3) int64 offsets (dx, dy, dz) in x-fastest order."""
    r = torch.arange(-1, 2, device=device)
    dz, dy, dx = torch.meshgrid(r, r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1), dz.reshape(-1)], dim=1)


def parity2(coords: torch.Tensor) -> torch.Tensor:
    """(M,4) fine coords -> (M,) offset index dx + 2dy + 4dz of each site inside its 2^3 parent cell."""
    d = coords[:, 1:] & 1
    return d[:, 0] + 2 * d[:, 1] + 4 * d[:, 2]


def parent(coords: torch.Tensor) -> torch.Tensor:
    """(M,4) [b, x, y, z] -> [b, floor(x/2), floor(y/2), floor(z/2)] (coordinates are non-negative)."""
    out = coords.clone()
    out[:, 1:] >>= 1
    return out


def _group_by_offset(offset: torch.Tensor, in_rows: torch.Tensor, out_rows: torch.Tensor, n_offsets: int):
    """Stable sort of pairs by offset index; returns (in_rows, out_rows, counts)."""
    order = torch.argsort(offset, stable=True)
    counts = torch.bincount(offset, minlength=n_offsets).tolist()
    return in_rows[order], out_rows[order], counts


def submanifold_map(index: SiteIndex, coords: torch.Tensor, radix: int) -> KernelMap:
    """3^3 map of a set onto itself: out row p reads in row of p + off_k. The centre is the identity."""
    m = coords.shape[0]
    off = offsets3(coords.device)
    off = torch.cat([off[:IDENTITY3], off[IDENTITY3 + 1:]])  # 26 non-centre offsets
    shifted = coords.unsqueeze(0).repeat(off.shape[0], 1, 1)
    shifted[:, :, 1:] += off[:, None, :]
    rows = index.rows(pack(shifted, radix))  # (26, M)
    found = rows >= 0
    in_rows = rows[found]
    out_rows = torch.arange(m, device=coords.device).expand_as(rows)[found]
    counts = found.sum(dim=1).tolist()
    counts.insert(IDENTITY3, 0)
    return KernelMap(in_rows, out_rows, counts, m, identity=IDENTITY3)


def downsample_map(coords: torch.Tensor, radix: int) -> tuple[torch.Tensor, KernelMap]:
    """2^3 stride-2 map: (coarse coords (Q,4) = unique floor(c/2) sorted by key, map fine row -> coarse row)."""
    keys = pack(parent(coords), radix)
    coarse_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    rows = torch.arange(coords.shape[0], device=coords.device)
    in_rows, out_rows, counts = _group_by_offset(parity2(coords), rows, inverse, 8)
    return unpack(coarse_keys, radix), KernelMap(in_rows, out_rows, counts, int(coarse_keys.numel()))


def upsample_map(coarse: SiteIndex, target: torch.Tensor, radix: int) -> KernelMap:
    """Transposed 2^3 map onto `target` (N,4): target row p reads the coarse row of floor(p/2) (none: zero)."""
    rows = coarse.rows(pack(parent(target), radix))
    found = rows >= 0
    out_rows = torch.arange(target.shape[0], device=target.device)[found]
    in_rows, out_rows, counts = _group_by_offset(parity2(target)[found], rows[found], out_rows, 8)
    return KernelMap(in_rows, out_rows, counts, int(target.shape[0]))
