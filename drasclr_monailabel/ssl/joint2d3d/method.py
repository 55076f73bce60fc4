"""Joint image-volume pretraining with intra-inter contrastive clustering (Nguyen et al., AAAI 2023)
as a :class:`PretrainMethod`; the generic trainer runs it (``drasclr pretrain --method joint2d3d``).

Per step (each loss only in the schedule stages that give it a positive weight):

* L_intra: B 2D samples (slices cut from the volumes and 2D images) are multi-cropped; the ResNet
  slice encoder's last-stage pool goes through the slice clustering head; SwAV swaps the Sinkhorn
  codes of the global crops (computed together with a queue of recent projections, so that a
  small batch still gets sharp codes), DeepCluster-v2 predicts each sample's k-means cluster (its
  memory is filled before the first step);
* L_inter: V volumes give two views each (S slices over a random z range, one in-plane crop per
  view); slice tokens (multi-scale pooled, L2-normalised, projected to d) with their positions go
  through the deformable volume transformer; the mean token is the volume embedding, clustered by
  the volume head with the same objective between the two views (SwAV: with a volume queue);
* masked prediction: a fraction of each view's tokens is replaced by the mask token; a predictor
  reads the transformer output at those places and is scored against the stop-gradient tokens, on
  the masked tokens only.

Both 3D losses reach the ResNet trunk (stages with ``encoder_in_3d``) through
``volume_backprop.slices`` random slices per view, their gradient scaled to stand for all S
(:meth:`Joint2d3dNetwork.view_features`); the entropy of the SwAV targets is logged per level.

loss = intra x L_intra + inter x L_inter + masked x L_masked, weights from the current stage of
``schedule`` (one stage: joint training; several: the reference's staged training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from drasclr_monailabel.io.images2d import list_images2d
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.paths import cache_dir
from drasclr_monailabel.ssl.distributed import DistContext, all_gather_rows
from drasclr_monailabel.ssl.joint2d3d.augment import SliceAugmenter
from drasclr_monailabel.ssl.joint2d3d.config import (
    Joint2d3dConfig,
    StageConfig,
    stage_at,
)
from drasclr_monailabel.ssl.joint2d3d.data import JointBatchSampler, JointDataset
from drasclr_monailabel.ssl.joint2d3d.losses import (
    ClusterMemory,
    cluster_target_loss,
    code_entropy,
    masked_prediction_loss,
    swapped_prediction_loss,
    swav_codes,
)
from drasclr_monailabel.ssl.joint2d3d.memory_init import fill_memories
from drasclr_monailabel.ssl.joint2d3d.network import ClusteringHead, Joint2d3dNetwork, StepPlan
from drasclr_monailabel.ssl.joint2d3d.queue import FeatureQueue
from drasclr_monailabel.ssl.joint2d3d.sources import find_volumes
from drasclr_monailabel.ssl.joint2d3d.stacks import StackSettings, StackStore, resolve_atlas_z
from drasclr_monailabel.ssl.method import (
    ExportSpec,
    PretrainMethod,
    StepOutput,
    register_method,
)

log = logging.getLogger(__name__)

STACK_FOLDER = "joint2d3d-stacks"


class Joint2d3dMethod(PretrainMethod):
    """See the module docstring. ``data_root``: volumes (cache, manifest, folder or file)."""

    name = "joint2d3d"
    find_unused_parameters = True  # stages and frozen prototypes leave parts of the network idle

    def __init__(self, config: Joint2d3dConfig, context: DistContext, data_root: Path) -> None:
        super().__init__(config, context)
        self.volumes = find_volumes(data_root)
        self.images = list_images2d(config.data.images) if config.data.images else []
        self.atlas = resolve_atlas_z(config.data.atlas) if any(v.cached for v in self.volumes) else None
        self.settings = stack_settings(config)
        model, clustering = config.model, config.clustering
        self.deepcluster = clustering.head == "deepcluster"
        self._network = Joint2d3dNetwork(model.slice_encoder, model.transformer, model.projection_hidden, model.projection_dim,
                                         clustering.slice_prototypes, clustering.volume_prototypes, clustering.heads,
                                         learned_prototypes=not self.deepcluster).to(context.device)
        self.augmenter = SliceAugmenter(config.crops)
        n_items = len(self.images) + len(self.volumes) * config.data.slices_per_volume
        self.memories: dict[str, ClusterMemory] = {}
        self.queues: dict[str, FeatureQueue] = {}
        if self.deepcluster:
            self.memories = {
                "slice": ClusterMemory(n_items, model.projection_dim, clustering.heads, clustering.slice_prototypes, context.device),
                "volume": ClusterMemory(len(self.volumes), model.projection_dim, clustering.heads, clustering.volume_prototypes, context.device),
            }
        else:
            self.queues = {"slice": FeatureQueue(clustering.slice_queue, model.projection_dim, context.device),
                           "volume": FeatureQueue(clustering.volume_queue, model.projection_dim, context.device)}
        self.memories_filled = False
        self.step = 0
        self.steps_per_epoch = 1
        self.total_steps = 1
        self._pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def network(self) -> nn.Module:
        return self._network

    def build_data(self) -> tuple[Dataset, JointBatchSampler]:
        data, train = self.config.data, self.config.train
        stacks = StackStore(data.stack_dir or cache_dir() / STACK_FOLDER, self.settings, self.atlas)
        dataset = JointDataset(self.images, self.volumes, stacks, data.slices_per_volume, self.config.model.num_slices,
                               data.min_coverage, train.seed, data.cache_items)
        if data.volumes_per_batch > len(self.volumes) and any(stage.uses_volumes for stage in self.config.schedule):
            log.warning("data.volumes_per_batch is %d but only %d volumes exist: using %d", data.volumes_per_batch, len(self.volumes), len(self.volumes))
        sampler = JointBatchSampler(dataset.n_items, len(self.volumes), train.batch_size, data.volumes_per_batch,
                                    uses_volumes=lambda step: self.stage(step).uses_volumes, seed=train.seed,
                                    rank=self.context.rank, world_size=self.context.world_size)
        self.steps_per_epoch = sampler.batches_per_epoch
        self.total_steps = train.max_steps or train.epochs * sampler.batches_per_epoch
        self._data = (dataset, sampler)
        return dataset, sampler

    def stage(self, step: int) -> StageConfig:
        return stage_at(self.config.schedule, step, self.total_steps)

    def prepare_batch(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Multi-crop the 2D samples and crop the volume views (on the device); draw the token mask."""
        stage = self.stage(self.step)
        inputs: dict[str, Any] = {"item_ids": batch["item_ids"], "batch_size": batch["items"].shape[0],
                                  "global_crops": self.config.crops.global_crops}
        if stage.intra > 0:
            jitter = (batch["item_ids"] < len(self.images)) | self.config.crops.jitter_ct  # images, and CT if asked
            glob, local = self.augmenter.multi_crop(batch["items"], jitter, generator)
            inputs["crops"] = [glob] if local is None else [glob, local]
        if "views" in batch:
            v, _, s = batch["positions"].shape
            device = batch["positions"].device
            inputs.update(views=self.augmenter.volume_views(batch["views"], self.config.crops.jitter_ct, generator),
                          positions=batch["positions"].reshape(2 * v, s), kinds=batch["kinds"].repeat_interleave(2),
                          volume_ids=batch["volume_ids"],
                          mask=random_subset_mask(2 * v, s, max(1, round(self.config.masking.ratio * s)), generator, device))
            chosen = self.config.volume_backprop.slices
            if stage.encoder_in_3d and 0 < chosen < s:
                inputs["backprop"] = random_subset_mask(2 * v, s, chosen, generator, device).reshape(-1)
        return inputs

    def training_step(self, network: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        stage = self.stage(self.step)
        if self.deepcluster and not self.memories_filled:
            self._fill_memories(generator)
        has_views = "views" in batch
        plan = StepPlan(intra="crops" in batch, inter=has_views and stage.inter > 0, masked=has_views and stage.masked > 0,
                        encoder_in_3d=stage.encoder_in_3d,
                        freeze_prototypes=not self.deepcluster and self.step < self.config.clustering.freeze_prototypes_steps,
                        recompute=self.config.volume_backprop.recompute)
        out = network(batch, plan)
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, torch.Tensor] = {}
        if plan.intra:
            z = out["slice_z"]  # (global crops x B, P), crop-major
            losses["intra"] = self._clustering_loss("slice", out["slice_scores"], batch["item_ids"], self.config.crops.global_crops, metrics, "intra")
            self._remember("slice", batch["item_ids"], z.view(-1, batch["batch_size"], z.shape[1]).transpose(0, 1))
            self._enqueue("slice", z)
        if plan.inter:
            z = out["volume_z"]  # (2V, P), the two views of each volume next to each other
            losses["inter"] = self._clustering_loss("volume", out["volume_scores"], batch["volume_ids"], 2, metrics, "inter")
            self._remember("volume", batch["volume_ids"], z.view(-1, 2, z.shape[1]))
            self._enqueue("volume", z)
        if plan.masked:
            losses["masked"] = masked_prediction_loss(out["predicted"], out["target"], batch["mask"])
            metrics["token_std"] = out["target"].float().std(dim=1).mean().detach()
        weights = {"intra": stage.intra, "inter": stage.inter, "masked": stage.masked}
        loss = sum(weights[name] * value for name, value in losses.items())
        metrics.update({f"loss_{name}": value.detach() for name, value in losses.items()})
        return StepOutput(loss=loss, samples=batch["batch_size"], metrics=metrics)

    def _remember(self, level: str, ids: torch.Tensor, z: torch.Tensor) -> None:
        """DeepCluster-v2: keep the views' mean projection (n, views, P) of samples ``ids`` for the
        memory bank, written after the optimiser step."""
        if self.deepcluster:
            self._pending[level] = (ids, _normalised_mean(z))

    def _clustering_loss(self, level: str, scores: list[list[torch.Tensor]], ids: torch.Tensor, code_crops: int,
                         metrics: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """Mean over prototype heads of the SwAV or DeepCluster-v2 loss of one level. SwAV also
        logs ``target_entropy_<name>`` (mean code entropy, nats; uniform = log K) and
        ``queue_rows_<name>`` (queued rows in the Sinkhorn step, all processes)."""
        c = self.config.clustering
        if self.deepcluster:
            targets = self.memories[level].targets(ids)
            return torch.stack([cluster_target_loss(crops, targets[h], c.temperature) for h, crops in enumerate(scores)]).mean()
        head: ClusteringHead = self._network.slice_head if level == "slice" else self._network.volume_head
        queued = self.queues[level].share(self.context) if self.step >= c.queue_start_steps else None
        per_head, entropies = [], []
        for crops, prototypes in zip(scores, head.prototypes):
            queue_scores = None if queued is None else queued @ prototypes.weight.detach().float().t()
            codes = [swav_codes(crops[i], c.sinkhorn_epsilon, c.sinkhorn_iterations, self.context, queue_scores) for i in range(code_crops)]
            per_head.append(swapped_prediction_loss(crops, codes, c.temperature))
            entropies.append(torch.stack([code_entropy(q) for q in codes]).mean())
        metrics[f"target_entropy_{name}"] = torch.stack(entropies).mean()
        in_use = 0 if queued is None else self.queues[level].count
        metrics[f"queue_rows_{name}"] = torch.tensor(float(in_use))
        return torch.stack(per_head).mean()

    def _enqueue(self, level: str, z: torch.Tensor) -> None:
        """SwAV: append the code crops' projections of every process to the level's queue."""
        if not self.deepcluster and self.queues[level].size:
            self.queues[level].push(all_gather_rows(z.detach().float().contiguous(), self.context))

    def _fill_memories(self, generator: torch.Generator) -> None:
        """DeepCluster-v2 before the first step: fill the banks and cluster them (:mod:`.memory_init`)."""
        dataset, sampler = self._data
        levels = {"slice": any(s.intra > 0 for s in self.config.schedule), "volume": any(s.inter > 0 for s in self.config.schedule)}
        fill_memories(self._network, dataset, sampler, self.augmenter, {k: m for k, m in self.memories.items() if levels[k]},
                      self.context, generator, self.config.data.volumes_per_batch, self.config.crops.jitter_ct)
        self.recluster(0)
        self.memories_filled = True

    def after_step(self, step: int) -> None:
        """Keep prototypes on the unit sphere (SwAV), or fill the memory banks and re-cluster at
        each epoch boundary (DeepCluster-v2)."""
        self.step = step
        if not self.deepcluster:
            self._network.slice_head.normalise_prototypes()
            self._network.volume_head.normalise_prototypes()
            return
        for level, (ids, z) in self._pending.items():
            self.memories[level].update(all_gather_rows(ids, self.context), all_gather_rows(z.float().contiguous(), self.context))
        self._pending = {}
        if step % self.steps_per_epoch == 0:
            self.recluster(step // self.steps_per_epoch)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        """k-means on both memory banks; the centroids become the prototypes (rank 0's, on every rank)."""
        heads = {"slice": self._network.slice_head, "volume": self._network.volume_head}
        for level, memory in self.memories.items():
            centroids = memory.recluster(self.config.clustering.kmeans_iterations, seed=self.config.train.seed + epoch)
            if centroids is None:
                continue
            for layer, centre in zip(heads[level].prototypes, centroids):
                layer.weight.copy_(centre)
            if self.context.distributed:
                dist.broadcast(memory.assignments, src=0)
                for layer in heads[level].prototypes:
                    dist.broadcast(layer.weight.data, src=0)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "memories": {level: memory.state_dict() for level, memory in self.memories.items()},
                "memories_filled": self.memories_filled, "queues": {level: queue.state_dict() for level, queue in self.queues.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for level, memory in self.memories.items():
            memory.load_state_dict(state["memories"][level])
        self.memories_filled = bool(state["memories_filled"])
        for level, queue in self.queues.items():
            queue.load_state_dict(state["queues"][level])

    def export_spec(self) -> ExportSpec:
        model, data, crops = self.config.model, self.config.data, self.config.crops
        atlas = {"id": self.atlas.atlas_id, "positions": "atlas z"} if self.atlas else {"id": None, "positions": "relative"}
        return ExportSpec(
            metadata={"method": self.name, "architecture": self._network.encoder.architecture(), "atlas": atlas,
                      "intensity": LUNG_WINDOW.to_dict(), "patch_size": crops.global_size,
                      "embedding_dim": model.slice_encoder.embedding_dim,
                      "input": {"store_size": data.store_size, "slice_size": crops.global_size, "num_slices": model.num_slices,
                                "slice_spacing_mm": data.slice_spacing_mm, "body_threshold_hu": data.body_threshold_hu,
                                "images_2d": "percentile 0.5/99.5 scaling (CT slices: lung window), MONOCHROME1 inverted, "
                                             "padded to a square, then 2 x - 1"},
                      "embeddings": {"slice": "multi-scale slice token (d)", "volume": "mean of the transformer output tokens (d)"}},
            state_dict_prefix="encoder.",
        )


def stack_settings(config: Joint2d3dConfig) -> StackSettings:
    data = config.data
    return StackSettings(store_size=data.store_size, slice_spacing_mm=data.slice_spacing_mm, body_threshold_hu=data.body_threshold_hu)


def random_subset_mask(rows: int, tokens: int, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """bool (rows, tokens): ``count`` random tokens per row are True."""
    order = torch.rand(rows, tokens, generator=generator, device=device).argsort(dim=1)
    return order < count


def _normalised_mean(z: torch.Tensor) -> torch.Tensor:
    """(n, views, P) unit vectors -> (n, P): each sample's views averaged and re-normalised (for the memory bank)."""
    return torch.nn.functional.normalize(z.mean(dim=1), dim=1).detach()


register_method("joint2d3d", Joint2d3dConfig, Joint2d3dMethod)
