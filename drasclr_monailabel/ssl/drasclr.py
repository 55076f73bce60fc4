"""DrasCLR pretraining (Yu et al., 2023) as a :class:`PretrainMethod`: MoCo v2 with anatomy.

Every step holds one landmark ``j`` for many subjects, across all processes (see :mod:`.sampler`).
Per step:

* three kinds of view are augmented on the device: two views of each subject's patch at ``j``
  (query and key) and one view of the patch at each of ``j``'s k neighbour landmarks;
* the query network (conditional encoder + projection head, L2-normalised) embeds the query view
  with location ``j`` and each neighbour view with its own location; the momentum key network
  embeds the key views, shuffled for BatchNorm (below);
* negatives of a query: the written slots of queue ``j`` and the keys of the whole (global)
  batch, except every key of the query's own subject (its positive, and older keys of the same
  subject still in the queue, which would be false negatives);
* local InfoNCE: anchor = query, positive = its key (also logged against this step's keys only,
  ``loss_local_batch``: negatives as fresh as the positive);
* neighbour InfoNCE: anchor = sum of the k neighbour embeddings (unit vectors, not re-normalised),
  positive and negatives as above; a subject for which any neighbour landmark is invalid (outside
  its scan or lung) is left out of this term, which averages over the remaining subjects (0 if
  none remain);
* loss = local + beta x neighbour; after the optimiser step the global batch's keys and their
  subject ids (gathered from every rank once) are enqueued into queue ``j``.

BatchNorm sees one landmark per encoder call, as in the reference. Query and positive key come
from the same subjects, so BatchNorm statistics could tell the positive apart from queued keys
(MoCo's "cheating" via BN); keys are therefore embedded with other batch-mates than their query
(shuffle-BN): across processes under DDP (gathered, permuted by rank 0, embedded in shares,
gathered back and un-permuted, as MoCo does), and in ``moco.key_bn_splits`` random sub-batches in
one process. Before export, the BatchNorm statistics are recomputed over batches that mix
landmarks (``precise_bn``), so embeddings and fine-tuning use statistics of every landmark.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from drasclr_monailabel.errors import ConfigError, InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.heads import ProjectionHead
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.augment import PatchAugmenter
from drasclr_monailabel.ssl.cache import (
    AtlasLandmarks,
    default_atlas_dir,
    open_cache,
    read_atlas_landmarks,
)
from drasclr_monailabel.ssl.drasclr_config import DrasclrConfig
from drasclr_monailabel.ssl.distributed import (
    DistContext,
    all_gather_rows,
    broadcast_from_main,
    gather_counts,
)
from drasclr_monailabel.ssl.method import (
    ExportSpec,
    PretrainMethod,
    StepOutput,
    register_method,
)
from drasclr_monailabel.ssl.moco import (
    LandmarkQueues,
    info_nce,
    momentum_update,
    same_subject,
)
from drasclr_monailabel.ssl.patches import LandmarkCropDataset, read_crop
from drasclr_monailabel.ssl.precise_bn import recalibrate_batchnorm
from drasclr_monailabel.ssl.queue_plan import plan_queue_fill
from drasclr_monailabel.ssl.sampler import LandmarkBatchSampler, mixed_landmark_batches


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
        dtype = torch.float16 if config.moco.queue_dtype == "float16" else torch.float32
        self.queues = LandmarkQueues(self.atlas.n_landmarks, config.moco.queue_size, config.model.projection_dim, dtype).to(device)
        self.locations = torch.from_numpy(self.atlas.coordinates).to(device)
        self.use_neighbours = config.moco.neighbour_weight > 0 and self.atlas.neighbours.shape[1] > 0
        self.augmenter = PatchAugmenter(config.augment, patch, LUNG_WINDOW)
        self._pending: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._sampler: LandmarkBatchSampler | None = None
        self.batchnorm_record: dict[str, Any] = (
            {"statistics": "running average of one-landmark training batches"} if config.model.encoder.norm == "batch"
            else {"statistics": "none: the encoder has no BatchNorm (model.encoder.norm)"})

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
        self._sampler = sampler
        return dataset, sampler

    def plan(self, total_steps: int) -> dict[str, Any]:
        """Expected queue fill for ``total_steps`` (call after :meth:`build_data`)."""
        assert self._sampler is not None, "build_data first"
        plan = plan_queue_fill(self._sampler.keys_per_landmark_epoch, self.config.moco.queue_size, total_steps,
                               self._sampler.batches_per_epoch)
        return {"queue_fill": plan.summary(), "warnings": plan.warnings()}

    def prepare_batch(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Augment all views in one call: query and key of the centre crop, one view per neighbour."""
        crops = batch["crops"]  # (B, 1 + k, S, S, S) int16
        b, k = crops.shape[0], crops.shape[1] - 1
        stacked = torch.cat([crops[:, 0], crops[:, 0], *crops[:, 1:].unbind(1)])[:, None]
        views = self.augmenter(stacked, generator).split(b)
        return {**batch, "query": views[0], "key": views[1], "neighbour_views": list(views[2 : 2 + k])}

    def training_step(self, network: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        landmark, neighbours, subjects = batch["landmark"], batch["neighbours"], batch["subjects"]
        views = [batch["query"], *batch["neighbour_views"]]
        locations = [self.locations[landmark], *(self.locations[n] for n in neighbours)]
        embeddings = network(views, locations)
        query = embeddings[0]
        with torch.no_grad():
            momentum_update(self.key_network.parameters(), self._network.parameters(), self.config.moco.momentum)
            keys, key_subjects, own = self._embed_keys(batch["key"], subjects, self.locations[landmark], generator)
        negatives, excluded = contrast_set(*self.queues.negatives(landmark), keys, key_subjects, subjects)
        if self.config.moco.other_landmark_negatives:
            others = self.queues.sample_others(landmark, self.config.moco.other_landmark_negatives, generator).to(keys.dtype)
            negatives = torch.cat([negatives, others])
            excluded = torch.cat([excluded, excluded.new_zeros((excluded.shape[0], others.shape[0]))], dim=1)
        positive = keys[own]
        temperature = self.config.moco.temperature
        loss_local = info_nce(query, positive, negatives, temperature, excluded).mean()
        counted = (~excluded).sum(dim=1).float()
        # Chance level: every logit equal gives log(1 + n) and top-1 1 / (1 + n), for n negatives.
        metrics = {"loss_local": loss_local.detach(), "loss_local_chance": torch.log1p(counted).mean(),
                   "acc_local": _top1(query, positive, negatives, excluded), "acc_local_chance": (1.0 / (1.0 + counted)).mean(),
                   "negatives": counted.mean(), "queue_fill": self.queues.fill()[landmark],
                   **_batch_only_metrics(query, positive, keys, same_subject(subjects, key_subjects), temperature)}
        loss = loss_local
        if self.use_neighbours:
            anchor = torch.stack(embeddings[1:]).sum(dim=0)
            usable = batch["neighbour_valid"].all(dim=1).float()
            per_subject = info_nce(anchor, positive, negatives, temperature, excluded)
            loss_neighbour = (per_subject * usable).sum() / usable.sum().clamp(min=1)
            loss = loss + self.config.moco.neighbour_weight * loss_neighbour
            metrics.update(loss_neighbour=loss_neighbour.detach(), neighbour_fraction=usable.mean())
        self._pending = (keys, key_subjects, landmark)
        return StepOutput(loss=loss, samples=query.shape[0], metrics=metrics)

    def _embed_keys(self, views: torch.Tensor, subjects: torch.Tensor, location: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, slice]:
        """Key embeddings of the global batch with shuffle-BN.

        Returns every rank's keys (M, D) and subject ids (M,) in rank order, and the rows of this
        rank's own samples. Under DDP the key views are gathered, permuted (rank 0's permutation,
        broadcast), embedded in one share per rank, gathered back and un-permuted, so each key's
        BatchNorm statistics come from other samples than its query's. In one process the keys
        are embedded in ``key_bn_splits`` random sub-batches of at least two.
        """
        context = self.context
        if not context.distributed:
            splits = min(self.config.moco.key_bn_splits, views.shape[0] // 2)
            if splits <= 1:
                return self.key_network.embed(views, location), subjects, slice(0, views.shape[0])
            order = torch.randperm(views.shape[0], generator=generator, device=views.device)
            keys = torch.cat([self.key_network.embed(chunk, location) for chunk in views[order].tensor_split(splits)])
            return keys[torch.argsort(order)], subjects, slice(0, views.shape[0])
        counts = gather_counts(views.shape[0], context)
        everything = all_gather_rows(views.contiguous(), context, counts)
        all_subjects = all_gather_rows(subjects.to(views.device), context, counts)
        order = broadcast_from_main(torch.randperm(everything.shape[0], generator=generator, device=views.device), context)
        share = everything[order].tensor_split(context.world_size)[context.rank]
        shares = gather_counts(share.shape[0], context)
        shuffled = all_gather_rows(self.key_network.embed(share, location).float().contiguous(), context, shares)
        keys = shuffled[torch.argsort(order)]
        first = sum(counts[: context.rank])
        return keys, all_subjects, slice(first, first + counts[context.rank])

    def after_step(self, step: int) -> None:
        """Enqueue this step's keys of every rank (gathered once, in rank order) into the landmark's queue."""
        if self._pending is None:
            return
        keys, subjects, landmark = self._pending
        self._pending = None
        self.queues.enqueue(keys, [landmark] * keys.shape[0], subjects)

    def before_export(self) -> None:
        """Recompute BatchNorm statistics over un-augmented patches of mixed landmarks (precise BN).

        Every rank draws the same patches (seeded), so all ranks end with the same statistics.
        """
        settings = self.config.precise_bn
        if settings.samples == 0 or self.config.model.encoder.norm != "batch":
            return
        batches = mixed_landmark_batches(self.index.valid, settings.samples, settings.batch_size,
                                         settings.subjects_per_landmark, seed=self.config.train.seed)
        patch = self.atlas.patch_size

        def inputs():
            for subjects, landmarks in batches:
                per_landmark = len(subjects) // len(landmarks)
                crops = np.stack([read_crop(np.load(self.index.image_paths[subject], mmap_mode="r"),
                                            self.index.centres[subject, landmarks[row // per_landmark]], patch)
                                  for row, subject in enumerate(subjects)])
                views = LUNG_WINDOW(torch.from_numpy(crops)).unsqueeze(1).to(self.context.device)
                yield views, self.locations[torch.from_numpy(landmarks)]

        used = recalibrate_batchnorm(self._network, inputs(), lambda batch: self._network.embed(*batch))
        done = batches[:used]
        self.batchnorm_record = {"statistics": "precise: average over batches mixing landmarks (un-augmented patches)",
                                 "batches": used, "samples": int(sum(len(subjects) for subjects, _ in done)),
                                 "landmarks": int(len({int(l) for _, landmarks in done for l in landmarks})),
                                 "subjects": int(len({int(s) for subjects, _ in done for s in subjects}))}

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
                      "batchnorm": self.batchnorm_record,
                      "location": "normalised atlas coordinate (cx, cy, cz) of the landmark, landmarks.csv"},
            state_dict_prefix="encoder.",
        )


def contrast_set(queued: torch.Tensor, queued_subjects: torch.Tensor, keys: torch.Tensor, key_subjects: torch.Tensor,
                 query_subjects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate negatives of a step and which of them each query must ignore.

    Args:
        queued, queued_subjects: the written queue slots of the landmark, (Q, D) and (Q,).
        keys, key_subjects: the keys of the global batch, (M, D) and (M,).
        query_subjects: (N,) subject of each query.

    Returns:
        negatives (Q + M, D) and ``excluded`` bool (N, Q + M): true where the key came from the
        query's own subject (its positive, or an older key of it in the queue).
    """
    negatives = torch.cat([queued.to(keys.dtype), keys])
    return negatives, same_subject(query_subjects, torch.cat([queued_subjects.to(key_subjects.device), key_subjects]))


def _batch_only_metrics(query: torch.Tensor, positive: torch.Tensor, keys: torch.Tensor, excluded: torch.Tensor,
                        temperature: float) -> dict[str, torch.Tensor]:
    """The local loss and top-1 against this step's keys of other subjects only, with their chance levels.

    These negatives come from the current key network, as the positive does, so they fall below
    chance only if the encoder tells subjects apart at the landmark; queued keys, embedded by an
    older key network, can be told apart by their age alone (docs/pretraining.md).

    Args:
        query, positive: (N, D); keys: (M, D) of the global batch; excluded: bool (N, M), the
            query's own subject's keys.
    """
    with torch.no_grad():
        counted = (~excluded).sum(dim=1).float()
        return {"loss_local_batch": info_nce(query, positive, keys, temperature, excluded).mean(),
                "loss_local_batch_chance": torch.log1p(counted).mean(),
                "acc_local_batch": _top1(query, positive, keys, excluded),
                "acc_local_batch_chance": (1.0 / (1.0 + counted)).mean()}


def _top1(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Fraction of queries whose positive key scores above every negative that counts for them."""
    with torch.no_grad():
        scores = (query @ negatives.to(query.dtype).t()).masked_fill(excluded, float("-inf"))
        hardest = scores.max(dim=1).values if scores.shape[1] else torch.full_like(query[:, 0], float("-inf"))
        return ((query * positive).sum(dim=1) > hardest).float().mean()


register_method("drasclr", DrasclrConfig, DrasclrMethod)
