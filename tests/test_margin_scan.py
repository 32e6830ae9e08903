"""benchmarks/margin_scan.py: the margin each instance's own mask term asks for, the embedding held fixed."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import margin_scan  # noqa: E402
from spice.data.event import Event  # noqa: E402


def two_blobs(gap: float, n: int = 20):
    """One class, two instances of n voxels whose embeddings sit on two points `gap` apart (±0.01 jitter)."""
    rng = np.random.default_rng(0)
    centres = np.repeat([[0.0, 0.0, 0.0], [gap, 0.0, 0.0]], n, axis=0)
    embedding = centres + rng.uniform(-0.01, 0.01, centres.shape)
    coords = rng.integers(0, 32, (2 * n, 3))
    ev = Event(coords, np.ones(2 * n, np.float32), np.full(2 * n, 1), np.repeat([0, 1], n), 32)
    margin = np.r_[np.full(n, 0.3), np.full(n, 0.5)]
    return ev, {"embedding": embedding, "margin": margin[:, None]}


def test_best_sigma_sits_between_the_spread_and_the_gap():
    ev, out = two_blobs(gap=0.4)
    rows = margin_scan.instance_rows(ev, out)
    assert [r["voxels"] for r in rows] == [20, 20]
    assert [r["learned_sigma"] for r in rows] == pytest.approx([0.3, 0.5])
    for r in rows:
        # the scan's minimum: wide enough to hold the blob (spread ~0.01), narrow enough to leave the other
        assert r["spread"] < r["best_sigma"] < 0.4
        assert r["mask_at_best"] <= r["mask_at_learned"]
    # with the other instance ten times further away a wider σ costs nothing on it, so the best σ grows
    far = margin_scan.instance_rows(*two_blobs(gap=4.0))
    assert all(f["best_sigma"] > r["best_sigma"] for f, r in zip(far, rows))


def test_small_instances_are_left_out():
    ev, out = two_blobs(gap=0.4, n=5)
    assert margin_scan.instance_rows(ev, out, min_voxels=10) == []
