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
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spice.data.event import Batch

TERMS = ("total", "emb", "mask", "smoothing", "inter", "seed")


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    gt_sorted (n, K) in {0, 1}, the labels in the order of decreasing error. Returns (n, K):
    Δ_J({π_1..π_j}) − Δ_J({π_1..π_{j−1}}) with Δ_J(M) = |M| / |P ∪ M| (Berman et al. 2018, eq. 9),
    written as 1 − IoU of the prediction that gets the first j voxels wrong.
    """
    positives = gt_sorted.sum(0, keepdim=True)
    intersection = positives - gt_sorted.cumsum(0)
    union = positives + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge per column: logits, labels (n, K) (labels in {0, 1}) -> (K,).

    errors = 1 − logit·(2y − 1); loss = ⟨relu(errors sorted decreasingly), lovasz_grad(labels in that order)⟩.
    """
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    return (F.relu(errors_sorted) * lovasz_grad(torch.gather(labels, 0, order))).sum(0)


def bce(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of probabilities p (n, K) vs labels, mean over voxels -> (K,)."""
    return F.binary_cross_entropy(p, labels, reduction="none").mean(0)


def focal(p: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017, α = 1): −(1 − p_t)^γ log p_t, mean over voxels -> (K,)."""
    p_true = torch.where(labels > 0.5, p, 1.0 - p)
    log_p_true = torch.log(p_true.clamp_min(1e-12))
    return (-(1.0 - p_true) ** gamma * log_p_true).mean(0)


def dice(p: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice loss 1 − (2 Σ p y + ε) / (Σ p + Σ y + ε) over voxels -> (K,)."""
    return 1.0 - (2.0 * (p * labels).sum(0) + eps) / (p.sum(0) + labels.sum(0) + eps)


MASK_LOSSES = {
    "lovasz_hinge": lambda p, y: lovasz_hinge(2.0 * p - 1.0, y),
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

    def class_terms(self, emb: torch.Tensor, margin: torch.Tensor, seed: torch.Tensor | None,
                    instance: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Terms for the voxels V of one class: emb (n,3), margin (n,), seed (n,) or None, instance (n,) ≥ 0.

        Returns mask, smoothing, inter, seed (unweighted scalars), or None when there is no cluster.
        """
        if instance.numel() < max(self.min_voxels, 1):
            return None
        _, inverse, counts = torch.unique(instance, return_inverse=True, return_counts=True)
        kept = counts >= self.min_voxels
        if not bool(kept.any()):
            return None
        # cluster index of every voxel of V (−1 for voxels of skipped small instances)
        cluster_of_id = torch.full_like(counts, -1)
        cluster_of_id[kept] = torch.arange(int(kept.sum()), device=instance.device)
        label = cluster_of_id[inverse]
        n_k = counts[kept].to(emb.dtype)
        k = int(n_k.numel())
        members = torch.nonzero(label >= 0).squeeze(1)
        member_label = label[members]

        def per_cluster_mean(values: torch.Tensor) -> torch.Tensor:  # values over members -> (K,)
            return torch.zeros(k, dtype=values.dtype, device=values.device).index_add(
                0, member_label, values) / n_k

        mu = torch.zeros(k, emb.shape[1], dtype=emb.dtype, device=emb.device).index_add(
            0, member_label, emb[members]) / n_k[:, None]                           # (K,3)
        sigma = per_cluster_mean(margin[members])                                    # (K,)
        dist2 = ((emb[:, None, :] - mu[None, :, :]) ** 2).sum(-1)                    # (n,K)
        p = torch.exp(-dist2 / (2.0 * sigma[None, :] ** 2))                          # (n,K)
        target = F.one_hot(label.clamp_min(0), k).to(emb.dtype) * (label >= 0)[:, None].to(emb.dtype)

        mask = MASK_LOSSES[self.mask_loss](p, target).mean()
        smoothing = per_cluster_mean((margin[members] - sigma.detach()[member_label]).abs()).mean()
        if k >= 2:
            pair2 = ((mu[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
            off_diagonal = ~torch.eye(k, dtype=torch.bool, device=emb.device)
            gap = torch.sqrt(pair2[off_diagonal].clamp_min(1e-12))                   # no NaN grad at 0
            inter = (F.relu(2.0 * self.delta - gap) ** 2).mean()
        else:
            inter = emb.sum() * 0.0
        if seed is None:  # no seediness output (stage 1)
            return {"mask": mask, "smoothing": smoothing, "inter": inter, "seed": emb.new_zeros(())}
        seed_error = seed[members] - p[members, member_label].detach()
        seed_error = seed_error ** 2 if self.seed_loss == "l2" else seed_error.abs()
        return {"mask": mask, "smoothing": smoothing, "inter": inter,
                "seed": per_cluster_mean(seed_error).mean()}

    def __call__(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        emb, margin = (_at_least_float32(outputs[k]) for k in ("embedding", "margin"))
        seed = _at_least_float32(outputs["seediness"]).reshape(-1) if "seediness" in outputs else None
        margin = margin.reshape(-1)
        event_of = batch.coords[:, 0].to(emb.device)   # batch index from the batch column
        semantic = batch.semantic.to(emb.device)
        instance = batch.instance.to(emb.device)
        parts = ("mask", "smoothing", "inter", "seed")
        per_event: list[dict[str, torch.Tensor]] = []
        for b in torch.unique(event_of).tolist():
            rows_b = (event_of == b) & (instance >= 0)
            per_class = []
            for c in torch.unique(semantic[rows_b]).tolist():
                if c in self.skip_classes:
                    continue
                rows = torch.nonzero(rows_b & (semantic == c)).squeeze(1)
                seed_rows = None if seed is None else seed[rows]
                terms = self.class_terms(emb[rows], margin[rows], seed_rows, instance[rows])
                if terms is not None:
                    per_class.append(terms)
            if per_class:
                per_event.append({t: torch.stack([d[t] for d in per_class]).mean() for t in parts})
        if per_event:
            out = {t: torch.stack([d[t] for d in per_event]).mean() for t in parts}
        else:  # nothing labelled: zero losses that are still connected to the graph
            zero = (emb.sum() + margin.sum() + (0.0 if seed is None else seed.sum())) * 0.0
            out = {t: zero for t in parts}
        out["emb"] = self.w_mask * out["mask"] + self.w_smooth * out["smoothing"] + self.w_inter * out["inter"]
        out["total"] = self.gamma_seed * out["seed"] + self.gamma_emb * out["emb"]
        return {t: out[t] for t in TERMS}
