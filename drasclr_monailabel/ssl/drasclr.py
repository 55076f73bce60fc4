"""DrasCLR pretraining (Yu et al., 2023) as a :class:`PretrainMethod`: MoCo v2 with anatomy.

Every batch holds one landmark ``j`` for many subjects (see :mod:`.sampler`). Per step:

* three kinds of view are augmented on the device: two views of each subject's patch at ``j``
  (query and key) and one view of the patch at each of ``j``'s k neighbour landmarks;
* the query network (conditional encoder + projection head, L2-normalised) embeds the query view
  with location ``j`` and each neighbour view with its own location; the momentum key network
  embeds the key view;
* local InfoNCE: anchor = query, positive = key, negatives = queue ``j``;
* neighbour InfoNCE: anchor = sum of the k neighbour embeddings (unit vectors, not re-normalised),
  positive and negatives as above; a subject for which any neighbour landmark is invalid (outside
  its scan or lung) is left out of this term, which averages over the remaining subjects (0 if
  none remain);
* loss = local + beta x neighbour; after the optimiser step the keys of all ranks are gathered and
  enqueued into queue ``j`` of their landmark.

BatchNorm sees one landmark per call (the query, each neighbour and the key views are separate
encoder calls), i.e. the statistics of a landmark across subjects, as in the reference. Because
query and positive key come from the same batch, BatchNorm statistics could leak which subjects
are in the batch (MoCo's "cheating" via BN); ``moco.key_bn_splits`` > 1 embeds the keys in that
many random sub-batches so their statistics differ from the query's (MoCo's shuffle-BN, single
process).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.heads import ProjectionHead
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.augment import AugmentConfig, PatchAugmenter
from drasclr_monailabel.ssl.cache import (
    AtlasLandmarks,
    default_atlas_dir,
    open_cache,
    read_atlas_landmarks,
)
from drasclr_monailabel.ssl.config import OptimConfig, TrainConfig
from drasclr_monailabel.ssl.distributed import DistContext, all_gather_rows
from drasclr_monailabel.ssl.method import (
    ExportSpec,
    PretrainMethod,
    StepOutput,
    register_method,
)
from drasclr_monailabel.ssl.moco import LandmarkQueues, info_nce, momentum_update
from drasclr_monailabel.ssl.patches import LandmarkCropDataset
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler


@dataclass
class DataConfig:
    """Where patches come from.

    Attributes:
        atlas: atlas folder (atlas.json, landmarks.csv); empty: the atlas shipped with the package.
            The cache's scans must have been registered to it (same atlas id).
        crop_size: edge of the crop read around each landmark; the patch (32) plus twice the
            largest augmentation translation keeps shifted patches inside real image.
        min_batch: landmarks with fewer valid subjects than this are skipped.
    """

    atlas: Path | None = None
    crop_size: int = 56
    min_batch: int = 2


@dataclass
class ModelConfig:
    """The query/key networks: conditional encoder and projection head."""

    encoder: EncoderArchitecture = field(default_factory=EncoderArchitecture)
    projection_dim: int = 128


@dataclass
class MocoConfig:
    """Contrastive learning.

    Attributes:
        queue_size: negatives per landmark (K).
        queue_dtype: queue storage; float16 halves L x K x D x 4 bytes.
        momentum: key network update ``k = m k + (1 - m) q``.
        temperature: InfoNCE temperature.
        neighbour_weight: beta, weight of the neighbour InfoNCE (0 turns it and the reading of
            neighbour patches off).
        key_bn_splits: embed the keys in this many random sub-batches (shuffle-BN); 1 = one call.
    """

    queue_size: int = 4096
    queue_dtype: Literal["float32", "float16"] = "float32"
    momentum: float = 0.999
    temperature: float = 0.2
    neighbour_weight: float = 1.0
    key_bn_splits: int = 1

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.key_bn_splits < 1:
            raise ValueError("queue_size and key_bn_splits must be at least 1")
        if not 0 <= self.momentum < 1 or self.temperature <= 0 or self.neighbour_weight < 0:
            raise ValueError("momentum must be in [0, 1), temperature positive, neighbour_weight not negative")


@dataclass
class DrasclrConfig:
    """The whole DrasCLR recipe (configs/drasclr.yaml)."""

    method: Literal["drasclr"] = "drasclr"
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


class DrasclrNetwork(nn.Module):
    """Query network: encoder + projection head; each (views, location) pair is one encoder call."""

    def __init__(self, architecture: EncoderArchitecture, projection_dim: int) -> None:
        super().__init__()
        self.encoder = DrasclrEncoder(architecture)
        self.head = ProjectionHead(architecture.embedding_dim, architecture.embedding_dim, projection_dim)

    def embed(self, views: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """(N, 1, P, P, P) views sharing ``location`` (3,) -> unit vectors (N, projection_dim)."""
        return F.normalize(self.head(self.encoder(views, location)), dim=1)

    def forward(self, views: list[torch.Tensor], locations: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.embed(v, loc) for v, loc in zip(views, locations)]


def resolve_atlas(config: DrasclrConfig) -> AtlasLandmarks:
    """The atlas named in the config, or the package atlas."""
    folder = config.data.atlas or default_atlas_dir()
    if not (folder / "atlas.json").is_file():
        where = "data.atlas" if config.data.atlas else "the package atlas"
        raise ConfigError("data.atlas", f"{where} {folder} holds no atlas.json (pass --atlas DIR, e.g. from 'drasclr build-atlas')")
    return read_atlas_landmarks(folder)


class DrasclrMethod(PretrainMethod):
    """DrasCLR on a preprocessing cache; see the module docstring for the objective."""

    name = "drasclr"

    def __init__(self, config: DrasclrConfig, context: DistContext, cache_dir: Path) -> None:
        super().__init__(config, context)
        self.atlas = resolve_atlas(config)
        self.index = open_cache(cache_dir, self.atlas)
        patch, crop = self.atlas.patch_size, config.data.crop_size
        if crop < patch or (crop - patch) % 2:
            raise ConfigError("data.crop_size", f"must be at least the patch size {patch} and exceed it by an even number, got {crop}")
        device = context.device
        self._network = DrasclrNetwork(config.model.encoder, config.model.projection_dim).to(device)
        self.key_network = copy.deepcopy(self._network).requires_grad_(False)
        queue_generator = torch.Generator().manual_seed(config.train.seed)
        dtype = torch.float16 if config.moco.queue_dtype == "float16" else torch.float32
        self.queues = LandmarkQueues(self.atlas.n_landmarks, config.moco.queue_size, config.model.projection_dim, dtype, queue_generator).to(device)
        self.locations = torch.from_numpy(self.atlas.coordinates).to(device)
        self.use_neighbours = config.moco.neighbour_weight > 0 and self.atlas.neighbours.shape[1] > 0
        self.augmenter = PatchAugmenter(config.augment, patch, LUNG_WINDOW)
        self._pending: tuple[torch.Tensor, int] | None = None

    @property
    def network(self) -> nn.Module:
        return self._network

    def build_data(self) -> tuple[Dataset, LandmarkBatchSampler]:
        neighbours = self.atlas.neighbours if self.use_neighbours else np.zeros((self.atlas.n_landmarks, 0), dtype=np.int64)
        dataset = LandmarkCropDataset(self.index, neighbours, self.config.data.crop_size)
        try:
            sampler = LandmarkBatchSampler(self.index.valid, self.config.train.batch_size, seed=self.config.train.seed,
                                           rank=self.context.rank, world_size=self.context.world_size, min_batch=self.config.data.min_batch)
        except ValueError as exc:
            raise InputError(self.index.root, f"cannot form training batches: {exc} ({self.index.n_subjects} scans)") from None
        return dataset, sampler

    def prepare_batch(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Augment all views in one call: query and key of the centre crop, one view per neighbour."""
        crops = batch["crops"]  # (B, 1 + k, S, S, S) int16
        b, k = crops.shape[0], crops.shape[1] - 1
        stacked = torch.cat([crops[:, 0], crops[:, 0], *crops[:, 1:].unbind(1)])[:, None]
        views = self.augmenter(stacked, generator).split(b)
        return {**batch, "query": views[0], "key": views[1], "neighbour_views": list(views[2 : 2 + k])}

    def training_step(self, network: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        landmark, neighbours = batch["landmark"], batch["neighbours"]
        views = [batch["query"], *batch["neighbour_views"]]
        locations = [self.locations[landmark], *(self.locations[n] for n in neighbours)]
        embeddings = network(views, locations)
        query = embeddings[0]
        with torch.no_grad():
            momentum_update(self.key_network.parameters(), self._network.parameters(), self.config.moco.momentum)
            key = self._embed_keys(batch["key"], self.locations[landmark], generator)
        negatives = self.queues.negatives(landmark)
        temperature = self.config.moco.temperature
        local = info_nce(query, key, negatives, temperature)
        loss_local = local.mean()
        metrics = {"loss_local": loss_local.detach(), "acc_local": _top1(query, key, negatives)}
        loss = loss_local
        if self.use_neighbours:
            anchor = torch.stack(embeddings[1:]).sum(dim=0)
            usable = batch["neighbour_valid"].all(dim=1).float()
            per_subject = info_nce(anchor, key, negatives, temperature)
            loss_neighbour = (per_subject * usable).sum() / usable.sum().clamp(min=1)
            loss = loss + self.config.moco.neighbour_weight * loss_neighbour
            metrics.update(loss_neighbour=loss_neighbour.detach(), neighbour_fraction=usable.mean())
        self._pending = (key, landmark)
        return StepOutput(loss=loss, samples=query.shape[0], metrics=metrics)

    def _embed_keys(self, views: torch.Tensor, location: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Key embeddings, in ``key_bn_splits`` random sub-batches of at least two samples."""
        splits = min(self.config.moco.key_bn_splits, views.shape[0] // 2)
        if splits <= 1:
            return self.key_network.embed(views, location)
        order = torch.randperm(views.shape[0], generator=generator, device=views.device)
        keys = torch.cat([self.key_network.embed(chunk, location) for chunk in views[order].tensor_split(splits)])
        return keys[torch.argsort(order)]

    def after_step(self, step: int) -> None:
        """Enqueue this step's keys of every rank (gathered in rank order) into their landmarks' queues."""
        if self._pending is None:
            return
        keys, landmark = self._pending
        self._pending = None
        if self.context.distributed:
            landmarks = torch.full((keys.shape[0],), landmark, dtype=torch.int64, device=keys.device)
            keys = all_gather_rows(keys.float().contiguous(), self.context)
            landmark_rows = all_gather_rows(landmarks, self.context).tolist()
        else:
            landmark_rows = [landmark] * keys.shape[0]
        self.queues.enqueue(keys, landmark_rows)

    def state_dict(self) -> dict[str, Any]:
        return {"key_network": self.key_network.state_dict(), "queues": self.queues.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.key_network.load_state_dict(state["key_network"])
        self.queues.load_state_dict(state["queues"])

    def export_spec(self) -> ExportSpec:
        arch = self.config.model.encoder
        return ExportSpec(
            metadata={"method": self.name, "architecture": arch.to_dict(), "atlas": self.atlas.metadata(),
                      "intensity": LUNG_WINDOW.to_dict(), "patch_size": self.atlas.patch_size,
                      "embedding_dim": arch.embedding_dim, "n_landmarks": self.atlas.n_landmarks,
                      "location": "normalised atlas coordinate (cx, cy, cz) of the landmark, landmarks.csv"},
            state_dict_prefix="encoder.",
        )


def _top1(query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Fraction of queries whose positive key scores above every negative."""
    with torch.no_grad():
        positive = (query * key).sum(dim=1)
        hardest = (query @ negatives.to(query.dtype).t()).max(dim=1).values
        return (positive > hardest).float().mean()


register_method("drasclr", DrasclrConfig, DrasclrMethod)
