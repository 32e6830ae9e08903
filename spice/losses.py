"""SPICE training losses (SPEC §2): embedding (mask + smoothing + inter-cluster) and seediness.

For every event b and every true semantic class c present in b, let V be the labelled voxels of
class c (instance ≥ 0) and C_1..C_K the true instances among them with at least `min_voxels` voxels
(smaller instances are not clusters, but their voxels stay in V as negatives of every mask). With
embeddings e_i (3, normalised units), margins σ_i (0, 2) and seediness s_i (0, 1):

    μ_k = mean_{i∈C_k} e_i,   σ_k = mean_{i∈C_k} σ_i,   p_ik = exp(−‖e_i − μ_k‖² / (2 σ_k²))  (i ∈ V)
    L_mask   = mean_k maskloss(p_·k, 1[i∈C_k])           Lovász hinge on 2p−1 (default), BCE, focal, dice
    L_smooth = mean_k mean_{i∈C_k} |σ_i − sg(σ_k)|
    L_inter  = mean_{k≠l} max(0, 2δ − ‖μ_k − μ_l‖)²       (0 when K < 2)
    L_seed   = mean_k mean_{i∈C_k} (s_i − sg(p_ik))²     (or |·| with seed_loss="l1")
    L_emb    = w_mask L_mask + w_smooth L_smooth + w_inter L_inter,   total = γ_seed L_seed + γ_emb L_emb

Every term is averaged over the classes of an event, then over the events of the batch that have at
least one class with a cluster (events with nothing to learn from are left out of the mean; a batch
without any such event gives zeros that still backpropagate). Outputs without "seediness" (training
stage 1 skips the frozen seediness decoder) give L_seed = 0 and leave every other term unchanged.

All groups are computed at once, with no Python loop over events, classes or clusters: every pair
(voxel i of V, cluster k of V) of every group in one flat array, sums per cluster and per group by
index_add, and the Lovász hinge of every cluster from two stable sorts (benchmarks/bench_loss.py: the same values
as the loop to float64 rounding, with 374 operators instead of 2,822 at batch 4 and 20,920 at batch 32,
each a kernel launch on CUDA, and a handful of host syncs instead of one per class).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spice.data.event import Batch

TERMS = ("total", "emb", "mask", "smoothing", "inter", "seed")


def segment_sum(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Sum of `values` (P,) over each of `n_segments` segments (segment (P,) in [0, n_segments)) -> (n_segments,)."""
    return values.new_zeros(n_segments).index_add(0, segment, values)


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] along dim 0, for values that need a gradient: by index_select, whose backward (index_add)
    sums repeated indices in a fixed order. The backward of values[index] (index_put with accumulate) adds them
    by parallel atomics on a multi-threaded CPU once there are 32768 or more, so two runs would differ."""
    return values.index_select(0, index)


def ranges(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For lengths (S,): (owner, offset), each (Σ lengths,): entry j of range s has owner s and offset j."""
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    offset = torch.arange(len(owner), device=lengths.device) - torch.repeat_interleave(
        torch.cumsum(lengths, 0) - lengths, lengths)
    return owner, offset


def lovasz_hinge_segments(logits: torch.Tensor, labels: torch.Tensor, segment: torch.Tensor,
                          n_segments: int) -> torch.Tensor:
    """Binary Lovász hinge of each segment: logits, labels (P,) (labels in {0, 1}), segment (P,) -> (S,).

    errors = 1 − logit·(2y − 1); loss = ⟨relu(errors sorted decreasingly), ∇Δ_J(labels in that order)⟩, with
    ∇Δ_J the gradient of the Lovász extension of the Jaccard loss (Berman et al. 2018, eq. 9): the j-th entry
    is Δ_J({π_1..π_j}) − Δ_J({π_1..π_{j−1}}), Δ_J of the first j voxels wrong = 1 − IoU. All segments at once:
    a stable sort by error, then a stable sort by segment, and cumulative counts within each segment.
    """
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    by_error = torch.sort(errors, descending=True, stable=True).indices
    order = by_error[torch.sort(segment[by_error], stable=True).indices]     # by segment, then error down
    seg, gt = segment[order], labels[order].long()
    sizes = torch.bincount(seg, minlength=n_segments)
    before = (torch.cumsum(sizes, 0) - sizes)[seg]                           # start of each pair's segment
    gt_cum = torch.cumsum(gt, 0)
    gt_seen = gt_cum - (gt_cum - gt)[before]                                 # positives among the first j
    seen = torch.arange(1, len(seg) + 1, device=seg.device) - before         # j
    positives = segment_sum(gt.to(errors.dtype), seg, n_segments)[seg]
    jaccard = 1.0 - (positives - gt_seen) / (positives + (seen - gt_seen))
    first = seen == 1
    step = jaccard - torch.where(first, torch.zeros_like(jaccard), jaccard.roll(1))
    return segment_sum(F.relu(take(errors, order)) * step, seg, n_segments)


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge per column: logits, labels (n, K) (labels in {0, 1}) -> (K,)."""
    n, k = logits.shape
    column = torch.arange(k, device=logits.device).repeat_interleave(n)
    return lovasz_hinge_segments(logits.t().reshape(-1), labels.t().reshape(-1), column, k)


def bce(p: torch.Tensor, labels: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Binary cross-entropy of probabilities p (P,) vs labels, mean over each segment's voxels -> (S,)."""
    values = F.binary_cross_entropy(p, labels, reduction="none")
    return segment_sum(values, segment, n_segments) / segment_sum(torch.ones_like(p), segment, n_segments)


def focal(p: torch.Tensor, labels: torch.Tensor, segment: torch.Tensor, n_segments: int,
          gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, α = 1): −(1 − p_t)^γ log p_t, mean over each segment's voxels -> (S,)."""
    p_true = torch.where(labels > 0.5, p, 1.0 - p)
    values = -(1.0 - p_true) ** gamma * torch.log(p_true.clamp_min(1e-12))
    return segment_sum(values, segment, n_segments) / segment_sum(torch.ones_like(p), segment, n_segments)


def dice(p: torch.Tensor, labels: torch.Tensor, segment: torch.Tensor, n_segments: int,
         eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice loss 1 − (2 Σ p y + ε) / (Σ p + Σ y + ε) over each segment's voxels -> (S,)."""
    overlap = segment_sum(p * labels, segment, n_segments)
    return 1.0 - (2.0 * overlap + eps) / (segment_sum(p + labels, segment, n_segments) + eps)


MASK_LOSSES = {  # (p, labels, segment, n_segments) -> (n_segments,): one value per cluster
    "lovasz_hinge": lambda p, y, seg, k: lovasz_hinge_segments(2.0 * p - 1.0, y, seg, k),
    "bce": bce,
    "focal": focal,
    "dice": dice,
}


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 network outputs (autocast) are promoted; float32 and float64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class SPICELoss:
    """Callable loss: `SPICELoss(...)(outputs, batch) -> dict` of scalar tensors named in TERMS.

    outputs: {"embedding": (M,3), "margin": (M,1), "seediness": (M,1) (optional)} aligned with batch rows.
    min_voxels: instances with fewer voxels are not clusters; classes with fewer labelled voxels are
    skipped. skip_classes: semantic labels left out entirely.
    """

    mask_loss: str = "lovasz_hinge"
    seed_loss: str = "l2"
    w_mask: float = 1.0
    w_smooth: float = 1.0
    w_inter: float = 1.0
    gamma_seed: float = 1.0
    gamma_emb: float = 1.0
    delta: float = 0.2
    min_voxels: int = 1
    skip_classes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.mask_loss not in MASK_LOSSES:
            raise ValueError(f"unknown mask_loss {self.mask_loss!r}; choose from {sorted(MASK_LOSSES)}")
        if self.seed_loss not in ("l2", "l1"):
            raise ValueError(f"unknown seed_loss {self.seed_loss!r}; choose 'l2' or 'l1'")
        self.skip_classes = tuple(int(c) for c in self.skip_classes)

    def __call__(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        emb, margin = (_at_least_float32(outputs[k]) for k in ("embedding", "margin"))
        seed = _at_least_float32(outputs["seediness"]).reshape(-1) if "seediness" in outputs else None
        margin = margin.reshape(-1)
        device = emb.device
        event_of = batch.coords[:, 0].to(device)   # batch index from the batch column
        semantic = batch.semantic.to(device)
        instance = batch.instance.to(device)
        labelled = instance >= 0
        if self.skip_classes:
            labelled &= ~torch.isin(semantic, torch.tensor(self.skip_classes, device=device))
        rows = torch.nonzero(labelled).squeeze(1)
        # every (event, class) group V and every true instance of it, all at once: clusters sorted by group
        ev, sem, ins = event_of[rows].long(), semantic[rows].long(), instance[rows].long()
        if len(rows):
            sem = sem - sem.min()
        n_sem, n_ins = (int(x.max()) + 1 if len(rows) else 1 for x in (sem, ins))
        group_key = ev * n_sem + sem                                             # one integer per (event, class)
        ids, instance_of_row, counts = torch.unique(group_key * n_ins + ins, return_inverse=True, return_counts=True)
        groups, group_of_id = torch.unique(ids // n_ins, return_inverse=True)
        kept = counts >= self.min_voxels
        active = torch.zeros(len(groups), dtype=torch.bool, device=device).index_fill(0, group_of_id[kept], True)
        row_group = group_of_id[instance_of_row]
        in_active = active[row_group]
        rows, row_group, instance_of_row = rows[in_active], row_group[in_active], instance_of_row[in_active]
        order = torch.sort(row_group, stable=True).indices                      # rows grouped
        rows, row_group, instance_of_row = rows[order], row_group[order], instance_of_row[order]
        # renumber: active groups 0..G-1, kept clusters 0..K-1 (in group order), −1 for small instances
        new_group = torch.cumsum(active.long(), 0) - 1
        row_group = new_group[row_group]
        cluster_of_id = torch.cumsum(kept.long(), 0) - 1
        cluster_of_id[~kept] = -1
        label = cluster_of_id[instance_of_row]                                   # (n,) cluster of each row
        cluster_group = new_group[group_of_id[kept]]                             # (K,)
        n_groups, k = int(active.sum()), int(kept.sum())
        if k == 0:  # nothing labelled: zero losses that are still connected to the graph
            zero = (emb.sum() + margin.sum() + (0.0 if seed is None else seed.sum())) * 0.0
            return self._combine({t: zero for t in ("mask", "smoothing", "inter", "seed")})
        n_k = counts[kept].to(emb.dtype)
        group_size = torch.bincount(row_group, minlength=n_groups)               # |V| per group
        group_start = torch.cumsum(group_size, 0) - group_size
        k_of_group = torch.bincount(cluster_group, minlength=n_groups)           # K per group
        e, m = take(emb, rows), take(margin, rows)
        members = torch.nonzero(label >= 0).squeeze(1)
        member_label = label[members]

        def per_cluster_mean(values: torch.Tensor) -> torch.Tensor:  # values over members -> (K,)
            return segment_sum(values, member_label, k) / n_k

        def per_group_mean(values: torch.Tensor) -> torch.Tensor:    # (K,) -> mean over each group's clusters
            return segment_sum(values, cluster_group, n_groups) / k_of_group.to(values.dtype)

        m_members = take(m, members)
        mu = torch.zeros(k, 3, dtype=emb.dtype, device=device).index_add(0, member_label, take(e, members)) / n_k[:, None]
        sigma = per_cluster_mean(m_members)                                      # (K,)
        # pairs (voxel i of V, cluster k of V): all of them, cluster by cluster
        pair_cluster, within = ranges(group_size[cluster_group])
        pair_row = group_start[cluster_group][pair_cluster] + within
        dist2 = ((take(e, pair_row) - take(mu, pair_cluster)) ** 2).sum(-1)
        p = torch.exp(-dist2 / (2.0 * take(sigma, pair_cluster) ** 2))           # p_ik for every pair
        target = (label[pair_row] == pair_cluster).to(emb.dtype)
        terms = {"mask": per_group_mean(MASK_LOSSES[self.mask_loss](p, target, pair_cluster, k)),
                 "smoothing": per_group_mean(per_cluster_mean((m_members - sigma.detach()[member_label]).abs()))}
        # ordered pairs (k, l ≠ k) of clusters of the same group
        pair_k, within = ranges(k_of_group[cluster_group])
        first_of_group = (torch.cumsum(k_of_group, 0) - k_of_group)[cluster_group]
        pair_l = first_of_group[pair_k] + within
        off = pair_k != pair_l
        pair_k, pair_l = pair_k[off], pair_l[off]
        gap = torch.sqrt(((take(mu, pair_k) - take(mu, pair_l)) ** 2).sum(-1).clamp_min(1e-12))  # no NaN grad at 0
        n_pairs = (k_of_group * (k_of_group - 1)).clamp_min(1).to(emb.dtype)   # K < 2: inter 0
        terms["inter"] = segment_sum(F.relu(2.0 * self.delta - gap) ** 2, cluster_group[pair_k], n_groups) / n_pairs
        if seed is None:  # no seediness output (stage 1)
            terms["seed"] = torch.zeros(n_groups, dtype=emb.dtype, device=device)
        else:
            hit = torch.nonzero(target).squeeze(1)                               # (i, k) with i ∈ C_k
            error = take(seed, rows[pair_row[hit]]) - p[hit].detach()
            error = error ** 2 if self.seed_loss == "l2" else error.abs()
            terms["seed"] = per_group_mean(segment_sum(error, pair_cluster[hit], k) / n_k)
        # mean over the classes of each event, then over the events that have one
        event_of_group = torch.unique(groups[active] // n_sem, return_inverse=True)[1]
        n_events = int(event_of_group.max()) + 1
        classes = torch.bincount(event_of_group, minlength=n_events).to(emb.dtype)
        return self._combine({t: (segment_sum(v, event_of_group, n_events) / classes).mean()
                              for t, v in terms.items()})

    def _combine(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out["emb"] = self.w_mask * out["mask"] + self.w_smooth * out["smoothing"] + self.w_inter * out["inter"]
        out["total"] = self.gamma_seed * out["seed"] + self.gamma_emb * out["emb"]
        return {t: out[t] for t in TERMS}
