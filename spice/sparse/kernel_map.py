"""Kernel maps of the torch backend: which input row feeds each output row through which kernel offset.

Sites are found by packing [b, x, y, z] into one int64 key (b most significant) and binary search
(`torch.searchsorted`) in the sorted keys, so everything runs on CPU or CUDA without Python loops
over voxels. Offsets are ordered x-fastest (docs/CONTRACTS.md): 3^3 k = (dx+1) + 3(dy+1) + 9(dz+1),
2^3 k = dx + 2dy + 4dz.

A convolution is described by two `Route`s, one for each direction, so that in their one-GEMM form
neither the forward pass nor the input gradient scatters (no index_add, no atomics on CUDA):
  * `Gather(table)`: out[i] = Σ_k src[table[i, k]] @ W[k], table (n_out, K), absent = n_src (a zero row);
  * `Pick(cell, K)`: out[i] = (src @ W)[cell[i]] with src @ W laid out (n_src·K, Cout) (row q·K + k is
                     src[q] @ W[k]), absent = n_src·K (a zero row).
Submanifold 3^3: Gather both ways with one table (the neighbour relation is symmetric,
q = p + off_k <=> p = q + off_{26−k}, so the input gradient gathers through the mirrored kernel
W[26 − k]). Down 2^3: forward Gather over the 8 children of each coarse site, backward Pick of each
fine site's (parent, parity). Up 2^3: the same pair swapped.
Both routes can also run offset by offset on their pairs only (`by_offset`), which skips the absent
entries that the one-GEMM form multiplies too (`fill` is the share of them that is present); a Gather
then adds each offset's products into its rows (torch_backend.pairs_mm), at most once per row and
offset, in offset order. `pair_lists` gives a Gather's pairs as compact int32 lists for the CPU's fused
kernels (cpu_kernels.cpp), by offset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

IDENTITY3 = 13  # the centre offset (0, 0, 0) of the 3^3 kernel


@dataclass
class PairLists:
    """The present entries (i, k, j) of a Gather table (j = table[i, k] < n_src), int32, by offset:
    `k_ptr` (K + 1,), `k_i`, `k_j` (P,): the pairs of offset k, rows ascending."""

    k_ptr: torch.Tensor
    k_i: torch.Tensor
    k_j: torch.Tensor

    @staticmethod
    def build(table: torch.Tensor, n_src: int) -> "PairLists":
        present = table < n_src
        if int(present.sum()) >= 2 ** 31 or table.shape[0] >= 2 ** 31:
            raise ValueError(f"a kernel map of {int(present.sum())} pairs is too large for int32 pair lists")
        ki, ii = torch.nonzero(present.t(), as_tuple=True)            # by offset, then row
        starts = torch.cat([present.new_zeros(1, dtype=torch.int64), torch.cumsum(present.sum(0), 0)])
        return PairLists(starts.to(torch.int32), ii.to(torch.int32), table[ii, ki].to(torch.int32))


@dataclass
class Gather:
    """out[i] = Σ_k src[table[i, k]] @ W[k]; table (n_out, K) int64, the value n_src meaning "no input".

    `by_offset(n_src)` gives the same map as per-offset pairs (built once): for each offset k that has
    any input, (k, output rows (n_k,), input rows (n_k,)), either of them None where it is every row in
    order (the centre of a submanifold map, a complete column). `fill(n_src)`: pairs / table entries."""

    table: torch.Tensor
    _by_offset: list | None = field(default=None, repr=False, compare=False)
    _fill: float | None = field(default=None, repr=False, compare=False)
    _columns: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _pair_lists: PairLists | None = field(default=None, repr=False, compare=False)

    def pair_lists(self, n_src: int) -> PairLists:
        """The table's pairs as compact int32 lists by offset (built once)."""
        if self._pair_lists is None:
            self._pair_lists = PairLists.build(self.table, n_src)
        return self._pair_lists

    def by_offset(self, n_src: int) -> list:
        if self._by_offset is None:
            n, out = self.table.shape[0], []
            every = torch.arange(n, device=self.table.device)
            for k in range(self.table.shape[1]):
                column = self.table[:, k]
                rows = torch.nonzero(column < n_src).view(-1)
                if rows.numel() == 0:
                    continue
                src = column[rows]
                complete = rows.numel() == n
                identity = complete and n == n_src and bool(torch.equal(src, every))
                out.append((k, None if complete else rows, None if identity else src))
            self._by_offset = out
        return self._by_offset

    def fill(self, n_src: int) -> float:
        if self._fill is None:
            n = self.table.shape[0]
            used = sum(n if rows is None else rows.numel() for _, rows, _ in self.by_offset(n_src))
            self._fill = used / max(self.table.numel(), 1)
        return self._fill

    def column(self, k: int) -> torch.Tensor:
        """table[:, k] as a contiguous (n_out,) index (the transposed table is built once)."""
        if self._columns is None:
            self._columns = self.table.t().contiguous()
        return self._columns[k]

    def entries(self, n_src: int) -> int:
        """Row products the one-GEMM route computes (table entries, present or not); the pairs are fill·entries."""
        return self.table.numel()


@dataclass
class Pick:
    """out[i] = src[cell[i] // K] @ W[cell[i] % K]; cell (n_out,) int64, the value n_src·K meaning "no input".

    `by_offset(n_src)` gives the same map sorted by offset (built once): (input row of each pair (n,),
    pairs per offset [K], position of each output row in that order (n_out,), n where it has no input).
    `fill(n_src)`: pairs / (n_src·K), the share of the one-GEMM route's products that are used."""

    cell: torch.Tensor
    kernel: int
    _by_offset: tuple | None = field(default=None, repr=False, compare=False)

    def by_offset(self, n_src: int) -> tuple:
        if self._by_offset is None:
            rows = torch.nonzero(self.cell < n_src * self.kernel).view(-1)
            offset = self.cell[rows] % self.kernel
            rows = rows[torch.argsort(offset, stable=True)]                 # output rows, offset by offset
            counts = torch.bincount(offset, minlength=self.kernel).tolist()
            position = torch.full_like(self.cell, rows.numel())
            position[rows] = torch.arange(rows.numel(), device=rows.device)
            self._by_offset = (self.cell[rows] // self.kernel, counts, position)
        return self._by_offset

    def fill(self, n_src: int) -> float:
        return self.by_offset(n_src)[0].numel() / max(n_src * self.kernel, 1)

    def entries(self, n_src: int) -> int:
        return n_src * self.kernel


Route = Gather | Pick


@dataclass
class ConvMap:
    """One convolution with K offsets from n_in to n_out rows: `forward` routes inputs to outputs,
    `backward` output gradients to input gradients; `mirrored`: backward offset k' uses W[K−1−k']."""

    forward: Route
    backward: Route
    n_in: int
    n_out: int
    kernel: int
    mirrored: bool = False

    def pairs(self) -> int:
        """Number of (input, output) pairs that carry work (the useful multiply-adds are pairs·Cin·Cout)."""
        r = self.forward if isinstance(self.forward, Gather) else self.backward
        return int((r.table < (self.n_in if r is self.forward else self.n_out)).sum())


@dataclass
class MapCache:
    """Per-forward-pass state of the torch backend: the key radix and the maps built so far.

    maps[(stride, kind)] = (coordinate tensors it was built from, value); a map is reused only for
    the very same coordinate tensors, so every layer at one level shares one map.
    """

    radix: int
    maps: dict = field(default_factory=dict)

    def lookup(self, key, sources: tuple):
        entry = self.maps.get(key)
        if entry is not None and len(entry[0]) == len(sources) and all(a is b for a, b in zip(entry[0], sources)):
            return entry[1]
        return None

    def get(self, key, sources: tuple, build):
        value = self.lookup(key, sources)
        if value is None:
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


def submanifold_map(index: SiteIndex, coords: torch.Tensor, radix: int) -> ConvMap:
    """3^3 map of a set onto itself: out row p reads the row of p + off_k (absent: m).

    Only the 13 offsets before the centre are searched; the other 13 follow by symmetry
    (q = p + off_k  <=>  p = q + off_{26−k}), and the centre is every row itself.
    """
    m = coords.shape[0]
    off = offsets3(coords.device)[:IDENTITY3]
    shifted = coords.unsqueeze(0).repeat(IDENTITY3, 1, 1)
    shifted[:, :, 1:] += off[:, None, :]
    rows = index.rows(pack(shifted, radix))                              # (13, m), −1 absent
    table = torch.full((27, m), m, dtype=torch.int64, device=coords.device)
    table[:IDENTITY3] = torch.where(rows >= 0, rows, m)
    table[IDENTITY3] = torch.arange(m, device=coords.device)
    k, p = torch.nonzero(rows >= 0, as_tuple=True)
    table[26 - k, rows[k, p]] = p                                        # mirrored offsets
    table = table.t().contiguous()                                       # (m, 27)
    route = Gather(table)  # backward: the gradient of row p gathers the same neighbours, through W[26 − k]
    return ConvMap(route, route, m, m, 27, mirrored=True)


def _cells(parent_rows: torch.Tensor, fine: torch.Tensor, n_coarse: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From the coarse row of each fine site (−1: none) -> (cell (N,) = row·8 + parity or Q·8,
    children (Q, 8) = fine row of each (coarse, parity) or N)."""
    n = fine.shape[0]
    found = parent_rows >= 0
    cell = torch.where(found, parent_rows * 8 + parity2(fine), n_coarse * 8)
    children = torch.full((n_coarse * 8 + 1,), n, dtype=torch.int64, device=fine.device)
    children[cell] = torch.arange(n, device=fine.device)                  # cells are distinct (or the spare slot)
    return cell, children[:-1].view(n_coarse, 8)


def downsample_map(coords: torch.Tensor, radix: int) -> tuple[torch.Tensor, ConvMap]:
    """2^3 stride-2 map: (coarse coords (Q,4) = unique floor(c/2) sorted by key, its ConvMap fine -> coarse)."""
    keys = pack(parent(coords), radix)
    coarse_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    q = int(coarse_keys.numel())
    cell, children = _cells(inverse, coords, q)
    return unpack(coarse_keys, radix), ConvMap(Gather(children), Pick(cell, 8), coords.shape[0], q, 8)


def upsample_map(coarse: SiteIndex, target: torch.Tensor, radix: int) -> ConvMap:
    """Transposed 2^3 map onto `target` (N,4): target row p reads the coarse row of floor(p/2) (none: zero)."""
    q = coarse.sorted_keys.numel()
    cell, children = _cells(coarse.rows(pack(parent(target), radix)), target, q)
    return ConvMap(Pick(cell, 8), Gather(children), q, target.shape[0], 8)


def transposed(down: ConvMap) -> ConvMap:
    """The up map onto the fine set of a down map, from the coarse set it produced (same pairs)."""
    return ConvMap(down.backward, down.forward, down.n_out, down.n_in, down.kernel)
