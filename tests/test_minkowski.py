"""The MinkowskiEngine backend equals the torch backend and dense torch convolutions (float64, ≤1e-10).

Needs MinkowskiEngine (`make minkowski`); those tests skip with that reason when it is not importable.
"""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F
from dense_reference import dense_weight, densify, read

from spice.sparse import get_backend

HAVE_ME = importlib.util.find_spec("MinkowskiEngine") is not None
needs_me = pytest.mark.skipif(not HAVE_ME, reason="MinkowskiEngine not installed (run `make minkowski`)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = pytest.mark.minkowski

tb = get_backend("torch")
TOL = 1e-10
SIDE = 8   # dense grid side (even: stride-2 cells tile it)
BATCH = 2


def me():
    return get_backend("minkowski")


def random_sites(gen, density=0.35) -> torch.Tensor:
    """(M,4) int64 [b,x,y,z] unique active sites of a BATCH x SIDE^3 grid, rows shuffled."""
    axes = [torch.arange(n) for n in (BATCH, SIDE, SIDE, SIDE)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 4)
    sites = grid[torch.rand(len(grid), generator=gen) < density]
    return sites[torch.randperm(len(sites), generator=gen)]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(7)


def setup(gen, cin=3, cout=5, k=27):
    coords = random_sites(gen)
    feats = torch.randn(len(coords), cin, generator=gen, dtype=torch.float64)
    weight = torch.randn(k, cin, cout, generator=gen, dtype=torch.float64)
    return coords, feats, weight


def test_missing_minkowski_engine_error_says_make_minkowski(monkeypatch):
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)  # makes `import MinkowskiEngine` fail
    backend = get_backend("minkowski")
    with pytest.raises(ImportError, match="make minkowski"):
        backend.make_input(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 1))


@needs_me
def test_kernel_orders_are_permutations():
    orders = me().kernel_orders()
    assert sorted(orders["subm3"]) == list(range(27))
    assert sorted(orders["down2"]) == sorted(orders["up2"]) == list(range(8))


@needs_me
def test_submanifold_equals_torch_backend_and_dense(gen):
    coords, feats, weight = setup(gen)
    out = me().submanifold_conv3(me().make_input(coords, feats), weight)
    ref = tb.submanifold_conv3(tb.make_input(coords, feats), weight)
    assert torch.equal(out.coords, coords) and out.stride == 1
    torch.testing.assert_close(out.feats, ref.feats, atol=TOL, rtol=0)
    expected = read(F.conv3d(densify(coords, feats, BATCH, SIDE), dense_weight(weight, 3), padding=1), coords)
    torch.testing.assert_close(out.feats, expected, atol=TOL, rtol=0)


@needs_me
def test_downsample_equals_torch_backend_and_dense(gen):
    coords, feats, weight = setup(gen, k=8)
    out = me().downsample_conv2(me().make_input(coords, feats), weight)
    ref = tb.downsample_conv2(tb.make_input(coords, feats), weight)
    coarse = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], 1), dim=0)  # sorted (b, x, y, z)
    assert torch.equal(out.coords, coarse) and torch.equal(ref.coords, coarse) and out.stride == 2
    torch.testing.assert_close(out.feats, ref.feats, atol=TOL, rtol=0)
    expected = read(F.conv3d(densify(coords, feats, BATCH, SIDE), dense_weight(weight, 2), stride=2), coarse)
    torch.testing.assert_close(out.feats, expected, atol=TOL, rtol=0)


@needs_me
def test_upsample_equals_torch_backend_and_dense(gen):
    coords, feats, _ = setup(gen)
    weight = torch.randn(8, 4, 3, generator=gen, dtype=torch.float64)
    results = []
    for backend in (me(), tb):
        fine = backend.make_input(coords, feats)
        coarse = backend.downsample_conv2(fine, torch.zeros(8, 3, 4, dtype=torch.float64))
        coarse_feats = torch.randn(len(coarse), 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        results.append((backend.upsample_conv2(coarse.with_feats(coarse_feats), weight, fine), coarse.coords, coarse_feats))
    (out, coarse, cf), (ref, _, _) = results
    assert torch.equal(out.coords, coords) and out.stride == 1
    torch.testing.assert_close(out.feats, ref.feats, atol=TOL, rtol=0)
    vol = F.conv_transpose3d(densify(coarse, cf, BATCH, SIDE // 2), dense_weight(weight, 2, transpose=True), stride=2)
    torch.testing.assert_close(out.feats, read(vol, coords), atol=TOL, rtol=0)


@needs_me
def test_gradients_equal_torch_backend(gen):
    """Feature and weight gradients of a conv → down → up → conv chain match across backends."""
    coords, feats, _ = setup(gen)
    weights = [torch.randn(27, 3, 4, generator=gen, dtype=torch.float64), torch.randn(8, 4, 6, generator=gen, dtype=torch.float64),
               torch.randn(8, 6, 4, generator=gen, dtype=torch.float64), torch.randn(27, 4, 2, generator=gen, dtype=torch.float64)]
    target = torch.randn(len(coords), 2, generator=gen, dtype=torch.float64)
    grads = []
    for backend in (me(), tb):
        f = feats.clone().requires_grad_()
        ws = [w.clone().requires_grad_() for w in weights]
        x = backend.submanifold_conv3(backend.make_input(coords, f), ws[0])
        y = backend.downsample_conv2(x, ws[1])
        z = backend.upsample_conv2(y.with_feats(torch.tanh(y.feats)), ws[2], x)
        out = backend.submanifold_conv3(z, ws[3])
        (out.feats * target).sum().backward()
        grads.append([f.grad] + [w.grad for w in ws])
    for g_me, g_torch in zip(*grads):
        torch.testing.assert_close(g_me, g_torch, atol=TOL, rtol=0)


@needs_me
def test_duplicate_sites_are_rejected():
    coords = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match="duplicate"):
        me().make_input(coords, torch.zeros(2, 1, dtype=torch.float64))


def small_batch():
    from spice.data import collate
    from spice.data.synthetic import generate
    return collate(generate(2, spatial_size=32, seed=3))


def small_model(backend):
    from spice.model import SPICE
    torch.manual_seed(0)
    return SPICE(filters=4, depth=2, reps=1, spatial_size=32, backend=backend).double()


@needs_me
def test_whole_network_equal_across_backends():
    batch = small_batch()
    reference, model = small_model("torch"), small_model("minkowski")
    model.load_state_dict(reference.state_dict())
    outputs = {}
    for name, net in (("torch", reference), ("minkowski", model)):
        net.train()
        out = net(batch)
        sum(o.square().sum() for o in out.values()).backward()  # train-mode BN, gradients too
        outputs[name] = ({k: v.detach() for k, v in out.items()}, {n: p.grad for n, p in net.named_parameters()})
    (out_t, grad_t), (out_m, grad_m) = outputs["torch"], outputs["minkowski"]
    for key in ("embedding", "margin", "seediness"):
        torch.testing.assert_close(out_m[key], out_t[key], atol=TOL, rtol=0)
    for name, g in grad_t.items():
        torch.testing.assert_close(grad_m[name], g, atol=TOL, rtol=0, msg=f"gradient of {name}")


@needs_me
@pytest.mark.parametrize("saved_under, loaded_under", [("torch", "minkowski"), ("minkowski", "torch")])
def test_state_dict_moves_between_backends(tmp_path, saved_under, loaded_under):
    batch = small_batch()
    source = small_model(saved_under)
    with torch.no_grad():  # make weights differ from a fresh init, so loading is what makes them equal
        for p in source.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = small_model(loaded_under)
    target.load_state_dict(torch.load(tmp_path / "model.pt"), strict=True)
    source.eval(), target.eval()
    with torch.no_grad():
        a, b = source(batch), target(batch)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=TOL, rtol=0)


@needs_me
@needs_cuda
@pytest.mark.cuda
def test_cuda_ops_equal_torch_backend(gen):
    coords, feats, weight = setup(gen)
    coords, feats, weight = coords.cuda(), feats.cuda(), weight.cuda()
    down_w = torch.randn(8, 3, 4, generator=gen, dtype=torch.float64).cuda()
    up_w = torch.randn(8, 4, 3, generator=gen, dtype=torch.float64).cuda()
    results = []
    for backend in (me(), tb):
        x = backend.make_input(coords, feats)
        s = backend.submanifold_conv3(x, weight)
        d = backend.downsample_conv2(x, down_w)
        u = backend.upsample_conv2(d, up_w, x)
        results.append((s.feats, d.coords, d.feats, u.feats))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0)


@needs_me
@needs_cuda
@pytest.mark.cuda
def test_cuda_whole_network_equal_across_backends():
    batch = small_batch().to("cuda")
    reference, model = small_model("torch").cuda().eval(), small_model("minkowski").cuda().eval()
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        a, b = reference(batch), model(batch)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-8, rtol=0)
