"""spice.cluster against a plain per-seed Python loop written here from SPEC §4."""
import numpy as np
import pytest
import torch

from spice.cluster import cluster_event, fit_predict, fit_predict_path


def reference(e, m, s, s0, p0):
    """Literal SPEC §4: loop over voxels to pick seeds, keep every seed's p, argmax at the end."""
    n = len(s)
    assigned = [False] * n
    probs = []
    while not all(assigned):
        best = None
        for i in range(n):  # highest seediness, ties -> lowest index
            if not assigned[i] and (best is None or s[i] > s[best]):
                best = i
        if s[best] < s0:
            break
        p = np.exp(-((e - e[best]) ** 2).sum(1) / (2 * m[best] ** 2))
        probs.append(p)
        for i in range(n):
            if p[i] > p0:
                assigned[i] = True
    if not probs:
        return np.zeros(n, dtype=np.int64)
    return np.argmax(np.stack(probs), axis=0).astype(np.int64)  # argmax ties -> first seed


def random_outputs(rng, n, ties=False):
    centres = rng.uniform(-1, 1, size=(max(1, n // 15), 3))
    e = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.05, (n, 3))
    m = rng.uniform(0.1, 0.3, n)  # p >= exp(-12 / 0.02): no float64 underflow in the literal reference
    s = rng.uniform(0, 1, n)
    if ties:  # repeated seediness values and duplicated voxels (identical e, σ -> tied p)
        s = np.round(s * 4) / 4
        dup = rng.integers(0, n, n // 4)
        e[dup[: len(dup) // 2]] = e[dup[len(dup) // 2: 2 * (len(dup) // 2)]]
        m[dup[: len(dup) // 2]] = m[dup[len(dup) // 2: 2 * (len(dup) // 2)]]
    return e, m, s


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    e, m, s = random_outputs(rng, int(rng.integers(1, 200)), ties=seed % 2 == 0)
    for s0, p0 in [(0.0, 0.0), (0.3, 0.1), (0.5, 0.5), (0.9, 0.9), (1.0, 0.2)]:
        ref = reference(e, m, s, s0, p0)
        got = fit_predict(e, m, s, s0, p0)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ref, err_msg=f"s0={s0} p0={p0}")


def test_exact_ties_are_resolved_by_index_and_seed_order():
    # Two identical voxels with equal seediness: voxel 0 is the seed; a far voxel starts cluster 1.
    e = np.array([[0, 0, 0], [0, 0, 0], [5, 0, 0], [2.5, 0, 0]], float)
    m = np.array([1.0, 1.0, 1.0, 1.0])
    s = np.array([0.9, 0.9, 0.8, 0.1])
    lab = fit_predict(e, m, s, 0.5, 0.5)
    # voxel 3 is equidistant from both seeds (equal p): the earlier seed wins.
    np.testing.assert_array_equal(lab, [0, 0, 1, 0])


def test_far_voxels_go_to_the_nearest_seed_despite_underflow():
    # exp(-d²/2σ²) is 0.0 in float32 for both seeds at the far voxel; log p still orders them.
    e = np.array([[0, 0, 0], [1, 0, 0], [0.3, 0, 0]], np.float32)
    m = np.full(3, 0.01, np.float32)
    s = np.array([0.9, 0.8, 0.1], np.float32)
    assert np.exp(-0.09 / 2e-4, dtype=np.float32) == 0.0
    np.testing.assert_array_equal(fit_predict(e, m, s, 0.5, 0.5), [0, 1, 0])
    np.testing.assert_array_equal(fit_predict(e[[1, 0, 2]], m, s, 0.5, 0.5), [0, 1, 1])


def test_no_seed_is_one_cluster_and_labels_in_seed_order():
    rng = np.random.default_rng(1)
    e, m, s = random_outputs(rng, 50)
    np.testing.assert_array_equal(fit_predict(e, m, s * 0.4, 0.5, 0.1), np.zeros(50, np.int64))
    lab = fit_predict(e, m, s, 0.0, 0.3)
    first_seen = [lab[np.argsort(-s, kind="stable")].tolist().index(k) for k in range(lab.max() + 1)]
    assert first_seen == sorted(first_seen)  # label k's seed is the k-th seed in seediness order
    assert set(lab.tolist()) == set(range(lab.max() + 1))


def test_torch_input_float32_and_shapes():
    rng = np.random.default_rng(2)
    e, m, s = random_outputs(rng, 300)
    ref = fit_predict(e.astype(np.float32), m.astype(np.float32), s.astype(np.float32), 0.4, 0.2)
    got = fit_predict(torch.tensor(e, dtype=torch.float32), torch.tensor(m, dtype=torch.float32)[:, None],
                      torch.tensor(s, dtype=torch.float32)[:, None], 0.4, 0.2)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    e, m, s = random_outputs(rng, 2000)
    cpu = fit_predict(e, m, s, 0.3, 0.2)
    t = [torch.tensor(x, device="cuda") for x in (e, m, s)]
    got = fit_predict(*t, 0.3, 0.2)
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), cpu)


def test_path_equals_separate_calls():
    rng = np.random.default_rng(4)
    e, m, s = random_outputs(rng, 400, ties=True)
    s0s = np.linspace(0, 1, 11)
    for p0 in (0.05, 0.3):
        path = fit_predict_path(e, m, s, s0s, p0)
        for s0, lab in zip(s0s, path):
            np.testing.assert_array_equal(lab, fit_predict(e, m, s, s0, p0))


def test_bad_input():
    e, m, s = np.zeros((3, 3)), np.ones(3), np.full(3, 0.5)
    with pytest.raises(ValueError, match="length mismatch"):
        fit_predict(e, m[:2], s, 0.5, 0.1)
    with pytest.raises(ValueError, match="p0 must be in"):
        fit_predict(e, m, s, 0.5, 1.0)
    with pytest.raises(ValueError, match="p0 must be in"):
        fit_predict(e, m, s, 0.5, -0.1)
    with pytest.raises(ValueError, match="s0 must be in"):
        fit_predict(e, m, s, 1.5, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        fit_predict(e, m, np.array([0.5, np.nan, 0.1]), 0.5, 0.1)
    with pytest.raises(ValueError, match="margins must be >= 0"):
        fit_predict(e, -np.ones(3), s, 0.5, 0.1)
    empty = fit_predict(np.zeros((0, 3)), np.zeros(0), np.zeros(0), 0.5, 0.1)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_zero_margin_seed_claims_only_its_own_embedding():
    """2·sigmoid underflows to exactly 0 in float32 for very negative logits: a defined result, not an error."""
    e = np.array([[0.0, 0, 0], [0.0, 0, 0], [0.5, 0, 0], [0.5, 0, 0]], np.float32)
    m = np.zeros(4, np.float32)
    s = np.array([0.9, 0.1, 0.8, 0.2], np.float32)
    assert fit_predict(e, m, s, 0.0, 0.1).tolist() == [0, 0, 1, 1]


def test_cluster_event_per_class_unique_ids():
    rng = np.random.default_rng(5)
    e, m, s = random_outputs(rng, 240)
    sem = rng.integers(0, 3, 240)
    th = {0: (0.2, 0.1), 1: (0.5, 0.3), 2: (0.0, 0.05)}
    lab = cluster_event({"embedding": e, "margin": m[:, None], "seediness": s}, sem, th)
    offset = 0
    for c in range(3):
        idx = np.flatnonzero(sem == c)
        ref = reference(e[idx], m[idx], s[idx], *th[c])
        np.testing.assert_array_equal(lab[idx], ref + offset)
        offset += ref.max() + 1
    with pytest.raises(KeyError, match="semantic class 2"):
        cluster_event({"embedding": e, "margin": m, "seediness": s}, sem, {0: (0.2, 0.1), "1": (0.5, 0.3)})
    with pytest.raises(ValueError, match="length mismatch"):
        cluster_event({"embedding": e, "margin": m, "seediness": s}, sem[:10], th)
