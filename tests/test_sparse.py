"""The torch sparse backend against dense torch convolutions on the same random volume (float64)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from dense_reference import dense_weight, densify, read

from spice.sparse import SparseTensor, cat, get_backend
from spice.sparse import cpu_fused, layers
from spice.sparse.kernel_map import SiteIndex, downsample_map, make_cache, offsets3, submanifold_map

tb = get_backend("torch")
D = 6  # dense grid side (even, so stride-2 cells tile it)


def random_sites(gen, batch=2, side=D, density=0.3) -> torch.Tensor:
    """(M,4) int64 [b,x,y,z] active sites, in a shuffled row order."""
    b, x, y, z = torch.meshgrid(*(torch.arange(n) for n in (batch, side, side, side)), indexing="ij")
    grid = torch.stack([b, x, y, z], -1).reshape(-1, 4)
    keep = torch.rand(grid.shape[0], generator=gen) < density
    sites = grid[keep]
    return sites[torch.randperm(sites.shape[0], generator=gen)]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def test_offsets_are_x_fastest():
    off = offsets3()
    for k, (dx, dy, dz) in enumerate(off.tolist()):
        assert k == (dx + 1) + 3 * (dy + 1) + 9 * (dz + 1)


def test_submanifold_equals_dense_conv3d(gen):
    coords = random_sites(gen)
    feats = torch.randn(coords.shape[0], 3, generator=gen, dtype=torch.float64)
    w = torch.randn(27, 3, 5, generator=gen, dtype=torch.float64)
    out = tb.submanifold_conv3(tb.make_input(coords, feats), w)
    assert out.coords is coords and out.stride == 1
    ref = read(F.conv3d(densify(coords, feats, 2, D), dense_weight(w, 3), padding=1), coords)
    assert torch.allclose(out.feats, ref, atol=1e-10, rtol=0)


def test_downsample_equals_dense_strided_conv3d(gen):
    coords = random_sites(gen)
    feats = torch.randn(coords.shape[0], 4, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 4, 3, generator=gen, dtype=torch.float64)
    out = tb.downsample_conv2(tb.make_input(coords, feats), w)
    expected_sites = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], 1), dim=0)
    assert out.stride == 2 and torch.equal(out.coords, expected_sites)  # unique, sorted by (b, x, y, z)
    ref = read(F.conv3d(densify(coords, feats, 2, D), dense_weight(w, 2), stride=2), out.coords)
    assert torch.allclose(out.feats, ref, atol=1e-10, rtol=0)


def test_upsample_equals_dense_conv_transpose3d(gen):
    fine = random_sites(gen)
    x0 = tb.make_input(fine, torch.zeros(fine.shape[0], 1, dtype=torch.float64))
    coarse_all = torch.unique(torch.cat([fine[:, :1], fine[:, 1:] // 2], 1), dim=0)
    keep = torch.rand(coarse_all.shape[0], generator=gen) < 0.7  # some target sites get no parent
    coarse = coarse_all[keep][torch.randperm(int(keep.sum()), generator=gen)]
    feats = torch.randn(coarse.shape[0], 3, generator=gen, dtype=torch.float64)
    w = torch.randn(8, 3, 4, generator=gen, dtype=torch.float64)
    x = SparseTensor(coarse, feats, 2, x0.context)
    out = tb.upsample_conv2(x, w, x0)
    assert out.coords is fine and out.stride == 1
    wt = dense_weight(w, 2, transpose=True)  # (Cin, Cout, dx, dy, dz)
    ref = read(F.conv_transpose3d(densify(coarse, feats, 2, D // 2), wt, stride=2), fine)
    assert torch.allclose(out.feats, ref, atol=1e-10, rtol=0)


def test_events_never_mix(gen):
    one = random_sites(gen, batch=1)
    coords = torch.cat([one, one.clone().index_fill_(1, torch.tensor([0]), 1)])  # same sites, two events
    feats = torch.randn(coords.shape[0], 2, generator=gen, dtype=torch.float64)
    w3 = torch.randn(27, 2, 2, generator=gen, dtype=torch.float64)
    w2 = torch.randn(8, 2, 2, generator=gen, dtype=torch.float64)
    n = one.shape[0]

    def net(c, f):
        x = tb.make_input(c, f)
        y = tb.submanifold_conv3(x, w3)
        return tb.upsample_conv2(tb.downsample_conv2(y, w2), w2, x).feats

    both = net(coords, feats)
    second = net(one, feats[n:])
    assert torch.allclose(both[n:], second, atol=1e-12, rtol=0)
    assert torch.allclose(both[:n], net(one, feats[:n]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("op", ["subm", "down", "up"])
def test_gradcheck(op, gen):
    coords = random_sites(gen, batch=2, side=4, density=0.4)
    x = tb.make_input(coords, torch.zeros(coords.shape[0], 2, dtype=torch.float64))
    coarse = tb.downsample_conv2(x, torch.zeros(8, 2, 2, dtype=torch.float64))
    rows = len(coarse) if op == "up" else len(x)
    feats = torch.randn(rows, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(27 if op == "subm" else 8, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(f, weight):
        if op == "subm":
            return tb.submanifold_conv3(x.with_feats(f), weight).feats
        if op == "down":
            return tb.downsample_conv2(x.with_feats(f), weight).feats
        return tb.upsample_conv2(coarse.with_feats(f), weight, x).feats

    assert torch.autograd.gradcheck(fn, (feats, w), eps=1e-6, atol=1e-8)


FUSED_MISSING = "the fused CPU kernels could not be built here (no g++ or ninja)"


def force_route(monkeypatch, route: str, device: str = "cpu") -> None:
    """Make every route run as one GEMM ("table"), or as per-offset pairs: each offset's products scattered
    into its rows ("pairs"), or each partial offset as its whole table column ("columns"), or in the fused
    CPU kernels ("fused"; "fused-odd": at widths that are not whole vectors; "fused-wide": with weights too large
    for pick_mm, so that Picks take the torch routes beside fused Gathers; the others turn those kernels off)."""
    if route in ("fused", "fused-odd", "fused-wide"):
        if cpu_fused.load() is None:
            pytest.skip(FUSED_MISSING)
        monkeypatch.setattr(cpu_fused, "WEIGHT_BYTES", 0 if route == "fused-wide" else 1 << 40)
        return
    monkeypatch.setattr(cpu_fused, "fits", lambda *args: False)
    monkeypatch.setitem(tb.PAIRS_MIN_WORK, device, (0, 0))
    monkeypatch.setitem(tb.PAIRS_FILL, device, -1.0 if route == "table" else 1.01)
    monkeypatch.setitem(tb.COLUMN_GAIN, device, 1e9 if route == "columns" else 0.0)


def widths(route: str) -> tuple[int, int]:
    """(Cin, Cout) of a test layer: small and odd, whole vectors of the fused kernels for "fused" and "fused-wide",
    and for "fused-odd" widths past the last whole vector: Cout 19, whole float64 vectors (16 elements) and a
    tail of 3, and Cin 5 (a tail alone with AVX-512; one vector and a tail of 1 without)."""
    return (5, 19) if route == "fused-odd" else (16, 32) if route.startswith("fused") else (3, 4)


@pytest.mark.parametrize("op", ["subm", "down", "up"])
@pytest.mark.parametrize("chunk_bytes,route", [(1, "table"), (None, "table"), (None, "pairs"), (None, "columns"),
                                               (None, "fused"), (None, "fused-odd"), (None, "fused-wide")])
def test_gradients_equal_dense_autograd(op, chunk_bytes, route, gen, monkeypatch):
    """Outputs and both gradients (features, weight) against autograd through dense conv3d (float64),
    with the gather table (in 64-row chunks: many chunk boundaries; and default chunks), as pairs
    (scattered per offset, and by whole table columns) and in the fused CPU kernels."""
    if chunk_bytes is not None:
        monkeypatch.setitem(tb.CHUNK_BYTES, "cpu", chunk_bytes)
    force_route(monkeypatch, route)
    fine = random_sites(gen, batch=2, side=D, density=0.5)
    x0 = tb.make_input(fine, torch.zeros(fine.shape[0], 1, dtype=torch.float64))
    coarse = tb.downsample_conv2(x0, torch.zeros(8, 1, 1, dtype=torch.float64))
    src = coarse if op == "up" else x0
    assert len(src) > 64 or op == "up"
    c_in, c_out = widths(route)
    feats = torch.randn(len(src), c_in, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(27 if op == "subm" else 8, c_in, c_out, generator=gen, dtype=torch.float64, requires_grad=True)
    if route.startswith("fused"):
        assert cpu_fused.fits(feats)
        assert cpu_fused.fits_pick(feats, w) == (route != "fused-wide")
    if op == "subm":
        out = tb.submanifold_conv3(x0.with_feats(feats), w)
        ref = read(F.conv3d(densify(fine, feats, 2, D), dense_weight(w, 3), padding=1), fine)
    elif op == "down":
        out = tb.downsample_conv2(x0.with_feats(feats), w)
        ref = read(F.conv3d(densify(fine, feats, 2, D), dense_weight(w, 2), stride=2), out.coords)
    else:
        out = tb.upsample_conv2(coarse.with_feats(feats), w, x0)
        ref = read(F.conv_transpose3d(densify(coarse.coords, feats, 2, D // 2), dense_weight(w, 2, transpose=True),
                                      stride=2), fine)
    r = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((out.feats * r).sum(), (feats, w))
    expected = torch.autograd.grad((ref * r).sum(), (feats, w))
    assert torch.allclose(out.feats, ref, atol=1e-10, rtol=0)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("route", ["table", "pairs", "columns", "fused", "fused-odd"])
@pytest.mark.parametrize("wanted", ["feats", "weight"])
def test_submanifold_one_gradient_equals_dense_autograd(route, wanted, gen, monkeypatch):
    """With only one gradient asked for (a first layer's input has none; a frozen layer's weight has none),
    submanifold 3³ takes its per-gradient routes, not the shared gather of both: same values as dense autograd."""
    force_route(monkeypatch, route)
    fine = random_sites(gen, batch=2, side=D, density=0.5)
    x0 = tb.make_input(fine, torch.zeros(fine.shape[0], 1, dtype=torch.float64))
    c_in, c_out = widths(route)
    feats = torch.randn(len(x0), c_in, generator=gen, dtype=torch.float64, requires_grad=wanted == "feats")
    w = torch.randn(27, c_in, c_out, generator=gen, dtype=torch.float64, requires_grad=wanted == "weight")
    out = tb.submanifold_conv3(x0.with_feats(feats), w)
    ref = read(F.conv3d(densify(fine, feats, 2, D), dense_weight(w, 3), padding=1), fine)
    r = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    leaf = feats if wanted == "feats" else w
    got, = torch.autograd.grad((out.feats * r).sum(), leaf)
    expected, = torch.autograd.grad((ref * r).sum(), leaf)
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)


def test_upsample_from_pooled_sites_equals_upsample_by_lookup(gen):
    """Up onto the sites a down conv came from reuses that map (transposed); a copy of the coarse coords
    (not the same tensor) makes the backend look the parents up instead: both give the same numbers."""
    fine = random_sites(gen, batch=2, side=D, density=0.4)
    x = tb.make_input(fine, torch.randn(fine.shape[0], 2, generator=gen, dtype=torch.float64))
    w2 = torch.randn(8, 2, 3, generator=gen, dtype=torch.float64)
    coarse = tb.downsample_conv2(x, w2)
    w = torch.randn(8, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    results = []
    for coords in (coarse.coords, coarse.coords.clone()):
        f = coarse.feats.clone().requires_grad_()
        y = tb.upsample_conv2(SparseTensor(coords, f, 2, x.context), w, x)
        results.append([y.feats.detach(), *torch.autograd.grad(y.feats.sin().sum(), (f, w))])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _run_twice(gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    coords = random_sites(g, batch=2, side=8, density=0.3)
    feats = torch.randn(coords.shape[0], 8, generator=g, requires_grad=True)
    w3 = torch.randn(27, 8, 8, generator=g, requires_grad=True)
    w2 = torch.randn(8, 8, 8, generator=g, requires_grad=True)
    x = tb.make_input(coords, feats)
    y = tb.submanifold_conv3(tb.submanifold_conv3(x, w3), w3)
    z = tb.upsample_conv2(tb.downsample_conv2(y, w2), w2, x)
    (z.feats.sin().sum()).backward()
    return [z.feats.detach(), feats.grad, w3.grad, w2.grad]


def test_deterministic_on_cpu():
    a, b = _run_twice(7), _run_twice(7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def _fused_run(threads: int) -> list[torch.Tensor]:
    """_run_twice's layers at width 16 (float32), in the fused kernels, on `threads` threads, on enough sites
    (39k) that offset_tmm sums the full-resolution weight gradient in its fixed row groups."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(3)
        coords = random_sites(g, batch=2, side=34, density=0.5)
        feats = torch.randn(coords.shape[0], 16, generator=g, requires_grad=True)
        w3, w2 = ((0.1 * torch.randn(k, 16, 16, generator=g)).requires_grad_() for k in (27, 8))
        x = tb.make_input(coords, feats)
        z = tb.upsample_conv2(tb.downsample_conv2(tb.submanifold_conv3(x, w3), w2), w2, x)
        (z.feats * torch.randn(z.feats.shape, generator=g)).sum().backward()
        return [z.feats.detach(), feats.grad, w3.grad, w2.grad]
    finally:
        torch.set_num_threads(before)


def test_fused_kernels_do_not_depend_on_the_thread_count():
    """Each output element of the fused kernels is summed by one thread in a fixed order: one thread and
    two give the very same bits, and the torch routes agree to float32 rounding."""
    if cpu_fused.load() is None:
        pytest.skip(FUSED_MISSING)
    one, two = _fused_run(1), _fused_run(2)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_fused, "fits", lambda *args: False)
        routes = _fused_run(2)
    for a, b in zip(one, routes):
        assert not torch.equal(a, b) or a.abs().max() == 0  # another summation order, so not the same bits
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


@pytest.fixture(scope="module")
def fused_builds():
    """The fused kernels as built here, and (on an AVX-512 CPU) built again without AVX-512, as on CPUs that
    lack it: 64- and 32-byte vectors, other column tiles and accumulator sets."""
    if cpu_fused.load() is None:
        pytest.skip(FUSED_MISSING)
    builds = {cpu_fused.load().vector_bytes(): cpu_fused.load()}
    if 32 not in builds:
        builds[32] = cpu_fused.build(cpu_fused.FLAGS + ["-mno-avx512f"])
    return builds


@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_fused_kernels_equal_plain_products(vector_bytes, fused_builds, gen):
    """offset_mm, offset_tmm and pick_mm of each build against the same sums written as dense torch products over
    the padded neighbour table (float64), at widths that need several column tiles and a partial channel block,
    and at widths with columns past the last whole vector (a tail alone, one vector and a tail, several tiles and
    the longest tail)."""
    if vector_bytes not in fused_builds:
        pytest.skip("this CPU has no AVX-512: only the 32-byte build exists")
    module = fused_builds[vector_bytes]
    assert module.vector_bytes() == vector_bytes
    coords = random_sites(gen, batch=2, side=D, density=0.5)
    radix = make_cache(coords).radix
    subm = submanifold_map(SiteIndex.build(coords, radix), coords, radix)
    _, down = downsample_map(coords, radix)
    lanes = vector_bytes // 8
    for c_in, c_out in ((5, 3 * lanes), (9, 10 * lanes), (3, lanes - 1), (6, lanes + 3), (10, 9 * lanes - 1)):
        for route, n_src in ((subm.forward, len(coords)), (down.forward, len(coords))):
            k = route.table.shape[1]
            src = torch.randn(n_src, c_in, generator=gen, dtype=torch.float64)
            w = torch.randn(k, c_in, c_out, generator=gen, dtype=torch.float64)
            other = torch.randn(route.table.shape[0], c_out, generator=gen, dtype=torch.float64)
            rows = torch.cat([src, src.new_zeros(1, c_in)])[route.table]         # (n, K, Cin), zero rows where absent
            lists = route.pair_lists(n_src)
            got = module.offset_mm(src, lists.k_ptr, lists.k_i, lists.k_j, w, route.table.shape[0])
            assert torch.allclose(got, torch.einsum("nkc,kcd->nd", rows, w), atol=1e-12, rtol=0)
            got = module.offset_tmm(src, lists.k_ptr, lists.k_i, lists.k_j, other)
            assert torch.allclose(got, torch.einsum("nkc,nd->kcd", rows, other), atol=1e-11, rtol=0)
        pick = down.backward                                                      # each fine site's (parent, parity)
        coarse = torch.randn(down.n_out, c_in, generator=gen, dtype=torch.float64)
        w = torch.randn(8, c_in, c_out, generator=gen, dtype=torch.float64)
        products = torch.cat([torch.einsum("qc,kcd->qkd", coarse, w).reshape(-1, c_out), coarse.new_zeros(1, c_out)])
        got = module.pick_mm(coarse, pick.cell, w)
        assert torch.allclose(got, products[pick.cell], atol=1e-12, rtol=0)


def test_weight_gradient_by_row_groups_equals_plain_products(gen):
    """offset_tmm on a map of many rows (summed in fixed row groups, each in row blocks, then the groups added)
    against the same sum as one dense product over the padded neighbour table (float64)."""
    module = cpu_fused.load()
    if module is None:
        pytest.skip(FUSED_MISSING)
    coords = random_sites(gen, batch=1, side=40, density=0.5)                  # 32k sites: 16 groups of blocks
    radix = make_cache(coords).radix
    route = submanifold_map(SiteIndex.build(coords, radix), coords, radix).forward
    c_out = 3 * module.vector_bytes() // 8
    src = torch.randn(len(coords), 5, generator=gen, dtype=torch.float64)
    other = torch.randn(len(coords), c_out, generator=gen, dtype=torch.float64)
    rows = torch.cat([src, src.new_zeros(1, 5)])[route.table]
    lists = route.pair_lists(len(coords))
    got = module.offset_tmm(src, lists.k_ptr, lists.k_i, lists.k_j, other)
    assert torch.allclose(got, torch.einsum("nkc,nd->kcd", rows, other), atol=1e-9, rtol=0)


def test_stale_build_lock_is_removed(tmp_path, monkeypatch):
    """An interrupted build leaves `lock` in its folder, on which torch would wait forever: one older than
    STALE_LOCK_S is removed, a recent one (a build running in another process) is kept."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = cpu_fused.build_directory("spice_test_kernels")
    assert folder == tmp_path / "spice_test_kernels" and folder.is_dir()
    lock = folder / "lock"
    lock.write_text("")
    assert cpu_fused.build_directory("spice_test_kernels") == folder and lock.exists()
    old = lock.stat().st_mtime - cpu_fused.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    cpu_fused.build_directory("spice_test_kernels")
    assert not lock.exists()


def test_fused_kernels_can_be_turned_off():
    """SPICE_FUSED_CPU=0: no build, the torch routes run, the same layer still works."""
    code = ("import torch; from spice.sparse import cpu_fused, get_backend; tb = get_backend('torch');"
            "x = tb.make_input(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2]]), torch.ones(2, 16));"
            "y = tb.submanifold_conv3(x, torch.ones(27, 16, 16));"
            "print(cpu_fused.load() is None, float(y.feats[0, 0]))")
    env = dict(os.environ, SPICE_FUSED_CPU="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "32.0"]


def test_kernel_maps_are_cached_per_level(gen):
    coords = random_sites(gen)
    x = tb.make_input(coords, torch.randn(coords.shape[0], 2, generator=gen))
    w = torch.randn(27, 2, 2, generator=gen)
    y = tb.submanifold_conv3(x, w)
    kmap = x.context.maps[(1, "subm3")][1]
    tb.submanifold_conv3(y, w)
    assert x.context.maps[(1, "subm3")][1] is kmap and y.context is x.context


def test_bad_input_is_named():
    coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    x = tb.make_input(coords, torch.zeros(2, 1))
    with pytest.raises(ValueError, match="duplicate sparse coordinate"):
        tb.submanifold_conv3(x, torch.zeros(27, 1, 1))
    with pytest.raises(ValueError, match="weight must be"):
        tb.submanifold_conv3(x, torch.zeros(8, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        tb.make_input(torch.tensor([[0, -1, 0, 0]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="unknown sparse backend"):
        get_backend("nope")


def test_layers_act_on_features_and_pickle(gen):
    coords = random_sites(gen)
    x = tb.make_input(coords, torch.randn(coords.shape[0], 3, generator=gen))
    bn, act, lin = layers.BatchNorm(3), layers.LeakyReLU(0.33), layers.Linear(3, 2)
    y = lin(act(bn(x)))
    ref = F.linear(F.leaky_relu(F.batch_norm(x.feats, None, None, training=True), 0.33), lin.weight, lin.bias)
    assert torch.allclose(y.feats, ref, atol=1e-6) and y.coords is coords
    assert cat([x, y]).feats.shape == (coords.shape[0], 5)
    one = SparseTensor(coords[:1], torch.randn(1, 3), 1, None)
    assert torch.equal(bn(one).feats, bn.bias.expand(1, 3))  # a lone site is centred, no error
    conv = layers.SubmanifoldConv3(3, 4, backend="torch")
    clone = pickle.loads(pickle.dumps(conv))
    assert torch.equal(clone(x).feats, conv(x).feats)
    assert conv.weight.shape == (27, 3, 4) and layers.DownConv2(3, 4).weight.shape == (8, 3, 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(gen):
    coords = random_sites(gen, batch=2, side=8, density=0.3)
    feats = torch.randn(coords.shape[0], 4, generator=gen, dtype=torch.float64)
    w3 = torch.randn(27, 4, 4, generator=gen, dtype=torch.float64)
    w2 = torch.randn(8, 4, 4, generator=gen, dtype=torch.float64)

    def net(device):  # detach: on the CPU .to() returns the tensor itself, which must stay a leaf without grad
        f = feats.to(device).detach().requires_grad_()
        ws = [w.to(device).detach().requires_grad_() for w in (w3, w2)]
        x = tb.make_input(coords.to(device), f)
        y = tb.upsample_conv2(tb.downsample_conv2(tb.submanifold_conv3(x, ws[0]), ws[1]), ws[1], x)
        y.feats.square().sum().backward()
        return [t.detach().cpu() for t in (y.feats, f.grad, *[w.grad for w in ws])]

    for a, b in zip(net("cpu"), net("cuda")):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("route", ["table", "pairs", "columns"])
def test_cuda_reruns_are_bit_identical(route, monkeypatch):
    """Fixed summation order (pairs add each offset once per output row): outputs and gradients repeat
    exactly on CUDA too (float32)."""
    force_route(monkeypatch, route, "cuda")
    def run():
        g = torch.Generator().manual_seed(3)
        coords = random_sites(g, batch=2, side=12, density=0.4).cuda()
        feats = torch.randn(coords.shape[0], 16, generator=g).cuda().requires_grad_()
        w3, w2 = (torch.randn(k, 16, 16, generator=g).cuda().requires_grad_() for k in (27, 8))
        x = tb.make_input(coords, feats)
        y = tb.upsample_conv2(tb.downsample_conv2(tb.submanifold_conv3(x, w3), w2), w2, x)
        y.feats.sin().sum().backward()
        return [t.detach().cpu() for t in (y.feats, feats.grad, w3.grad, w2.grad)]

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_autocast_bf16_close_to_float32(gen):
    coords = random_sites(gen, batch=2, side=8, density=0.3)
    feats = torch.randn(coords.shape[0], 8, generator=gen, requires_grad=True)
    w3 = torch.randn(27, 8, 8, generator=gen, requires_grad=True)

    def run(autocast: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = tb.submanifold_conv3(tb.make_input(coords, feats), w3).feats
        grads = torch.autograd.grad(y.float().square().sum(), (feats, w3))
        return y, grads

    (y32, g32), (y16, g16) = run(False), run(True)
    assert y16.dtype == torch.float32 and g16[0].dtype == g16[1].dtype == torch.float32
    assert not torch.equal(y32, y16)  # the matmuls did run in bf16
    for a, b in ((y32, y16), *zip(g32, g16)):
        assert (a - b).norm() / a.norm() < 2e-2


def test_route_choice_follows_fill_and_work():
    """use_pairs: the table for small or dense maps and for CUDA (not yet measured there), pairs for
    large sparse CPU layers; the pairs list the table's entries exactly."""
    from spice.sparse.kernel_map import Gather
    n = 1000
    table = torch.full((n, 27), n, dtype=torch.int64)
    table[:, 13] = torch.arange(n)                        # centre: every row reads itself
    table[::2, 0] = torch.arange(1, n, 2)                 # half the rows have one more neighbour
    sparse_map = Gather(table)
    fill = sparse_map.fill(n)
    assert fill == pytest.approx((n + n // 2) / (27 * n))
    entries = sorted((int(r), k, int(i)) for k, rows, inputs in sparse_map.by_offset(n)
                     for r, i in zip(torch.arange(n) if rows is None else rows,
                                     torch.arange(n) if inputs is None else inputs))
    assert entries == sorted((r, k, int(table[r, k])) for r in range(n) for k in range(27) if table[r, k] < n)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert tb.use_pairs(sparse_map, n, 64, 64, cpu)       # 1500 pairs x 4096: a wide layer with work enough
    assert not tb.use_pairs(sparse_map, n, 32, 32, cpu)   # 1500 x 1024: narrow, too little work: one GEMM wins
    assert not tb.use_pairs(sparse_map, n, 64, 64, cuda)
    assert tb.column_fill(16, cpu) < 0.5 < tb.column_fill(128, cpu)   # narrow layers: columns pay sooner
    assert tb.column_fill(16, cuda) > 1                               # CUDA: always scattered pairs
    dense = Gather(torch.arange(n).repeat(27, 1).t().contiguous())
    assert dense.fill(n) == 1.0 and not tb.use_pairs(dense, n, 64, 64, cpu)


def test_pick_by_offset_runs_only_its_pairs():
    """A Pick (2^3 layers) as pairs: the same output as its definition out[i] = src[cell // K] @ W[cell % K],
    zero rows where the cell is absent, and fill = pairs / (n_src·K); the rule takes it on CPU only."""
    from spice.sparse.kernel_map import Pick
    n_src, k, n_out = 50, 8, 120
    gen = torch.Generator().manual_seed(3)
    cell = torch.randint(0, n_src * k, (n_out,), generator=gen)
    cell[::7] = n_src * k                                          # rows without an input
    route = Pick(cell, k)
    src = torch.randint(-4, 5, (n_src, 3), generator=gen).double()  # small integers: every sum exact
    w = torch.randint(-4, 5, (k, 3, 5), generator=gen).double()
    want = torch.stack([src[c // k] @ w[c % k] if c < n_src * k else torch.zeros(5, dtype=torch.float64)
                        for c in cell.tolist()])
    assert torch.equal(tb.pick_pairs_mm(src, route, w), want)
    assert torch.equal(tb.pick_mm(src, cell, w), want)
    assert route.fill(n_src) == pytest.approx(int((cell < n_src * k).sum()) / (n_src * k))
    coarse = 2000                                                  # a 2^3 layer with 2.4 of 8 children per site
    wide = Pick(torch.randperm(coarse * k, generator=gen)[:coarse * 24 // 10], k)
    assert wide.fill(coarse) == pytest.approx(0.3)
    assert tb.use_pairs(wide, coarse, 64, 64, torch.device("cpu"))   # 4800 pairs x 4096 multiply-adds
    assert not tb.use_pairs(wide, coarse, 16, 16, torch.device("cpu"))
    assert not tb.use_pairs(wide, coarse, 64, 64, torch.device("cuda"))
