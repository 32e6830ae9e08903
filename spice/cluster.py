"""Greedy seed clustering of SPICE outputs into particle instances (SPEC §4).

For the N voxels of one semantic class: repeatedly take the unassigned voxel of highest seediness
(ties: lowest index) while its seediness is >= s0, use its own embedding as centre and its own margin
as σ, compute p_i = exp(−‖e_i − e_seed‖² / (2σ²)) for all N voxels, and mark p > p0 as assigned.
Finally every voxel takes the seed of largest p (ties: the earlier seed); labels are 0..K−1 in
seed order, and with no seed at all every voxel is one cluster (label 0). Scores are compared as
log p (exact in real arithmetic): a literal float exp would underflow to 0 for voxels more than
~14σ (float32) from every seed and send them all to the first seed instead of the nearest.

Implementation (device-agnostic torch, numpy in → numpy out):
- the next seed is one argmax over the seediness of unassigned voxels (assigned ones set to −inf);
  the seed s values are therefore non-increasing and the seeds for a larger s0 are a prefix of those
  for a smaller s0 (`fit_predict_path` uses this to cluster a whole s0 grid in one pass);
- a running (best p, best seed) pair per voxel replaces the (N, K) table of scores, so memory is O(N).

Why p0 must be < 1: the seed's own p is exp(0) = 1, and it is marked only if 1 > p0. With p0 >= 1
a naive loop never marks its seed, picks the same voxel again and loops forever (the reference code
does). p0 < 0 would mark everything at the first seed and is rejected as meaningless.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

OUTPUT_KEYS = ("embedding", "margin", "seediness")


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


def _check_thresholds(s0s: Sequence[float], p0: float) -> None:
    if not 0.0 <= p0 < 1.0:
        raise ValueError(f"p0 must be in [0, 1), got {p0}: a seed's own score is exp(0) = 1, so with "
                         "p0 >= 1 it would never be assigned and a naive loop would pick it forever")
    for s0 in s0s:
        if not 0.0 <= s0 <= 1.0:
            raise ValueError(f"s0 must be in [0, 1] (seediness is a sigmoid), got {s0}")


def _prepare(embedding, margin, seediness):
    """Validate and return (e (N,D), σ (N,), s (N,)) as floating tensors on the input's device."""
    e, m, s = (_as_tensor(x, k) for x, k in zip((embedding, margin, seediness), OUTPUT_KEYS))
    if e.ndim != 2:
        raise ValueError(f"embedding must have shape (N, D), got {tuple(e.shape)}")
    n = e.shape[0]
    if m.ndim == 2 and m.shape[1] == 1:
        m = m[:, 0]
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if m.shape != (n,) or s.shape != (n,):
        raise ValueError(f"length mismatch: embedding has {n} rows, margin {tuple(m.shape)}, "
                         f"seediness {tuple(s.shape)} (expected ({n},) or ({n}, 1))")
    dtype = torch.promote_types(e.dtype, torch.float32) if e.is_floating_point() else torch.float32
    e, m, s = e.to(dtype), m.to(dtype), s.to(dtype)
    if n:
        for name, t in zip(OUTPUT_KEYS, (e, m, s)):
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"{bad} {name} values are NaN or infinite: the network output is broken")
        if bool((m < 0).any()):
            raise ValueError(f"margins must be >= 0 (σ = 2·sigmoid), got min {float(m.min())}")
    return e, m, s


def _greedy_path(e: torch.Tensor, m: torch.Tensor, s: torch.Tensor, s0s: Sequence[float],
                 p0: float) -> list[torch.Tensor]:
    """Greedy clustering for every s0 in `s0s` in one pass; returns one (N,) int64 label tensor each.

    Works with log p = −‖e − c‖² / (2σ²): p > p0 ⟺ log p > log p0, and the final argmax is taken
    over log p, so far voxels whose p underflows to 0 still go to their most likely seed.
    """
    n, dev = e.shape[0], e.device
    if n == 0:
        return [torch.zeros(0, dtype=torch.int64, device=dev) for _ in s0s]
    et = e.T.contiguous()  # (D, N): per-coordinate rows make the distance cheap
    # log p = scale_seed · ‖e − c‖²; a margin that underflowed to 0 (2·sigmoid in float32) becomes the
    # smallest normal number, so such a seed claims only voxels at its own embedding
    scale = -0.5 / m.square().clamp_min(torch.finfo(e.dtype).tiny)
    log_p0 = float(np.log(p0)) if p0 > 0 else -float("inf")
    floor = min(s0s)
    wanted = sorted(set(s0s), reverse=True)  # snapshots needed, in the order the seeds reach them

    free_s = s.clone()  # seediness of unassigned voxels, −inf once assigned
    best_logp = torch.full((n,), -float("inf"), dtype=e.dtype, device=dev)
    best_k = torch.zeros(n, dtype=torch.int64, device=dev)
    snapshots: dict[float, torch.Tensor] = {}
    k = 0
    while True:
        i = torch.argmax(free_s)  # first maximum: ties go to the lowest index
        s_i = float(free_s[i])  # non-increasing from seed to seed
        while wanted and not s_i >= wanted[0]:
            snapshots[wanted.pop(0)] = best_k.clone()  # the greedy loop for this s0 stops here
        if not s_i >= floor:  # also stops when everything is assigned (−inf)
            break
        d = et - et[:, i, None]
        logp = (d * d).sum(0) * scale[i]
        better = logp > best_logp  # strict: ties keep the earlier seed
        torch.maximum(best_logp, logp, out=best_logp)
        best_k.masked_fill_(better, k)
        free_s.masked_fill_(logp > log_p0, -float("inf"))
        free_s[i] = -float("inf")  # its own p is 1 > p0; explicit so rounding can never stall the loop
        k += 1
    return [snapshots[s0] for s0 in s0s]


def fit_predict_path(embedding, margin, seediness, s0s: Sequence[float], p0: float) -> list:
    """Labels for each s0 in `s0s` at one p0, from a single greedy pass (used by threshold tuning).

    Same inputs and outputs as `fit_predict`; returns a list aligned with `s0s`.
    """
    s0s = [float(x) for x in s0s]
    _check_thresholds(s0s, float(p0))
    e, m, s = _prepare(embedding, margin, seediness)
    out = _greedy_path(e, m, s, s0s, float(p0))
    return [o.numpy() for o in out] if isinstance(embedding, np.ndarray) else out


def fit_predict(embedding, margin, seediness, s0: float, p0: float):
    """Cluster the voxels of one class of one event (SPEC §4).

    embedding (N,3), margin (N,) or (N,1), seediness (N,) or (N,1): torch (any device) or numpy.
    s0 in [0, 1], p0 in [0, 1). Returns (N,) int64 labels 0..K−1 in seed order, same type and device
    as `embedding`. Empty input gives empty labels.
    """
    return fit_predict_path(embedding, margin, seediness, [s0], p0)[0]


def cluster_event(outputs: Mapping, semantic, thresholds: Mapping[int, tuple[float, float]]):
    """Cluster a whole event class by class with per-class (s0, p0); instance ids unique across classes.

    outputs: dict with embedding (N,3), margin (N,)/(N,1), seediness (N,)/(N,1) (torch or numpy);
    semantic (N,) int class per voxel. Classes are processed in increasing order and their labels
    offset so ids run 0..K_total−1. Returns (N,) int64 of the type/device of outputs["embedding"].
    """
    missing_keys = [k for k in OUTPUT_KEYS if k not in outputs]
    if missing_keys:
        raise KeyError(f"network outputs lack {missing_keys}")
    e, m, s = _prepare(*(outputs[k] for k in OUTPUT_KEYS))
    sem = _as_tensor(semantic, "semantic").to(e.device)
    if sem.shape != (e.shape[0],):
        raise ValueError(f"length mismatch: {e.shape[0]} output rows but semantic has shape {tuple(sem.shape)}")
    table = {int(c): v for c, v in thresholds.items()}
    order = torch.argsort(sem, stable=True)  # classes become contiguous slices
    classes, counts = torch.unique_consecutive(sem[order], return_counts=True)
    e, m, s = e[order], m[order], s[order]
    sorted_labels = torch.empty(e.shape[0], dtype=torch.int64, device=e.device)
    start = offset = 0
    for c, count in zip(classes.tolist(), counts.tolist()):
        if c not in table:
            raise KeyError(f"no clustering thresholds for semantic class {c} (have {sorted(table)})")
        s0, p0 = table[c]
        _check_thresholds([float(s0)], float(p0))
        sl = slice(start, start + count)
        lab = _greedy_path(e[sl], m[sl], s[sl], [float(s0)], float(p0))[0]
        sorted_labels[sl] = lab + offset
        offset += int(lab.max()) + 1
        start += count
    labels = torch.empty_like(sorted_labels)
    labels[order] = sorted_labels
    return labels.numpy() if isinstance(outputs["embedding"], np.ndarray) else labels
