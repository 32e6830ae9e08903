"""Augmentation by the cube's symmetries, the lazy synthetic stream and the learning-rate schedule."""
import numpy as np
import pytest
import torch

from spice.augment import N_SYMMETRIES, augment_event, symmetry, unsymmetry_points
from spice.data.synthetic import SyntheticEvents, generate
from spice.train import AugmentedView, BatchStream, TrainConfig, learning_rate


def test_the_48_symmetries_are_the_cube_group():
    """Each k is a distinct rigid map of the grid onto itself: it keeps every pairwise distance, maps
    the grid into itself, and the 48 images of an asymmetric point set are all different."""
    L = 10
    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 3], [7, 5, 9]])
    d0 = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    images = set()
    for k in range(N_SYMMETRIES):
        q = symmetry(pts, k, L)
        assert q.min() >= 0 and q.max() < L
        np.testing.assert_allclose(np.linalg.norm(q[:, None] - q[None], axis=-1), d0)
        images.add(q.tobytes())
    assert len(images) == 48
    with pytest.raises(ValueError, match="48"):
        symmetry(pts, 48, L)


def test_symmetry_known_answer():
    pts = np.array([[1, 2, 3]])
    assert symmetry(pts, 0, 10).tolist() == [[1, 2, 3]]           # identity
    assert symmetry(pts, 1, 10).tolist() == [[8, 2, 3]]           # x reflected: 10 - 1 - 1
    assert symmetry(pts, 8 * 5, 10).tolist() == [[3, 2, 1]]       # permutation (2, 1, 0)


@pytest.mark.parametrize("L, model_grid", [(10, 10), (10, 16)])
def test_unsymmetry_points_inverts_every_symmetry(L, model_grid):
    """Normalised coordinates (x − h)/h of a voxel's image under k, mapped back, are those of the voxel
    itself, also when the model's grid (h = model_grid/2) is larger than the event's."""
    rng = np.random.default_rng(3)
    pts = rng.integers(0, L, size=(20, 3))
    h = model_grid / 2
    xhat = torch.as_tensor((pts - h) / h)
    for k in range(N_SYMMETRIES):
        image = torch.as_tensor((symmetry(pts, k, L) - h) / h)
        torch.testing.assert_close(unsymmetry_points(image, k, L, h), xhat)
    # a point off the voxels, x reflected (k = 1) on a 10-grid, h = 5: x -> 9 − x is x̂ -> −0.2 − x̂
    assert unsymmetry_points(torch.tensor([[-0.3, 0.5, 0.7]]), 1, 10, 5.0)[0].tolist() == pytest.approx([0.1, 0.5, 0.7])
    with pytest.raises(ValueError, match="48"):
        unsymmetry_points(xhat, 48, L, h)


def test_augmented_event_keeps_labels_and_stays_in_grid():
    e = generate(1, 64, seed=1)[0]
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = augment_event(e, rng)
        assert a.coords.min() >= 0 and a.coords.max() < 64 and len(a) == len(e)
        np.testing.assert_array_equal(a.energy, e.energy)
        np.testing.assert_array_equal(a.instance, e.instance)
        assert len({tuple(c) for c in a.coords}) == len(e)        # still one voxel per site
        # a rigid map: the pairwise distances of the first voxels are unchanged
        d = lambda c: np.linalg.norm(c[:20, None].astype(float) - c[None, :20], axis=-1)
        np.testing.assert_allclose(d(a.coords), d(e.coords))


def test_augmented_view_depends_only_on_stream_position():
    """The same (index, position) gives the same event whatever was drawn before (exact resume), and two
    positions of the same event are (almost always) different images."""
    events = SyntheticEvents(3, 64, seed=2, cache=3)
    view = AugmentedView(events, seed=9)
    a = view[(1, 17)]
    view[(0, 3)], view[(2, 4)]
    assert a.equals(view[(1, 17)])
    assert not np.array_equal(view[(1, 17)].coords, view[(1, 18)].coords)
    stream = BatchStream(3, 2, seed=0, start=0, stop=2, positions=True)
    assert [p for _, p in stream.batch(1)] == [2, 3]
    first_epoch = [i for b in (stream.batch(0), stream.batch(1)) for i, _ in b][:3]
    assert sorted(first_epoch) == [0, 1, 2]                       # positions 0..2: one permutation of the events


def test_synthetic_events_is_the_lazy_generate():
    lazy = SyntheticEvents(4, 64, seed=5, cache=0)
    eager = generate(4, 64, seed=5)
    assert len(lazy) == 4 and all(lazy[i].equals(eager[i]) for i in (3, 0))
    with pytest.raises(IndexError):
        lazy[4]


def test_learning_rate_schedule_known_values():
    cfg = TrainConfig(stage1_iterations=50, stage2_iterations=50, lr=0.01, lr_schedule="cosine",
                      warmup_iterations=10, min_lr_fraction=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.001)          # warm-up starts at lr/10
    assert learning_rate(cfg, 5) == pytest.approx(0.0055)
    assert learning_rate(cfg, 10) == pytest.approx(0.01)          # peak after warm-up
    assert learning_rate(cfg, 55) == pytest.approx(0.001 + 0.009 * 0.5)  # half way down the cosine
    assert learning_rate(cfg, 100) == pytest.approx(0.001)        # the floor at the end
    flat = TrainConfig(lr=0.003)
    assert learning_rate(flat, 0) == learning_rate(flat, 10_000) == 0.003
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_learning_rate_is_a_python_float():
    """The rate lands in the optimiser state, which checkpoints save and load with weights_only."""
    cfg = TrainConfig(stage1_iterations=5, stage2_iterations=5, lr_schedule="cosine", warmup_iterations=2)
    assert all(type(learning_rate(cfg, i)) is float for i in range(11))
