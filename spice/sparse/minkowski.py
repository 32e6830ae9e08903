"""MinkowskiEngine 0.5.4 backend: the functional API of `spice.sparse` on ME's convolution kernels.

Same weight layout as the torch backend ([K, Cin, Cout], x-fastest offsets) and the same row order:
every tensor keeps OUR rows (input order; downsampled sites sorted by (b, x, y, z)), and each
coordinate set known to ME carries the permutation between ME's rows and ours. ME's own kernel-offset
order is measured once with probe convolutions and the weights are permuted to it, so a checkpoint
moves between backends unchanged. One `ME.CoordinateManager` per forward pass lives in
`SparseTensor.context`. MinkowskiEngine is imported lazily (`make minkowski` builds it).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType

import torch

from .tensor import SparseTensor

NAME = "minkowski"


def _me() -> ModuleType:
    """Import MinkowskiEngine, or fail with the command that installs it."""
    # ME sets OMP_NUM_THREADS=16 (with a warning) on import when unset; keep torch's choice instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    try:
        with warnings.catch_warnings():  # a CPU-only build warns on every import; that is expected here
            warnings.filterwarnings("ignore", message="The MinkowskiEngine was compiled with CPU_ONLY")
            import MinkowskiEngine as ME
    except ImportError as err:
        raise ImportError(
            "the 'minkowski' sparse backend needs MinkowskiEngine 0.5.4, which is not importable "
            f"({err}); run `make minkowski` to build and install it, or use the default backend "
            "(SPICE_SPARSE_BACKEND=torch)") from err
    return ME


@dataclass
class Level:
    """One coordinate set registered with ME. me_feats = feats[to_me]; feats = me_feats[from_me] (None = same order)."""

    key: object                      # ME.CoordinateMapKey
    coords: torch.Tensor             # (M, 4) int64, our rows, at this level's grid (c // stride)
    to_me: torch.Tensor | None
    from_me: torch.Tensor | None


@dataclass
class MEContext:
    """Backend state of one forward pass: ME's coordinate manager and one Level per stride."""

    manager: object                  # ME.CoordinateManager
    levels: dict[int, Level] = field(default_factory=dict)


def _permutations(me_rows_of_ours: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From (M,) ME row of each of our rows, the gathers (to_me, from_me); (None, None) when identical."""
    n = me_rows_of_ours.numel()
    if torch.equal(me_rows_of_ours, torch.arange(n, device=me_rows_of_ours.device)):
        return None, None
    to_me = torch.empty_like(me_rows_of_ours)
    to_me[me_rows_of_ours] = torch.arange(n, device=me_rows_of_ours.device)
    return to_me, me_rows_of_ours


def _gather(feats: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return feats if rows is None else feats.index_select(0, rows)


def _new_manager(device: torch.device):
    ME = _me()
    kind = ME.CoordinateMapType.CUDA if device.type == "cuda" else ME.CoordinateMapType.CPU
    return ME.CoordinateManager(D=3, coordinate_map_type=kind)


def _register(ctx: MEContext, coords: torch.Tensor, stride: int) -> Level:
    """Insert coords (M,4) [b,x,y,z] of grid `stride` into ctx's manager (ME stores them at scale 1)."""
    scaled = coords.clone()
    scaled[:, 1:] *= stride
    string_id = "" if stride not in ctx.levels else f"spice{len(ctx.levels)}"  # a second set at one stride
    key, (unique_map, inverse_map) = ctx.manager.insert_and_map(scaled.int().contiguous(), [stride] * 3, string_id)
    if unique_map.numel() != coords.shape[0]:
        raise ValueError(f"minkowski backend: {coords.shape[0] - unique_map.numel()} duplicate coordinates "
                         f"at stride {stride}; every site must be unique")
    to_me, from_me = _permutations(inverse_map.long().to(coords.device))
    return Level(key, coords, to_me, from_me)


def _level(x: SparseTensor, ctx: MEContext | None = None) -> tuple[MEContext, Level]:
    """The context and Level of x's coordinates; registers them when this context does not know them yet."""
    if ctx is None:
        if not isinstance(x.context, MEContext):
            x.context = MEContext(_new_manager(x.coords.device))
        ctx = x.context
    level = ctx.levels.get(x.stride)
    if level is not None and (level.coords is x.coords or (level.coords.shape == x.coords.shape
                                                            and torch.equal(level.coords, x.coords))):
        return ctx, level
    new = _register(ctx, x.coords, x.stride)
    ctx.levels.setdefault(x.stride, new)
    return ctx, new


def _check(x: SparseTensor, weight: torch.Tensor, kernel: int, what: str) -> None:
    if weight.ndim != 3 or weight.shape[0] != kernel or weight.shape[1] != x.feats.shape[1]:
        raise ValueError(f"{what}: weight must be [{kernel}, {x.feats.shape[1]}, Cout], got {tuple(weight.shape)}")


def _feats(x: SparseTensor, weight: torch.Tensor) -> torch.Tensor:
    """x's features in the weight's dtype (ME has no autocast), contiguous."""
    return x.feats.to(weight.dtype).contiguous()


def _kernel(size: int, stride: int, transpose: bool = False):
    ME = _me()
    return ME.KernelGenerator(kernel_size=size, stride=stride, dilation=1, is_transpose=transpose, dimension=3)


def _conv(feats, weight, size, stride, in_key, out_key, manager, transpose=False):
    """One ME (transposed) convolution on ME-ordered features; weight already in ME's offset order."""
    ME = _me()
    from MinkowskiEngineBackend._C import ConvolutionMode
    fn = ME.MinkowskiConvolutionTransposeFunction if transpose else ME.MinkowskiConvolutionFunction
    return fn.apply(feats, weight, _kernel(size, stride, transpose), ConvolutionMode.DEFAULT,
                    in_key, out_key, manager)


@lru_cache(maxsize=None)
def kernel_orders() -> dict[str, tuple[int, ...]]:
    """ME's kernel-offset order, measured with probe convolutions on CPU.

    Returns for "subm3", "down2", "up2" a tuple `perm` with perm[k_me] = our offset index, so that
    ME's weight is `weight[list(perm)]`. Each probe applies scalar weights W[k_me] = k_me + 1 to a
    single unit feature and reads which k_me reached which site.
    """
    f64 = torch.float64
    orders = {}
    # 3^3 submanifold: unit feature at the centre c of a full 3^3 block; out[p] = W[k] with off_k = c - p.
    block = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(27, 1, dtype=torch.long), block + 5], 1)
    feats = (block == 1).all(1).to(f64)[:, None]
    weight = torch.arange(1, 28, dtype=f64).reshape(27, 1, 1)
    out = submanifold_conv3(make_input(coords, feats), weight, _perm=tuple(range(27))).feats[:, 0]
    perm = [0] * 27
    for p, k_me in zip(block.tolist(), (out.round().long() - 1).tolist()):
        dx, dy, dz = (1 - p[0], 1 - p[1], 1 - p[2])
        perm[k_me] = (dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)
    orders["subm3"] = tuple(perm)
    # 2^3 down: one unit feature at offset d of the block {0,1}^3 per probe; out[0] = W[k_me(d)].
    cube = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(8, 1, dtype=torch.long), cube + 4], 1)
    weight = torch.arange(1, 9, dtype=f64).reshape(8, 1, 1)
    perm = [0] * 8
    for i, d in enumerate(cube.tolist()):
        feats = torch.zeros(8, 1, dtype=f64)
        feats[i] = 1
        k_me = int(downsample_conv2(make_input(coords, feats), weight, _perm=tuple(range(8))).feats[0, 0].round()) - 1
        perm[k_me] = d[0] + 2 * d[1] + 4 * d[2]
    orders["down2"] = tuple(perm)
    # 2^3 up: unit feature on one coarse site; fine site p of its block gets W[k_me(p - 2q)].
    fine = make_input(coords, torch.zeros(8, 1, dtype=f64))
    coarse = downsample_conv2(fine, torch.zeros(8, 1, 1, dtype=f64), _perm=tuple(range(8)))
    out = upsample_conv2(coarse.with_feats(torch.ones(1, 1, dtype=f64)), weight, fine, _perm=tuple(range(8)))
    perm = [0] * 8
    for d, k_me in zip(cube.tolist(), (out.feats[:, 0].round().long() - 1).tolist()):
        perm[k_me] = d[0] + 2 * d[1] + 4 * d[2]
    orders["up2"] = tuple(perm)
    for name, p in orders.items():
        if sorted(p) != list(range(len(p))):
            raise RuntimeError(f"minkowski backend: could not measure ME's {name} kernel order (got {p})")
    return orders


def _me_weight(weight: torch.Tensor, kind: str, perm: tuple[int, ...] | None) -> torch.Tensor:
    perm = kernel_orders()[kind] if perm is None else perm
    if perm == tuple(range(len(perm))):
        return weight.contiguous()
    return weight.index_select(0, torch.tensor(perm, device=weight.device))


def make_input(coords: torch.Tensor, feats: torch.Tensor) -> SparseTensor:
    """Input tensor at stride 1 on coords (M,4) int64 [b,x,y,z], feats (M,C); keeps the row order."""
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise ValueError(f"coordinates must have shape (M, 4) [b, x, y, z], got {tuple(coords.shape)}")
    if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
        raise ValueError(f"features must have shape ({coords.shape[0]}, C), got {tuple(feats.shape)}")
    if coords.device != feats.device:
        raise ValueError(f"coordinates on {coords.device} but features on {feats.device}")
    x = SparseTensor(coords, feats, 1, MEContext(_new_manager(coords.device)))
    _level(x)
    return x


def submanifold_conv3(x: SparseTensor, weight: torch.Tensor, _perm=None) -> SparseTensor:
    """3^3 submanifold conv: out[p] = Σ_k in[p + off_k] @ W[k]; weight [27, Cin, Cout]; same coords/order as x."""
    _check(x, weight, 27, "submanifold_conv3")
    ctx, level = _level(x)
    out = _conv(_gather(_feats(x, weight), level.to_me), _me_weight(weight, "subm3", _perm), 3, 1,
                level.key, level.key, ctx.manager)
    return x.with_feats(_gather(out, level.from_me))


def downsample_conv2(x: SparseTensor, weight: torch.Tensor, _perm=None) -> SparseTensor:
    """2^3 stride-2 conv: out[q] = Σ_d in[2q + d] @ W[d] on q = unique floor(c/2), sorted by (b, x, y, z)."""
    _check(x, weight, 8, "downsample_conv2")
    ctx, level = _level(x)
    stride = x.stride * 2
    out_key = ctx.manager.stride(level.key, [2] * 3)
    me_coords = ctx.manager.get_coordinates(out_key).to(x.coords.device).long()
    coarse = torch.cat([me_coords[:, :1], torch.div(me_coords[:, 1:], stride, rounding_mode="floor")], 1)
    # our order: sorted by (b, x, y, z); coords are non-negative, so a mixed-radix key sorts them.
    radix = int(coarse.max()) + 1 if len(coarse) else 1
    keys = ((coarse[:, 0] * radix + coarse[:, 1]) * radix + coarse[:, 2]) * radix + coarse[:, 3]
    order = torch.argsort(keys)             # our row j <- ME row order[j]
    coarse = coarse[order].contiguous()
    to_me, from_me = _permutations(order)
    out = _conv(_gather(_feats(x, weight), level.to_me), _me_weight(weight, "down2", _perm), 2, 2,
                level.key, out_key, ctx.manager)
    result = SparseTensor(coarse, _gather(out, from_me), stride, ctx)
    if stride not in ctx.levels:
        ctx.levels[stride] = Level(out_key, coarse, to_me, from_me)
    return result


def upsample_conv2(x: SparseTensor, weight: torch.Tensor, target: SparseTensor, _perm=None) -> SparseTensor:
    """Transposed 2^3 stride-2 conv onto target's coords/order: out[p] = in[floor(p/2)] @ W[p - 2 floor(p/2)]."""
    _check(x, weight, 8, "upsample_conv2")
    if target.stride * 2 != x.stride:
        raise ValueError(f"upsample_conv2: target stride {target.stride} is not half of input stride {x.stride}")
    if not isinstance(x.context, MEContext) and isinstance(target.context, MEContext):
        x.context = target.context
    ctx, level_in = _level(x)
    _, level_out = _level(target, ctx)
    out = _conv(_gather(_feats(x, weight), level_in.to_me), _me_weight(weight, "up2", _perm), 2, 2,
                level_in.key, level_out.key, ctx.manager, transpose=True)
    return SparseTensor(target.coords, _gather(out, level_out.from_me), target.stride, ctx)
