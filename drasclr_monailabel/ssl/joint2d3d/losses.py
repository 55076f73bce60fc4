"""Objectives of the joint image-volume method: SwAV, DeepCluster-v2 and masked token prediction.

* :func:`sinkhorn` turns prototype scores into soft codes with equal use of every prototype over
  the batch (all ranks together under DDP), which is what keeps the clustering from collapsing.
* :func:`swav_codes` adds the rows of a feature queue to the Sinkhorn step (small batches) and
  keeps the batch's codes; :func:`swapped_prediction_loss` (SwAV): the code of one view is the
  target of the others; :func:`code_entropy` says how sharp the targets are.
* :class:`ClusterMemory` + :func:`cluster_target_loss` (DeepCluster-v2): spherical k-means on a
  memory bank of projections gives every sample a cluster per head; each crop predicts it.
* :func:`masked_prediction_loss`: cosine distance between predicted and stop-gradient, per-view
  centred target tokens, averaged over the masked tokens only (the public code averaged over all
  tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from drasclr_monailabel.ssl.distributed import DistContext

_KMEANS_CHUNK = 65536


def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int, context: DistContext | None = None) -> torch.Tensor:
    """Soft codes (N, K) from prototype scores (N, K): each row sums to 1, and over the samples of
    all ranks every prototype receives the same total mass (Sinkhorn-Knopp, ``iterations`` rounds)."""
    distributed = context is not None and context.distributed
    logits = scores.detach().float() / epsilon
    peak = logits.max()
    if distributed:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp(logits - peak).t()  # (K, N)
    k = q.shape[0]
    samples = torch.tensor(float(q.shape[1]), device=q.device)
    total = q.sum()
    if distributed:
        dist.all_reduce(samples)
        dist.all_reduce(total)
    q = q / total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(rows)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / samples
    return (q * samples).t()


def swav_codes(scores: torch.Tensor, epsilon: float, iterations: int, context: DistContext | None = None,
               queue_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Sinkhorn codes (B, K) of a batch's scores (B, K), no gradient.

    ``queue_scores`` (m, K): scores of queued projections with the current prototypes; they join
    the Sinkhorn step as extra rows (so equal prototype use is asked of B + m rows, not B) and
    their codes are dropped.
    """
    if queue_scores is None or queue_scores.shape[0] == 0:
        return sinkhorn(scores, epsilon, iterations, context)
    rows = torch.cat([scores.detach().float(), queue_scores.detach().float()])
    return sinkhorn(rows, epsilon, iterations, context)[: scores.shape[0]]


def swapped_prediction_loss(crop_scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """SwAV loss for one prototype head.

    Args:
        crop_scores: per crop, (B, K) scores of the same B samples.
        codes: the codes (B, K) of the first ``len(codes)`` crops (the global ones), each the
            target of every other crop.
    """
    total = crop_scores[0].new_zeros((), dtype=torch.float32)
    for i, target in enumerate(codes):
        others = [s for j, s in enumerate(crop_scores) if j != i]
        for scores in others:
            total = total - (target * F.log_softmax(scores.float() / temperature, dim=1)).sum(dim=1).mean() / len(others)
    return total / len(codes)


def code_entropy(codes: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of code rows (B, K); log K means uniform targets, 0 one-hot ones."""
    return -(codes * torch.log(codes.clamp_min(1e-12))).sum(dim=1).mean()


def cluster_target_loss(crop_scores: list[torch.Tensor], targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """DeepCluster-v2 loss for one head: cross-entropy of every crop's scores (B, K) against the
    samples' cluster ``targets`` (B,); samples without a cluster yet (-1) are left out (0 if none)."""
    known = targets >= 0
    if not bool(known.any()):
        return crop_scores[0].float().sum() * 0.0
    losses = [F.cross_entropy(scores[known].float() / temperature, targets[known]) for scores in crop_scores]
    return torch.stack(losses).mean()


def masked_prediction_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of ``2 - 2 cos(predicted, centred target)``.

    ``predicted`` and ``target`` are (B, S, D), ``mask`` (B, S). The target is detached
    (stop-gradient) and centred per view (its mean over the S slices subtracted): slice tokens of
    one volume share a large common part, and predicting that part alone would already score a
    cosine near 1 while saying nothing about the missing slice.
    """
    target = target.detach().float()
    target = target - target.mean(dim=1, keepdim=True)
    predicted = F.normalize(predicted[mask].float(), dim=-1)
    return (2 - 2 * (predicted * F.normalize(target[mask], dim=-1)).sum(dim=-1)).mean()


def spherical_kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on unit vectors by cosine similarity.

    Args:
        x: (N, D) unit vectors.
        k: clusters (at most N are used).
        iterations: assignment / update rounds.
        generator: chooses the initial centroids among the rows (CPU generator).

    Returns:
        centroids (min(k, N), D) unit vectors and assignments (N,) int64.
    """
    k = min(k, x.shape[0])
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)].clone()
    for _ in range(iterations):
        assignments = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        counts = torch.bincount(assignments, minlength=k)
        centroids = torch.where((counts > 0).unsqueeze(1), F.normalize(sums, dim=1), centroids)
    return centroids, _nearest(x, centroids)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cat([(chunk @ centroids.t()).argmax(dim=1) for chunk in x.split(_KMEANS_CHUNK)])


class ClusterMemory:
    """DeepCluster-v2 memory of one level (2D samples or volumes).

    Holds the latest projection of every sample seen (``bank`` (N, D), ``filled`` (N,)) and, after
    :meth:`recluster`, each sample's cluster per head (``assignments`` (heads, N), -1 = none).
    """

    def __init__(self, size: int, dim: int, heads: int, prototypes: int, device: torch.device) -> None:
        self.heads, self.prototypes = heads, prototypes
        self.bank = torch.zeros(size, dim, device=device)
        self.filled = torch.zeros(size, dtype=torch.bool, device=device)
        self.assignments = torch.full((heads, size), -1, dtype=torch.int64, device=device)

    def update(self, ids: torch.Tensor, projections: torch.Tensor) -> None:
        """Store unit vectors ``projections`` (n, D) for samples ``ids`` (n,)."""
        self.bank[ids] = projections.detach().float()
        self.filled[ids] = True

    def recluster(self, iterations: int, seed: int) -> list[torch.Tensor] | None:
        """k-means per head on the filled rows; returns each head's (prototypes, D) centroids
        (rows beyond the number of filled samples are zero), or None while the bank is empty."""
        rows = torch.nonzero(self.filled).squeeze(1)
        if rows.numel() == 0:
            return None
        centroids_per_head = []
        for head in range(self.heads):
            generator = torch.Generator().manual_seed(seed * 1000 + head)
            centroids, assignments = spherical_kmeans(self.bank[rows], self.prototypes, iterations, generator)
            self.assignments[head].fill_(-1)
            self.assignments[head, rows] = assignments
            padded = centroids.new_zeros(self.prototypes, centroids.shape[1])
            padded[: centroids.shape[0]] = centroids
            centroids_per_head.append(padded)
        return centroids_per_head

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """(heads, n) clusters of samples ``ids``."""
        return self.assignments[:, ids]

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank, "filled": self.filled, "assignments": self.assignments}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.bank.device
        self.bank = state["bank"].to(device)
        self.filled = state["filled"].to(device)
        self.assignments = state["assignments"].to(device)
