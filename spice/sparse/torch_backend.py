"""Pure-PyTorch sparse convolutions (CPU and CUDA): gathered rows times the whole kernel in one GEMM.

Each convolution is one autograd Function driven by a `ConvMap` (kernel_map.py), built once per
coordinate set and cached in the tensor's context (a `MapCache`), keyed by (stride, kind):
  * Gather route: rows of the (zero-padded) input are gathered into an (n, K·Cin) block, one row per
    output site with all K neighbours side by side, and multiplied by W viewed as (K·Cin, Cout);
  * Pick route: one GEMM src (n, Cin) × W viewed as (Cin, K·Cout), then each output row picks its
    (site, offset) row of that product.
The input gradient takes the other route of the same map, and the weight gradient is one GEMM over the
gathered block. A submanifold layer's map is its own mirror, so its backward gathers the output gradient
once for both gradients (`mirrored_grads`) instead of once for each. Gathers are done in row chunks
(`chunk_rows`, `CHUNK_BYTES`), so the gathered block's memory stays bounded whatever the number of sites (it would be n·27·Cin at once).

A Gather multiplies every table entry, present or not: 27 / (mean neighbours) times the useful work of
a submanifold layer (1.7× at full resolution, 2.8× two levels down); a Pick multiplies every input row
by all K offsets (8 / (mean children) times the useful work of a 2^3 layer). Where few entries hold an
input and the layer is not small, the same map runs as per-offset pairs instead (`use_pairs`, thresholds
measured by benchmarks/bench_routes.py): one GEMM per offset on its rows only. A Gather's products are
added into the output rows of their offset (an offset present on most rows multiplies its whole table
column instead and adds with addmm, which is cheaper than the scatter: `column_fill`); each output row
gets at most one addition per offset, in offset order, so the summation order is the same on every run,
on CPU and CUDA, as with the table. A Pick's products are only picked (each output row has one).

On the CPU (cpu_fused.fits: float32 or float64, the kernels built; a Pick's weights in cache),
every route runs instead in compiled fused kernels (cpu_fused.py, cpu_kernels.cpp) over the map's pairs:
blocks of an offset's pairs (and each offset's weight gradient) summed in registers, with no gathered
block, no scatter and no per-offset GEMM: the demo network's forward+backward ×5.2 faster than the landed
torch routes, the paper network's ×4.3 faster than MinkowskiEngine at batch 8
(benchmarks/results/bench_sparse_offsets.txt).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import cpu_fused
from .kernel_map import ConvMap, Gather, MapCache, Pick, SiteIndex, downsample_map, make_cache, \
    submanifold_map, transposed, upsample_map
from .tensor import SparseTensor

NAME = "torch"
# Gathered block per chunk. CPU: 32 MiB (a few chunks per layer; measured against 1-4 MiB blocks that fit
# L2, which lose on a shared machine, where every small parallel region waits for a busy core). CUDA: a bound
# on the extra memory of a layer, few launches.
CHUNK_BYTES = {"cpu": 32 << 20, "cuda": 256 << 20}


def chunk_rows(width: int, dtype: torch.dtype, device: torch.device) -> int:
    """Rows of an (n, width) gathered block that fit the device's chunk budget (at least 64)."""
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cuda"])
    return max(64, budget // (width * torch.empty((), dtype=dtype).element_size()))


# Per-offset pairs replace a Gather table when (fill = pairs / table entries) < PAIRS_FILL[device] and the
# useful work pairs·Cin·Cout reaches PAIRS_MIN_WORK[device] multiply-adds (narrow layers, and layers with
# Cin·Cout >= PAIRS_WIDE). Below that one GEMM beats one per offset. CPU values measured with
# benchmarks/bench_routes.py at 1 and 2 threads (benchmarks/results/bench_routes_cpu_{1,2}t.txt); no
# measured map had a fill above 0.58. CUDA keeps the table: on an H200 one GEMM over the table beat
# per-offset pairs in all 80 layer cases, by ×1.4–5.6 (benchmarks/results/bench_routes_cuda.txt).
PAIRS_FILL = {"cpu": 0.7, "cuda": 0.0}
PAIRS_MIN_WORK = {"cpu": (20_000_000, 4_000_000), "cuda": (0, 0)}
PAIRS_WIDE = 64 * 64
# Inside pairs_mm, an offset with pairs on a share f of the output rows runs as its whole table column
# (gather every row, zeros where absent, one addmm) when f >= Cin / (Cin + COLUMN_GAIN): the column wastes
# (1 - f) of its gather and GEMM, pairs pay a scatter (index_add_) of f·n rows instead. CPU value from
# timing index_add_, index_select and mm on 53k rows at width 32, 2 threads (a scattered row costs about
# 1.5 rows of a 32×32 GEMM, i.e. 45 / Cin of a Cin-wide GEMM row); benchmarks/bench_routes.py checks the
# resulting per-layer choice. CUDA: no columns, since it never runs pairs.
COLUMN_GAIN = {"cpu": 45.0, "cuda": 0.0}


def use_pairs(route: Gather | Pick, n_src: int, c_in: int, c_out: int, device: torch.device) -> bool:
    """Whether `route` runs as per-offset pairs for a (Cin, Cout) layer on `device` (see PAIRS_FILL)."""
    limit = PAIRS_FILL.get(device.type, PAIRS_FILL["cuda"])
    if limit <= 0:
        return False
    fill = route.fill(n_src)
    if fill >= limit:
        return False
    narrow, wide = PAIRS_MIN_WORK.get(device.type, PAIRS_MIN_WORK["cuda"])
    return fill * route.entries(n_src) * c_in * c_out >= (wide if c_in * c_out >= PAIRS_WIDE else narrow)


def column_fill(c_in: int, device: torch.device) -> float:
    """The share of output rows above which one offset of pairs_mm runs as a whole table column (see COLUMN_GAIN)."""
    gain = COLUMN_GAIN.get(device.type, COLUMN_GAIN["cuda"])
    return c_in / (c_in + gain) if gain > 0 else 2.0


def pairs_mm(src: torch.Tensor, route: Gather, weight: torch.Tensor) -> torch.Tensor:
    """gather_mm by offsets: out[rows_k] += src[inputs_k] @ weight[k] for each offset k in order;
    src (n_src, C), weight [K, C, C'] -> (n_out, C'). An offset whose rows are most of the output
    (`column_fill`) multiplies its whole table column instead (absent rows read a zero row), which
    adds straight into `out` (addmm) rather than through a scatter (index_add_)."""
    n_out = route.table.shape[0]
    out = src.new_zeros(n_out, weight.shape[2])
    dense, padded = column_fill(src.shape[1], src.device) * n_out, None
    for k, rows, inputs in route.by_offset(src.shape[0]):
        if rows is None:
            out.addmm_(src if inputs is None else src.index_select(0, inputs), weight[k])
        elif rows.numel() >= dense:
            padded = _padded(src) if padded is None else padded
            out.addmm_(padded.index_select(0, route.column(k)), weight[k])
        else:
            out.index_add_(0, rows, src.index_select(0, inputs) @ weight[k])
    return out


def pairs_tmm(src: torch.Tensor, route: Gather, other: torch.Tensor) -> torch.Tensor:
    """gather_tmm by offsets: block k = src[inputs_k]ᵀ other[rows_k]; src (n_src, C), other (n_out, C')
    -> (K·C, C') (zero blocks for offsets without pairs)."""
    k_all, c = route.table.shape[1], src.shape[1]
    out = src.new_zeros(k_all, c, other.shape[1])
    for k, rows, inputs in route.by_offset(src.shape[0]):
        picked = src if inputs is None else src.index_select(0, inputs)
        torch.mm(picked.t(), other if rows is None else other.index_select(0, rows), out=out[k])
    return out.view(k_all * c, -1)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """(n, C) -> (n + 1, C) with a zero last row, the target of every "no input" index."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])])


def _gathered_blocks(src: torch.Tensor, table: torch.Tensor):
    """Yield (a, b, block): block = src_pad[table[a:b]] viewed as (b - a, K·C), chunk after chunk of rows,
    in one reused buffer (each block is valid until the next is made)."""
    n, k = table.shape
    src = _padded(src)
    rows = max(1, min(n, chunk_rows(k * src.shape[1], src.dtype, src.device)))
    buf = src.new_empty(rows * k, src.shape[1])
    flat = table.view(-1)
    for a in range(0, n, rows):
        b = min(a + rows, n)
        yield a, b, torch.index_select(src, 0, flat[a * k:b * k], out=buf[:(b - a) * k]).view(b - a, -1)


def gather_mm(src: torch.Tensor, table: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = src_pad[table[i]].flatten() @ weight: src (n_src, C), table (n, K) (n_src = zero row),
    weight (K·C, C') -> (n, C'), in row chunks of one reused gather buffer."""
    out = src.new_empty(table.shape[0], weight.shape[1])
    for a, b, block in _gathered_blocks(src, table):
        torch.mm(block, weight, out=out[a:b])
    return out


def gather_tmm(src: torch.Tensor, table: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Σ_i src_pad[table[i]].flatten()ᵀ other[i]: src (n_src, C), table (n, K), other (n, C') -> (K·C, C'),
    accumulated chunk after chunk in a fixed order."""
    out = src.new_zeros(table.shape[1] * src.shape[1], other.shape[1])
    for a, b, block in _gathered_blocks(src, table):
        out.addmm_(block.t(), other[a:b])
    return out


def pick_mm(src: torch.Tensor, cell: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[i] = src[cell[i] // K] @ weight[cell[i] % K]: src (n_src, C), weight [K, C, C'],
    cell (n,) in [0, n_src·K] (n_src·K: zero row) -> (n, C'). One GEMM, then one row gather."""
    k, c, c_out = weight.shape
    n_src = src.shape[0]
    products = src.new_empty(n_src * k + 1, c_out)
    torch.mm(src, weight.permute(1, 0, 2).reshape(c, k * c_out), out=products[:-1].view(n_src, k * c_out))
    products[-1].zero_()
    return products.index_select(0, cell)


def pick_pairs_mm(src: torch.Tensor, route: Pick, weight: torch.Tensor) -> torch.Tensor:
    """pick_mm on the pairs only: the input rows of all pairs gathered in offset order, one GEMM per
    offset on its slice, then each output row picks its product (or the zero row). Nothing is summed,
    so the result is that of pick_mm; src (n_src, C), weight [K, C, C'] -> (n_out, C')."""
    inputs, counts, position = route.by_offset(src.shape[0])
    picked = src.index_select(0, inputs)
    products = src.new_empty(inputs.numel() + 1, weight.shape[2])
    products[-1].zero_()
    a = 0
    for k, n in enumerate(counts):
        if n:
            torch.mm(picked[a:a + n], weight[k], out=products[a:a + n])
            a += n
    return products.index_select(0, position)


def route_mm(route, src: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Apply one route of a ConvMap: src (n_src, C), weight [K, C, C'] -> (n_out, C')."""
    if isinstance(route, Gather) and cpu_fused.fits(src):
        return cpu_fused.gather_mm(src, route, weight)
    if isinstance(route, Pick) and cpu_fused.fits_pick(src, weight):
        return cpu_fused.pick_mm(src, route, weight)
    pairs = use_pairs(route, src.shape[0], weight.shape[1], weight.shape[2], src.device)
    if isinstance(route, Gather):
        if pairs:
            return pairs_mm(src, route, weight)
        return gather_mm(src, route.table, weight.reshape(-1, weight.shape[2]))
    return pick_pairs_mm(src, route, weight) if pairs else pick_mm(src, route.cell, weight)


def route_tmm(route: Gather, src: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Σ over the route's pairs of src rowᵀ · other row, per offset: (K·C, C') (the weight gradient)."""
    if cpu_fused.fits(src):
        return cpu_fused.gather_tmm(src, route, other).view(-1, other.shape[1])
    if use_pairs(route, src.shape[0], src.shape[1], other.shape[1], src.device):
        return pairs_tmm(src, route, other)
    return gather_tmm(src, route.table, other)


def mirrored_grads(route: Gather, f: torch.Tensor, g: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both gradients of a submanifold 3³ conv (a mirrored map, one Gather both ways) from one gather of g:
    f (n, Cin), g (n, Cout), w [K, Cin, Cout] -> (grad f (n, Cin), grad w [K, Cin, Cout]).

    Row q of the gathered gradient holds g[table[q, k']] for each k', and table[q, k'] = p exactly when
    table[p, K−1−k'] = q, so Σ_q f[q]ᵀ g[table[q, k']] is the weight gradient of offset K−1−k'. The input
    gradient multiplies the same gathered rows by W[K−1−k']ᵀ, so the weight gradient needs no gather of its
    own (route_tmm gathers f and g again). Pairs, columns and table chunks as in route_mm."""
    n, (k_all, c_in, c_out) = g.shape[0], w.shape
    wt = w.transpose(1, 2).flip(0)                       # [K, Cout, Cin]: offset k' uses W[K−1−k']ᵀ
    if cpu_fused.fits(g) and cpu_fused.fits(f):
        return cpu_fused.gather_mm(g, route, wt), cpu_fused.gather_tmm(f, route, g)
    if not use_pairs(route, n, c_out, c_in, g.device):
        grad_f, acc = g.new_empty(n, c_in), f.new_zeros(c_in, k_all * c_out)
        flat = wt.reshape(k_all * c_out, c_in)
        for a, b, block in _gathered_blocks(g, route.table):
            torch.mm(block, flat, out=grad_f[a:b])
            acc.addmm_(f[a:b].t(), block)
        return grad_f, acc.view(c_in, k_all, c_out).transpose(0, 1).flip(0)
    grad_f, grad_w = g.new_zeros(n, c_in), f.new_zeros(k_all, c_in, c_out)
    dense, padded = column_fill(c_out, g.device) * n, None
    for k, rows, inputs in route.by_offset(n):
        if rows is not None and rows.numel() >= dense:   # the whole column: zeros where absent, f as it is
            padded = _padded(g) if padded is None else padded
            picked, rows = padded.index_select(0, route.column(k)), None
        else:
            picked = g if inputs is None else g.index_select(0, inputs)
        if rows is None:
            grad_f.addmm_(picked, wt[k])
        else:
            grad_f.index_add_(0, rows, picked @ wt[k])
        torch.mm((f if rows is None else f.index_select(0, rows)).t(), picked, out=grad_w[k_all - 1 - k])
    return grad_f, grad_w


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for t's device (e.g. bf16 on CUDA), else t's dtype."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


class SparseConvFunction(torch.autograd.Function):
    """out = conv(feats, weight) along cmap: feats (n_in, Cin), weight [K, Cin, Cout] -> (n_out, Cout).

    Under autocast the GEMMs run in the autocast dtype; the result and the gradients come back in
    the dtypes of feats and weight.
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, cmap: ConvMap) -> torch.Tensor:
        dtype = _compute_dtype(feats)
        with torch.autocast(feats.device.type, enabled=False):   # the GEMMs write into buffers (out=)
            out = route_mm(cmap.forward, feats.to(dtype), weight.to(dtype))
        ctx.save_for_backward(feats, weight)
        ctx.cmap, ctx.dtype = cmap, dtype
        return out.to(feats.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        f, w, g = feats.to(ctx.dtype), weight.to(ctx.dtype), grad_out.to(ctx.dtype).contiguous()
        with torch.autocast(feats.device.type, enabled=False):
            return SparseConvFunction._grads(ctx, feats, weight, f, w, g)

    @staticmethod
    def _grads(ctx, feats, weight, f, w, g):
        cmap: ConvMap = ctx.cmap
        grad_feats = grad_weight = None
        if cmap.mirrored and ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
            grad_feats, grad_weight = mirrored_grads(cmap.forward, f, g, w)
            return grad_feats.to(feats.dtype), grad_weight.to(weight.dtype).contiguous(), None
        if ctx.needs_input_grad[0]:
            wt = w.transpose(1, 2)                       # [K, Cout, Cin]
            grad_feats = route_mm(cmap.backward, g, wt.flip(0) if cmap.mirrored else wt).to(feats.dtype)
        if ctx.needs_input_grad[1]:
            k, c_in, c_out = w.shape
            if isinstance(cmap.forward, Gather):
                grad_weight = route_tmm(cmap.forward, f, g).view(k, c_in, c_out)
            else:                                        # Pick forward: its backward is a Gather over g
                grad_weight = route_tmm(cmap.backward, g, f).view(k, c_out, c_in).transpose(1, 2)
            grad_weight = grad_weight.to(weight.dtype).contiguous()
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
    cmap = cache.get((x.stride, "subm3"), (x.coords,),
                     lambda: submanifold_map(_site_index(cache, x), x.coords, cache.radix))
    return x.with_feats(SparseConvFunction.apply(x.feats, weight, cmap))


def downsample_conv2(x: SparseTensor, weight: torch.Tensor) -> SparseTensor:
    """2^3 stride-2 conv: out[q] = Σ_d in[2q + d] @ W[d] on q = unique floor(c/2) (sorted by b, x, y, z)."""
    cache = _check(x, weight, 8, "downsample_conv2")
    coarse, cmap = cache.get((x.stride, "down2"), (x.coords,), lambda: downsample_map(x.coords, cache.radix))
    return SparseTensor(coarse, SparseConvFunction.apply(x.feats, weight, cmap), x.stride * 2, cache)


def upsample_conv2(x: SparseTensor, weight: torch.Tensor, target: SparseTensor) -> SparseTensor:
    """Transposed 2^3 stride-2 conv onto target's coords/order: out[p] = in[floor(p/2)] @ W[p - 2 floor(p/2)]."""
    if not isinstance(x.context, MapCache):  # size the keys by the finer grid
        x.context = target.context if isinstance(target.context, MapCache) else make_cache(target.coords)
    cache = _check(x, weight, 8, "upsample_conv2")
    if target.stride * 2 != x.stride:
        raise ValueError(f"upsample_conv2: target stride {target.stride} is not half of input stride {x.stride}")

    def build() -> ConvMap:
        down = cache.lookup((target.stride, "down2"), (target.coords,))
        if down is not None and down[0] is x.coords:   # x sits on the sites this target was pooled to
            return transposed(down[1])
        return upsample_map(_site_index(cache, x), target.coords, cache.radix)

    cmap = cache.get((target.stride, "up2"), (x.coords, target.coords), build)
    return SparseTensor(target.coords, SparseConvFunction.apply(x.feats, weight, cmap), target.stride, cache)
