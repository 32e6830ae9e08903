"""SPICE losses against direct loop-based float64 computations (SPEC §2)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from spice.data.event import Event, collate
from spice.losses import TERMS, SPICELoss, lovasz_hinge


# ---------------------------------------------------------------- independent reference computations
def jaccard_set_loss(mispredicted: set, positives: set) -> float:
    """Δ_J(M) = |M| / |P ∪ M| (Berman et al. 2018, eq. 5)."""
    union = positives | mispredicted
    return len(mispredicted) / len(union) if union else 0.0


def lovasz_extension_bruteforce(m: np.ndarray, positives: set) -> float:
    """Lovász extension of Δ_J at m ≥ 0 from its definition as a Choquet integral:
    f(m) = ∫_0^∞ Δ_J({i : m_i ≥ t}) dt, evaluated exactly on the distinct values of m."""
    levels = sorted(set(m.tolist()) | {0.0}, reverse=True)
    total = 0.0
    for upper, lower in zip(levels[:-1], levels[1:]):
        total += (upper - lower) * jaccard_set_loss({i for i in range(len(m)) if m[i] >= upper}, positives)
    return total


def lovasz_extension_max_over_orders(m: np.ndarray, positives: set) -> float:
    """For submodular Δ_J the extension is the max over all orderings of the greedy sum."""
    best = -math.inf
    for order in itertools.permutations(range(len(m))):
        value, prefix, previous = 0.0, set(), 0.0
        for i in order:
            prefix.add(i)
            current = jaccard_set_loss(prefix, positives)
            value += m[i] * (current - previous)
            previous = current
        best = max(best, value)
    return best


def mask_reference(name: str, p: np.ndarray, y: np.ndarray) -> float:
    if name == "lovasz_hinge":
        errors = 1.0 - (2.0 * p - 1.0) * (2.0 * y - 1.0)
        return lovasz_extension_bruteforce(np.maximum(errors, 0.0), {i for i in range(len(y)) if y[i]})
    if name == "bce":
        return float(np.mean([-(math.log(pi) if yi else math.log(1 - pi)) for pi, yi in zip(p, y)]))
    if name == "focal":
        pt = np.where(y > 0, p, 1 - p)
        return float(np.mean([-(1 - q) ** 2 * math.log(q) for q in pt]))
    if name == "dice":
        return 1.0 - (2.0 * float(np.sum(p * y)) + 1e-6) / (float(np.sum(p) + np.sum(y)) + 1e-6)
    raise KeyError(name)


def reference_losses(emb, margin, seed, bcol, sem, inst, loss: SPICELoss) -> dict[str, float]:
    """Loop over events, classes, clusters and voxels in float64 numpy."""
    per_event = []
    for b in sorted(set(bcol.tolist())):
        per_class = []
        for c in sorted(set(sem[(bcol == b) & (inst >= 0)].tolist())):
            if c in loss.skip_classes:
                continue
            V = [i for i in range(len(bcol)) if bcol[i] == b and sem[i] == c and inst[i] >= 0]
            if len(V) < loss.min_voxels:
                continue
            ids = sorted(set(inst[V].tolist()))
            clusters = [[i for i in V if inst[i] == t] for t in ids]
            clusters = [C for C in clusters if len(C) >= loss.min_voxels]
            if not clusters:
                continue
            mus = [np.mean([emb[i] for i in C], axis=0) for C in clusters]
            sigmas = [float(np.mean([margin[i] for i in C])) for C in clusters]
            masks, smooths, seeds = [], [], []
            for C, mu, sig in zip(clusters, mus, sigmas):
                p = {i: math.exp(-float(np.sum((emb[i] - mu) ** 2)) / (2 * sig ** 2)) for i in V}
                y = np.array([1.0 if i in C else 0.0 for i in V])
                masks.append(mask_reference(loss.mask_loss, np.array([p[i] for i in V]), y))
                smooths.append(np.mean([abs(margin[i] - sig) for i in C]))
                err = [seed[i] - p[i] for i in C]
                seeds.append(np.mean([e * e if loss.seed_loss == "l2" else abs(e) for e in err]))
            pairs = [(k, l) for k in range(len(mus)) for l in range(len(mus)) if k != l]
            inter = np.mean([max(0.0, 2 * loss.delta - float(np.linalg.norm(mus[k] - mus[l]))) ** 2
                             for k, l in pairs]) if pairs else 0.0
            per_class.append({"mask": np.mean(masks), "smoothing": np.mean(smooths), "inter": inter,
                              "seed": np.mean(seeds)})
        if per_class:
            per_event.append({t: np.mean([d[t] for d in per_class]) for t in per_class[0]})
    out = {t: float(np.mean([d[t] for d in per_event])) if per_event else 0.0
           for t in ("mask", "smoothing", "inter", "seed")}
    out["emb"] = loss.w_mask * out["mask"] + loss.w_smooth * out["smoothing"] + loss.w_inter * out["inter"]
    out["total"] = loss.gamma_seed * out["seed"] + loss.gamma_emb * out["emb"]
    return out


# ---------------------------------------------------------------- helpers
def random_event(rng: np.random.Generator, n: int, n_classes: int = 3, n_instances: int = 5) -> Event:
    coords = rng.integers(0, 32, size=(n, 3))
    semantic = rng.integers(0, n_classes, size=n)
    instance = rng.integers(-1, n_instances, size=n)  # some unlabelled voxels
    return Event(coords, rng.random(n).astype(np.float32), semantic, instance, spatial_size=32)


def random_outputs(rng: np.random.Generator, m: int) -> dict[str, torch.Tensor]:
    return {
        "embedding": torch.tensor(rng.normal(0, 0.3, size=(m, 3)), dtype=torch.float64, requires_grad=True),
        "margin": torch.tensor(rng.uniform(0.2, 1.5, size=(m, 1)), dtype=torch.float64, requires_grad=True),
        "seediness": torch.tensor(rng.uniform(0.01, 0.99, size=(m, 1)), dtype=torch.float64, requires_grad=True),
    }


def as_numpy(outputs, batch):
    return (outputs["embedding"].detach().numpy(), outputs["margin"].detach().numpy()[:, 0],
            outputs["seediness"].detach().numpy()[:, 0], batch.coords[:, 0].numpy(),
            batch.semantic.numpy(), batch.instance.numpy())


# ---------------------------------------------------------------- Lovász hinge
@pytest.mark.parametrize("seed", range(6))
def test_lovasz_hinge_matches_extension_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    labels = rng.integers(0, 2, size=n).astype(np.float64)
    logits = np.round(rng.uniform(-2, 2, size=n), 1)  # rounding creates ties
    got = lovasz_hinge(torch.tensor(logits)[:, None], torch.tensor(labels)[:, None]).item()
    m = np.maximum(1.0 - logits * (2 * labels - 1), 0.0)
    positives = {i for i in range(n) if labels[i]}
    assert got == pytest.approx(lovasz_extension_bruteforce(m, positives), abs=1e-12)
    assert got == pytest.approx(lovasz_extension_max_over_orders(m, positives), abs=1e-12)


def test_lovasz_hinge_columns_independent():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(9, 4)))
    labels = torch.tensor(rng.integers(0, 2, size=(9, 4)).astype(np.float64))
    both = lovasz_hinge(logits, labels)
    for k in range(4):
        assert both[k].item() == pytest.approx(lovasz_hinge(logits[:, k:k + 1], labels[:, k:k + 1]).item(), abs=1e-14)
    perfect = lovasz_hinge(2 * labels - 1, labels)  # margins of exactly 1 on the right side: zero loss
    assert torch.all(perfect == 0)


# ---------------------------------------------------------------- every term vs the loop reference
def make_batch(seed: int, sizes=(40, 33)):
    rng = np.random.default_rng(seed)
    batch = collate([random_event(rng, n) for n in sizes])
    return batch, random_outputs(rng, batch.coords.shape[0])


@pytest.mark.parametrize("mask_loss", ["lovasz_hinge", "bce", "focal", "dice"])
@pytest.mark.parametrize("seed_loss", ["l2", "l1"])
def test_terms_match_loop_reference(mask_loss, seed_loss):
    batch, outputs = make_batch(0)
    loss = SPICELoss(mask_loss=mask_loss, seed_loss=seed_loss, w_mask=0.7, w_smooth=1.3, w_inter=2.0,
                     gamma_seed=0.5, gamma_emb=1.5, delta=0.4, min_voxels=2)
    got = loss(outputs, batch)
    want = reference_losses(*as_numpy(outputs, batch), loss)
    assert set(got) == set(TERMS)
    assert want["inter"] > 0 and want["seed"] > 0
    for term in TERMS:
        assert got[term].dim() == 0
        assert got[term].item() == pytest.approx(want[term], rel=1e-10, abs=1e-12), term


def test_min_voxels_and_skip_classes_match_reference():
    batch, outputs = make_batch(3, sizes=(60, 25))
    for kw in ({"min_voxels": 4}, {"skip_classes": (1,)}, {"min_voxels": 1}):
        loss = SPICELoss(**kw)
        got = loss(outputs, batch)
        want = reference_losses(*as_numpy(outputs, batch), loss)
        for term in TERMS:
            assert got[term].item() == pytest.approx(want[term], rel=1e-10, abs=1e-12), (kw, term)


def test_low_precision_outputs_close_to_float64_reference():
    batch, outputs = make_batch(5)
    loss = SPICELoss()
    got = loss({k: v.float() for k, v in outputs.items()}, batch)
    assert got["total"].dtype == torch.float32
    assert loss({k: v.bfloat16() for k, v in outputs.items()}, batch)["total"].dtype == torch.float32
    want = reference_losses(*as_numpy(outputs, batch), loss)
    assert got["total"].item() == pytest.approx(want["total"], rel=1e-5)


# ---------------------------------------------------------------- gradients flow only where SPEC says
def grads(term: str, outputs, batch, **kw):
    for t in outputs.values():
        t.grad = None
    SPICELoss(**kw)(outputs, batch)[term].backward()
    return {k: (torch.zeros_like(v) if v.grad is None else v.grad) for k, v in outputs.items()}


def test_seed_loss_target_detached():
    batch, outputs = make_batch(1)
    g = grads("seed", outputs, batch)
    assert torch.all(g["embedding"] == 0) and torch.all(g["margin"] == 0)
    assert g["seediness"].abs().sum() > 0


def test_smoothing_gradient_only_through_sigma_i():
    event = Event(np.zeros((7, 3), dtype=np.int64), np.ones(7, dtype=np.float32),
                  np.zeros(7, dtype=np.int64), np.array([0, 0, 0, 1, 1, 1, 1]), spatial_size=8)
    batch = collate([event])
    margin = torch.tensor([[0.2], [0.5], [0.9], [1.0], [1.1], [1.3], [0.4]], dtype=torch.float64, requires_grad=True)
    outputs = {"embedding": torch.zeros(7, 3, dtype=torch.float64, requires_grad=True), "margin": margin,
               "seediness": torch.full((7, 1), 0.5, dtype=torch.float64, requires_grad=True)}
    g = grads("smoothing", outputs, batch)
    # d/dσ_j of mean_k mean_{i∈C_k} |σ_i − sg(σ_k)| = sign(σ_j − σ_k) / (K |C_k|)
    m = margin.detach()[:, 0]
    sig = [m[:3].mean(), m[3:].mean()]
    want = torch.tensor([torch.sign(m[j] - sig[0]) / (2 * 3) for j in range(3)]
                        + [torch.sign(m[j] - sig[1]) / (2 * 4) for j in range(3, 7)], dtype=torch.float64)
    assert torch.allclose(g["margin"][:, 0], want, atol=1e-15)
    assert torch.all(g["embedding"] == 0) and torch.all(g["seediness"] == 0)


def test_embedding_terms_do_not_touch_seediness():
    batch, outputs = make_batch(2)
    for term in ("mask", "inter", "emb"):
        g = grads(term, outputs, batch)
        assert torch.all(g["seediness"] == 0), term
    g = grads("mask", outputs, batch)
    assert g["embedding"].abs().sum() > 0 and g["margin"].abs().sum() > 0
    g = grads("inter", outputs, batch, delta=2.0)
    assert torch.all(g["margin"] == 0) and g["embedding"].abs().sum() > 0


# ---------------------------------------------------------------- edge cases and batch averaging
def single(instance) -> Event:
    """One event of class 0 with the given instance labels."""
    instance = np.asarray(instance, dtype=np.int64)
    n = len(instance)
    return Event(np.arange(3 * n).reshape(n, 3) % 8, np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.int64),
                 instance, 8)


@pytest.mark.parametrize("instance", [[0, 0, 0, 0], [3], [-1, -1, -1], []])
@pytest.mark.parametrize("mask_loss", ["lovasz_hinge", "bce", "focal", "dice"])
def test_degenerate_events_finite(instance, mask_loss):
    batch = collate([single(instance)])
    outputs = random_outputs(np.random.default_rng(0), len(instance))
    out = SPICELoss(mask_loss=mask_loss)(outputs, batch)
    for term in TERMS:
        assert torch.isfinite(out[term]), term
    assert out["inter"].item() == 0.0  # K < 2 in every case
    out["total"].backward()
    for t in outputs.values():
        assert t.grad is None or torch.all(torch.isfinite(t.grad))
    if all(i < 0 for i in instance):
        assert all(out[t].item() == 0.0 for t in TERMS)


def test_identical_centroids_give_finite_gradient():
    batch = collate([single([0, 0, 1, 1])])
    outputs = {"embedding": torch.zeros(4, 3, requires_grad=True),
               "margin": torch.ones(4, 1, requires_grad=True), "seediness": torch.full((4, 1), 0.5, requires_grad=True)}
    out = SPICELoss()(outputs, batch)
    assert out["inter"].item() == pytest.approx((2 * 0.2) ** 2, rel=1e-5)
    out["total"].backward()
    assert torch.all(torch.isfinite(outputs["embedding"].grad))


def test_batch_is_mean_of_single_events():
    rng = np.random.default_rng(7)
    events = [random_event(rng, 50), random_event(rng, 30)]
    outs = random_outputs(rng, 80)
    loss = SPICELoss()
    both = loss(outs, collate(events))
    first = loss({k: v[:50] for k, v in outs.items()}, collate(events[:1]))
    second = loss({k: v[50:] for k, v in outs.items()}, collate(events[1:]))
    for term in TERMS:
        assert both[term].item() == pytest.approx((first[term].item() + second[term].item()) / 2, rel=1e-6)


def test_event_index_taken_from_batch_column():
    batch, outputs = make_batch(4)
    perm = torch.randperm(batch.coords.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = type(batch)(batch.coords[perm], batch.energy[perm], batch.semantic[perm], batch.instance[perm],
                           batch.offsets, batch.spatial_size, batch.labels, batch.sources)
    a = SPICELoss()(outputs, batch)
    b = SPICELoss()({k: v[perm] for k, v in outputs.items()}, shuffled)
    for term in TERMS:
        assert a[term].item() == pytest.approx(b[term].item(), rel=1e-6)


def test_bad_options_rejected():
    with pytest.raises(ValueError, match="mask_loss"):
        SPICELoss(mask_loss="iou")
    with pytest.raises(ValueError, match="seed_loss"):
        SPICELoss(seed_loss="l3")


def test_gradients_bit_identical_on_two_threads():
    """Deterministic by seed on CPU: the loss's gathers must not add repeated indices by parallel atomics
    (values[index]'s backward does so in float32 from 32768 entries on with several threads)."""
    rng = np.random.default_rng(3)
    batch = collate([random_event(rng, 12000, n_classes=1, n_instances=8)])
    base = {k: v.detach().float() for k, v in random_outputs(rng, 12000).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(4):
            outputs = {k: v.clone().requires_grad_(True) for k, v in base.items()}
            SPICELoss()(outputs, batch)["total"].backward()
            grads.append([outputs[k].grad for k in sorted(outputs)])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))
