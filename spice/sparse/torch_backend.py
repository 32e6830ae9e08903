"""Pure-PyTorch sparse convolutions (CPU and CUDA): gather -> matmul -> index_add per kernel offset.

Each convolution is one autograd Function with an explicit backward (gradients of features and
weight), driven by a `KernelMap` that is built once per coordinate set and cached in the tensor's
context (a `MapCache`), keyed by (stride, kind). On CPU the results and gradients are bit-identical
from run to run (index_add_ accumulates in a fixed order); on CUDA index_add_ uses atomics.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .kernel_map import KernelMap, MapCache, SiteIndex, downsample_map, make_cache, submanifold_map, upsample_map
from .tensor import SparseTensor

NAME = "torch"


def _apply_offsets(rows_feats: torch.Tensor, weight: torch.Tensor, counts: list[int], transpose: bool) -> torch.Tensor:
    """Row block k of `rows_feats` (P, C) times W[k] (or W[k]^T) -> (P, C')."""
    c_out = weight.shape[1] if transpose else weight.shape[2]
    out = rows_feats.new_empty(rows_feats.shape[0], c_out)
    start = 0
    for k, n in enumerate(counts):
        if n:
            w = weight[k].t() if transpose else weight[k]
            torch.mm(rows_feats[start:start + n], w, out=out[start:start + n])
            start += n
    return out


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for t's device (e.g. bf16 on CUDA), else t's dtype."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


class SparseConvFunction(torch.autograd.Function):
    """out[o] = Σ_k Σ_{(i,o) in map_k} feats[i] @ W[k]; feats (M, Cin), weight (K, Cin, Cout) -> (n_out, Cout).

    Under autocast the matmuls run in the autocast dtype and are summed in feats' dtype; the
    gradients come back in the dtypes of feats and weight.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        dtype = _compute_dtype(feats)
        f, w = feats.to(dtype), weight.to(dtype)
        if kmap.identity >= 0:
            out = (f @ w[kmap.identity]).to(feats.dtype)
        else:
            out = feats.new_zeros(kmap.n_out, weight.shape[2])
        if kmap.in_rows.numel():
            products = _apply_offsets(f.index_select(0, kmap.in_rows), w, kmap.counts, transpose=False)
            out.index_add_(0, kmap.out_rows, products.to(feats.dtype))
        ctx.save_for_backward(feats, weight)
        ctx.kmap, ctx.dtype = kmap, dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        f, w, g = feats.to(ctx.dtype), weight.to(ctx.dtype), grad_out.to(ctx.dtype).contiguous()
        has_pairs = kmap.in_rows.numel() > 0
        grad_rows = g.index_select(0, kmap.out_rows) if has_pairs else None
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            if kmap.identity >= 0:
                grad_feats = (g @ w[kmap.identity].t()).to(feats.dtype)
            else:
                grad_feats = torch.zeros_like(feats)
            if has_pairs:
                products = _apply_offsets(grad_rows, w, kmap.counts, transpose=True)
                grad_feats.index_add_(0, kmap.in_rows, products.to(feats.dtype))
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(w)
            if kmap.identity >= 0:
                torch.mm(f.t(), g, out=grad_weight[kmap.identity])
            if has_pairs:
                rows = f.index_select(0, kmap.in_rows)
                start = 0
                for k, n in enumerate(kmap.counts):
                    if n:
                        torch.mm(rows[start:start + n].t(), grad_rows[start:start + n], out=grad_weight[k])
                        start += n
            grad_weight = grad_weight.to(weight.dtype)
        return grad_feats, grad_weight, None


def _check(x: SparseTensor, weight: torch.Tensor, kernel: int, what: str) -> MapCache:
    if weight.ndim != 3 or weight.shape[0] != kernel or weight.shape[1] != x.feats.shape[1]:
        raise ValueError(f"{what}: weight must be [{kernel}, {x.feats.shape[1]}, Cout], got {tuple(weight.shape)}")
    if not isinstance(x.context, MapCache):
        x.context = make_cache(x.coords)
    return x.context


def _site_index(cache: MapCache, x: SparseTensor) -> SiteIndex:
    return cache.get((x.stride, "index"), (x.coords,), lambda: SiteIndex.build(x.coords, cache.radix))


def make_input(coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
    """Input tensor at stride 1 on coords (M,4) int64 [b,x,y,z], feats (M,C); keeps the row order."""
    cache = make_cache(coords)
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"features must have shape ({coords.shape[0]}, C), got {tuple(feats.shape)}")
    if coords.device != feats.device:
        raise ValueError(f"coordinates on {coords.device} but features on {feats.device}")
    return SparseTensor(coords, feats, 1, cache)


def submanifold_conv3(x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
    """3^3 submanifold conv: out[p] = Σ_k in[p + off_k] @ W[k]; weight [27, Cin, Cout]; same coords/order as x."""
    cache = _check(x, weight, 27, "submanifold_conv3")
    index = _site_index(cache, x)
    kmap = cache.get((x.stride, "subm3"), (x.coords,), lambda: submanifold_map(index, x.coords, cache.radix))
    return x.with_feats(SparseConvFunction.apply(x.feats, weight, kmap))


def downsample_conv2(x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
    """2^3 stride-2 conv: out[q] = Σ_d in[2q + d] @ W[d] on q = unique floor(c/2) (sorted by b, x, y, z)."""
    cache = _check(x, weight, 8, "downsample_conv2")
    coarse, kmap = cache.get((x.stride, "down2"), (x.coords,), lambda: downsample_map(x.coords, cache.radix))
    return SparseTensor(coarse, SparseConvFunction.apply(x.feats, weight, kmap), x.stride * 2, cache)


def upsample_conv2(x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
    """Transposed 2^3 stride-2 conv onto target's coords/order: out[p] = in[floor(p/2)] @ W[p - 2 floor(p/2)]."""
    if not isinstance(x.context, MapCache):  # size the keys by the finer grid
        x.context = target.context if isinstance(target.context, MapCache) else make_cache(target.coords)
    cache = _check(x, weight, 8, "upsample_conv2")
    if target.stride * 2 != x.stride:
        raise ValueError(f"upsample_conv2: target stride {target.stride} is not half of input stride {x.stride}")
    index = _site_index(cache, x)
    kmap = cache.get((target.stride, "up2"), (x.coords, target.coords),
                     lambda: upsample_map(index, target.coords, cache.radix))
    return SparseTensor(target.coords, SparseConvFunction.apply(x.feats, weight, kmap), target.stride, cache)
