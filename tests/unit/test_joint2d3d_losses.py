"""SwAV (Sinkhorn, swapped prediction), DeepCluster-v2 (k-means, memory, targets) and the masked
token loss, each checked against what it must do."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from drasclr_monailabel.ssl.distributed import DistContext
from drasclr_monailabel.ssl.joint2d3d.losses import (ClusterMemory, cluster_target_loss, code_entropy, masked_prediction_loss,
                                                     sinkhorn, spherical_kmeans, swapped_prediction_loss, swav_codes)
from drasclr_monailabel.ssl.joint2d3d.queue import FeatureQueue


def test_sinkhorn_codes_are_distributions_with_equal_prototype_use() -> None:
    torch.manual_seed(0)
    scores = 0.2 * torch.randn(12, 4) + torch.tensor([0.5, 0.0, 0.0, 0.0])  # cosine-like; all prefer prototype 0
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((4,), 3.0), atol=1e-4, rtol=0)  # 12 samples / 4 prototypes
    assert float(F.softmax(scores / 0.05, dim=1)[:, 0].mean()) > 0.9  # without Sinkhorn they would all collapse on one


def test_swapped_prediction_is_low_when_crops_agree_and_codes_carry_no_gradient() -> None:
    torch.manual_seed(0)
    base = F.normalize(torch.randn(8, 6), dim=1)
    agree = [base * 5, base * 5, base * 5]
    disagree = [base * 5, torch.roll(base, 1, dims=0) * 5, torch.roll(base, 2, dims=0) * 5]

    def loss(crops: list[torch.Tensor]) -> torch.Tensor:
        return swapped_prediction_loss(crops, [swav_codes(c, 0.05, 3) for c in crops[:2]], temperature=0.1)

    assert loss(agree) < loss(disagree)
    local = torch.randn(8, 6, requires_grad=True)
    glob = [torch.randn(8, 6, requires_grad=True) for _ in range(2)]
    loss([*glob, local]).backward()
    assert local.grad is not None and glob[0].grad is not None  # global crops still predict each other


def _clustered(prototypes: torch.Tensor, which: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """Unit projections near the prototypes ``which`` (n,) (cosine scores live in [-1, 1])."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(prototypes[which] + noise * torch.randn(len(which), prototypes.shape[1], generator=generator), dim=1)


def test_a_queue_gives_a_tiny_batch_sharp_codes_where_sinkhorn_alone_spreads_them() -> None:
    k = 16
    prototypes = F.normalize(torch.randn(k, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    batch = _clustered(prototypes, torch.tensor([3, 11]), 0.05, seed=1) @ prototypes.t()  # 2 rows, 16 prototypes
    alone = swav_codes(batch, epsilon=0.05, iterations=3)
    # equal prototype use over 2 rows: every row must spread over at least k / 2 prototypes
    assert float(code_entropy(alone)) > 0.9 * math.log(k / 2)
    queue = FeatureQueue(size=64, dim=32, device=torch.device("cpu"))
    queue.push(_clustered(prototypes, torch.arange(64) % k, 0.05, seed=2))  # recent projections cover every prototype
    codes = swav_codes(batch, 0.05, 3, queue_scores=queue.share() @ prototypes.t())
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(2))
    assert float(code_entropy(codes)) < 0.25 * float(code_entropy(alone))
    assert codes.argmax(dim=1).tolist() == [3, 11]  # sharp, and on each sample's own prototype


def test_feature_queue_keeps_the_newest_rows_and_splits_them_between_processes() -> None:
    queue = FeatureQueue(size=5, dim=2, device=torch.device("cpu"))
    assert queue.share().shape == (0, 2)  # nothing written: no rows, never zeros
    queue.push(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    queue.push(torch.tensor([[3.0, 0.0], [4.0, 0.0], [5.0, 0.0], [6.0, 0.0]]))
    assert queue.count == 5 and queue.share()[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0, 1.0]  # newest first, oldest dropped
    shares = [queue.share(DistContext(rank=r, world_size=2, local_rank=r, device=torch.device("cpu")))[:, 0].tolist() for r in range(2)]
    assert sorted(shares[0] + shares[1]) == [1.0, 3.0, 4.0, 5.0, 6.0]  # every queued row counted once over the processes
    restored = FeatureQueue(size=5, dim=2, device=torch.device("cpu"))
    restored.load_state_dict(queue.state_dict())
    torch.testing.assert_close(restored.share(), queue.share())


def test_cluster_target_loss_skips_samples_without_a_cluster() -> None:
    scores = [torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)]
    targets = torch.tensor([0, -1, 2, -1])
    expected = (F.cross_entropy(scores[0][[0, 2]] / 0.1, targets[[0, 2]]) + F.cross_entropy(scores[1][[0, 2]] / 0.1, targets[[0, 2]])) / 2
    torch.testing.assert_close(cluster_target_loss(scores, targets, 0.1), expected)
    none = cluster_target_loss(scores, torch.full((4,), -1), 0.1)
    none.backward()
    assert float(none.detach()) == 0.0 and scores[0].grad is not None


def test_masked_loss_counts_masked_tokens_only_and_stops_the_target_gradient() -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 5, 4, requires_grad=True)
    predicted = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    loss = masked_prediction_loss(predicted, target, mask)
    changed = predicted.detach().clone()
    changed[~mask] = 7.0  # unmasked predictions do not matter
    torch.testing.assert_close(masked_prediction_loss(changed, target, mask), loss.detach())
    centred = target.detach() - target.detach().mean(dim=1, keepdim=True)
    perfect = predicted.detach().clone()
    perfect[mask] = centred[mask] * 3.0  # scale does not matter: cosine to the view-centred target
    assert float(masked_prediction_loss(perfect, target, mask)) < 1e-6
    shifted = target.detach() + torch.tensor([5.0, -2.0, 0.0, 1.0])  # a part shared by all slices is no target
    torch.testing.assert_close(masked_prediction_loss(perfect, shifted, mask), masked_prediction_loss(perfect, target, mask))
    loss.backward()
    assert target.grad is None and predicted.grad is not None


def test_spherical_kmeans_finds_separated_clusters() -> None:
    torch.manual_seed(0)
    centres = torch.eye(3, 8)
    labels = torch.arange(30) % 3
    points = F.normalize(centres[labels] + 0.05 * torch.randn(30, 8), dim=1)
    centroids, assignments = spherical_kmeans(points, 3, iterations=10, generator=torch.Generator().manual_seed(1))
    assert centroids.shape == (3, 8)
    # same partition as the truth, up to renaming
    assert all(len(set(assignments[labels == c].tolist())) == 1 for c in range(3))
    assert len(set(assignments.tolist())) == 3


def test_cluster_memory_reclusters_filled_rows_and_round_trips() -> None:
    memory = ClusterMemory(size=10, dim=4, heads=2, prototypes=3, device=torch.device("cpu"))
    assert memory.recluster(iterations=3, seed=0) is None
    memory.update(torch.tensor([1, 4, 7, 8]), F.normalize(torch.randn(4, 4), dim=1))
    centroids = memory.recluster(iterations=3, seed=0)
    assert len(centroids) == 2 and centroids[0].shape == (3, 4)
    targets = memory.targets(torch.tensor([0, 1, 4]))
    assert targets.shape == (2, 3) and (targets[:, 0] == -1).all() and (targets[:, 1:] >= 0).all()
    restored = ClusterMemory(size=10, dim=4, heads=2, prototypes=3, device=torch.device("cpu"))
    restored.load_state_dict(memory.state_dict())
    torch.testing.assert_close(restored.targets(torch.arange(10)), memory.targets(torch.arange(10)))
    assert math.isclose(float(restored.bank.norm(dim=1)[1]), 1.0, rel_tol=1e-5)
