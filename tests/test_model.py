"""The SPICE network: shapes, output ranges, equivariance, batch independence, determinism, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spice.data.event import Event, collate
from spice.model import SPICE, count_parameters, describe

L = 16


def track_event(seed: int, n_steps: int = 120, side: int = L) -> Event:
    """A few random-walk tracks on a side^3 grid (unique voxels), random energies and instance ids."""
    rng = np.random.default_rng(seed)
    points, inst = [], []
    for t in range(3):
        p = rng.integers(0, side, 3)
        for _ in range(n_steps // 3):
            p = np.clip(p + rng.integers(-1, 2, 3), 0, side - 1)
            points.append(p.copy())
            inst.append(t)
    coords, first = np.unique(np.array(points), axis=0, return_index=True)
    n = len(coords)
    return Event(coords.astype(np.int64), rng.uniform(0.01, 3.0, n).astype(np.float32),
                 np.zeros(n, np.int64), np.array(inst, np.int64)[first], side)


def small_model(seed=0, dtype=torch.float64, **kw) -> SPICE:
    torch.manual_seed(seed)
    args = dict(filters=4, depth=2, reps=1, spatial_size=L, backend="torch") | kw
    return SPICE(**args).to(dtype)


def test_shapes_and_ranges():
    batch = collate([track_event(0), track_event(1)])
    out = small_model()(batch)
    m = batch.coords.shape[0]
    assert out["embedding"].shape == (m, 3) and out["margin"].shape == (m, 1) and out["seediness"].shape == (m, 1)
    assert all(v.dtype == torch.float64 and torch.isfinite(v).all() for v in out.values())
    xhat = (batch.coords[:, 1:].double() - L / 2) / (L / 2)
    offset = out["embedding"] - xhat  # tanh(o) in (-1, 1)
    assert offset.abs().max() < 1
    assert ((out["margin"] > 0) & (out["margin"] < 2)).all()
    assert ((out["seediness"] > 0) & (out["seediness"] < 1)).all()


def test_permutation_equivariance():
    batch = collate([track_event(2), track_event(3)])
    perm = torch.randperm(batch.coords.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = collate([track_event(2), track_event(3)])
    shuffled.coords, shuffled.energy = batch.coords[perm], batch.energy[perm]
    model = small_model()
    a, b = model(batch), model(shuffled)  # training mode: batch statistics are order-free too
    for k in a:
        assert torch.allclose(a[k][perm], b[k], atol=1e-10, rtol=0), k


def test_event_alone_equals_event_in_batch():
    model = small_model()
    for s in range(3):  # give the running statistics something non-trivial
        model(collate([track_event(10 + s)]))
    model.eval()
    events = [track_event(20), track_event(21), track_event(22)]
    together = model(collate(events))
    offsets = collate(events).offsets
    for i, e in enumerate(events):
        alone = model(collate([e]))
        for k in alone:
            assert torch.allclose(together[k][offsets[i]:offsets[i + 1]], alone[k], atol=1e-10, rtol=0), (i, k)


def test_deterministic_forward_and_backward_float32():
    batch = collate([track_event(4), track_event(5)])

    def run():
        model = small_model(seed=3, dtype=torch.float32)
        out = model(batch)
        (out["embedding"].sum() + out["margin"].sum() + out["seediness"].sum()).backward()
        return [v.detach() for v in out.values()] + [p.grad for p in model.parameters()]

    a, b = run(), run()
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_forward_and_backward_match_cpu():
    """The whole network in float64 gives the CPU's outputs and gradients on CUDA."""
    batch = collate([track_event(8, n_steps=300), track_event(9, n_steps=300)])

    def run(device):
        model = small_model(seed=2, depth=2, reps=2).to(device)
        out = model(batch.to(device))
        g = torch.Generator().manual_seed(1)  # the same loss weights on both devices
        loss = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype).to(device)).sum() for v in out.values())
        loss.backward()
        return [v.detach().cpu() for v in out.values()] + [p.grad.cpu() for p in model.parameters()]

    for a, b in zip(run("cpu"), run("cuda"), strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_gradient_reaches_every_parameter():
    batch = collate([track_event(6, n_steps=300), track_event(7, n_steps=300)])
    model = small_model(depth=2, reps=2)
    out = model(batch)
    g = torch.Generator().manual_seed(0)
    loss = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in out.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_groups_partition_all_parameters():
    model = small_model(depth=3, spatial_size=32)
    seed = {id(p) for p in model.seediness_parameters()}
    emb = {id(p) for p in model.embedding_parameters()}
    every = {id(p) for p in model.parameters()}
    assert seed and emb and not (seed & emb) and (seed | emb) == every
    assert {id(p) for p in model.seediness_decoder.head.parameters()} <= seed
    assert {id(p) for p in model.embedding_decoder.head.parameters()} <= emb


def test_architecture_widths_and_weight_layout():
    model = SPICE(filters=8, depth=3, reps=2, spatial_size=64, backend="torch")
    assert model.input_conv.weight.shape == (27, 4, 8)
    assert model.downs[2][1].weight.shape == (8, 24, 32)  # level i has (i+1)F channels
    assert model.embedding_decoder.up_convs[0].weight.shape == (8, 16, 8)
    assert model.embedding_decoder.head.out_features == 4 and model.seediness_decoder.head.out_features == 1
    assert len(model.encoder) == 4 and all(len(level) == 2 for level in model.encoder)
    frame = describe(model)
    assert list(frame.columns[:4]) == ["layer", "level", "in_channels", "channels"]
    assert int(frame["parameters"].sum()) == sum(p.numel() for p in model.parameters()) == count_parameters(model)
    assert frame["level"].max() == 3


def test_depth_is_validated_against_spatial_size():
    with pytest.raises(ValueError, match=r"2\^6 = 64 <= spatial_size, got 32"):
        SPICE(filters=2, depth=6, spatial_size=32)
    SPICE(filters=2, depth=5, spatial_size=32)  # 2^5 = 32 fits


def test_single_voxel_event_and_larger_grid_error():
    one = Event(np.array([[3, 4, 5]]), np.array([1.0], np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), L)
    out = small_model()(collate([one]))
    assert torch.isfinite(out["embedding"]).all()
    big = Event(np.array([[3, 4, 5]]), np.array([1.0], np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64), 64)
    with pytest.raises(ValueError, match="larger than the model's spatial_size"):
        small_model()(collate([big]))


def test_real_pilarnet_events_run_independently(real_root_file):
    from spice.data import read_larcv_root
    events = read_larcv_root(real_root_file)[:2]  # 3827 and 1671 voxels on a 192^3 grid
    model = small_model(depth=4, spatial_size=192, dtype=torch.float32).eval()
    together = model(collate(events))
    alone = model(collate(events[1:]))
    n0 = len(events[0])
    assert together["embedding"].shape == (n0 + len(events[1]), 3)
    for k in alone:
        assert torch.isfinite(together[k]).all()
        assert torch.allclose(together[k][n0:], alone[k], atol=1e-5, rtol=1e-5), k


def test_stage1_skipping_the_seediness_decoder_changes_no_embedding_loss_or_gradient():
    """Stage 1 runs model(batch, seediness=False): the embedding terms and every embedding gradient are
    bit-identical to those of the full forward pass, and the frozen decoder's buffers stay untouched."""
    from spice.losses import SPICELoss
    from spice.train import set_stage
    batch = collate([track_event(30, n_steps=300), track_event(31, n_steps=300)])
    model = small_model(seed=4, depth=2, reps=2, dtype=torch.float32)
    set_stage(model, 1)
    buffers = {k: v.clone() for k, v in model.seediness_decoder.state_dict().items()}

    def run(seediness: bool):
        model.zero_grad(set_to_none=True)
        out = model(batch, seediness=seediness)
        losses = SPICELoss()(out, batch)
        losses["emb"].backward()
        return out, losses, [p.grad.clone() for p in model.embedding_parameters()]

    full, full_losses, full_grads = run(True)
    skip, skip_losses, skip_grads = run(False)
    assert "seediness" not in skip and set(skip) == {"embedding", "margin"}
    assert all(torch.equal(full[k], skip[k]) for k in skip)
    for t in ("emb", "mask", "smoothing", "inter"):
        assert torch.equal(full_losses[t], skip_losses[t]), t
    assert full_losses["seed"] > 0 and skip_losses["seed"] == 0
    assert torch.equal(skip_losses["total"], skip_losses["emb"])
    assert all(torch.equal(a, b) for a, b in zip(full_grads, skip_grads, strict=True))
    assert all(p.grad is None for p in model.seediness_parameters())
    assert all(torch.equal(v, model.seediness_decoder.state_dict()[k]) for k, v in buffers.items())
