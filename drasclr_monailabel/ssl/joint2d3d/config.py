"""The joint image-volume recipe (configs/joint2d3d.yaml): every section and its checks.

``train`` and ``optim`` are the trainer's shared sections; ``train.batch_size`` counts 2D samples
(slices cut from the volumes and 2D images) per step and process, ``data.volumes_per_batch`` the
volumes that the 3D losses see per step and process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drasclr_monailabel.models.slice_encoder import SliceEncoderArchitecture
from drasclr_monailabel.models.volume_transformer import VolumeTransformerArchitecture
from drasclr_monailabel.ssl.config import OptimConfig, TrainConfig


@dataclass
class DataConfig:
    """Where slices and images come from and how they are kept.

    Attributes:
        images: 2D image files or folders (PNG/JPEG/DICOM radiographs, single CT slices).
        atlas: for a preprocessing cache: the atlas folder its scans were registered to (empty:
            the package atlas); slice positions are then the scans' atlas z.
        store_size: slices and images are kept as store_size x store_size squares (pixels).
        slice_spacing_mm: z spacing of the kept slice stack of each volume.
        slices_per_volume: 2D samples each volume gives per epoch (one slice from each of this
            many equal z bins, at a random height within the bin).
        volumes_per_batch: volumes per step and process for the 3D losses (two views each).
        min_coverage: a volume view spans at least this fraction of its stack's z extent.
        body_threshold_hu: scan files are cropped in-plane to the box of voxels above this HU
            (the body), so the square keeps anatomy rather than air; cache scans are cropped already.
        cache_items: volume stacks and images kept open in memory by each loading process.
        stack_dir: where the volumes' slice stacks are kept once built (empty: the
            ``joint2d3d-stacks`` folder of the user cache, see ``drasclr_monailabel.paths``).
    """

    images: list[Path] = field(default_factory=list)
    atlas: Path | None = None
    store_size: int = 256
    slice_spacing_mm: float = 2.5
    slices_per_volume: int = 32
    volumes_per_batch: int = 4
    min_coverage: float = 0.7
    body_threshold_hu: float = -500.0
    cache_items: int = 32
    stack_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.store_size < 32 or self.slices_per_volume < 1 or self.volumes_per_batch < 1 or self.cache_items < 1:
            raise ValueError("store_size must be at least 32; slices_per_volume, volumes_per_batch and cache_items at least 1")
        if self.slice_spacing_mm <= 0 or not 0 < self.min_coverage <= 1:
            raise ValueError("slice_spacing_mm must be positive and min_coverage in (0, 1]")


@dataclass
class ModelConfig:
    """Networks.

    Attributes:
        slice_encoder: the 2D ResNet and the slice token size d (``embedding_dim``).
        transformer: the volume transformer over d-sized slice tokens.
        num_slices: S, slices (tokens) per volume view.
        projection_hidden: hidden size of the clustering heads' projection MLPs.
        projection_dim: size of the L2-normalised projections the prototypes score.
    """

    slice_encoder: SliceEncoderArchitecture = field(default_factory=SliceEncoderArchitecture)
    transformer: VolumeTransformerArchitecture = field(default_factory=VolumeTransformerArchitecture)
    num_slices: int = 64
    projection_hidden: int = 2048
    projection_dim: int = 128

    def __post_init__(self) -> None:
        if self.num_slices < 2 or self.projection_hidden < 1 or self.projection_dim < 1:
            raise ValueError("num_slices must be at least 2; projection_hidden and projection_dim at least 1")
        if self.slice_encoder.embedding_dim % self.transformer.heads:
            raise ValueError(f"slice_encoder.embedding_dim {self.slice_encoder.embedding_dim} is not divisible by transformer.heads {self.transformer.heads}")


@dataclass
class ClusteringConfig:
    """The clustering objectives of both levels (slices: L_intra, volumes: L_inter).

    Attributes:
        head: ``swav`` (swapped prediction of Sinkhorn codes, learned prototypes) or
            ``deepcluster`` (DeepCluster-v2: k-means on a memory bank each epoch, prototypes =
            centroids, cross-entropy to the cluster of each sample).
        slice_prototypes: prototypes per head for slices and 2D images.
        volume_prototypes: prototypes per head for volumes.
        heads: prototype sets per level (losses averaged; DeepCluster-v2 reference: 3).
        temperature: softmax temperature of the prototype scores.
        sinkhorn_epsilon: entropy regularisation of the Sinkhorn codes (SwAV).
        sinkhorn_iterations: Sinkhorn normalisation rounds (SwAV).
        freeze_prototypes_steps: SwAV prototypes get no gradient for this many first steps.
        kmeans_iterations: k-means rounds per re-clustering (DeepCluster-v2).
        slice_queue: SwAV: recent slice projections (all processes together) added to the
            Sinkhorn step of L_intra (0: none).
        volume_queue: SwAV: recent volume projections added to the Sinkhorn step of L_inter
            (0: none). Sinkhorn spreads every prototype's mass equally over the rows it sees, so
            with n rows and K prototypes each code covers at least K / n prototypes: 8 volume
            views against 300 prototypes give near-uniform targets without a queue.
        queue_start_steps: the queues are filled from the first step and used from this step on
            (projections of a network that still changes fast are poor company for Sinkhorn).
    """

    head: Literal["swav", "deepcluster"] = "swav"
    slice_prototypes: int = 3000
    volume_prototypes: int = 300
    heads: int = 1
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 1000
    kmeans_iterations: int = 10
    slice_queue: int = 3840
    volume_queue: int = 3840
    queue_start_steps: int = 1000

    def __post_init__(self) -> None:
        if min(self.slice_prototypes, self.volume_prototypes, self.heads, self.sinkhorn_iterations, self.kmeans_iterations) < 1:
            raise ValueError("prototype counts, heads and iteration counts must be at least 1")
        if self.temperature <= 0 or self.sinkhorn_epsilon <= 0 or self.freeze_prototypes_steps < 0:
            raise ValueError("temperature and sinkhorn_epsilon must be positive, freeze_prototypes_steps not negative")
        if min(self.slice_queue, self.volume_queue, self.queue_start_steps) < 0:
            raise ValueError("slice_queue, volume_queue and queue_start_steps must not be negative")


@dataclass
class CropConfig:
    """Multi-crop and intensity augmentation (on the device, in [0, 1] display units).

    Attributes:
        global_size: edge of the global crops and of the volume views' slices (pixels).
        local_size: edge of the local crops.
        global_crops: global crops per 2D sample (they provide the codes; at least 2).
        local_crops: local crops per 2D sample.
        global_scale: area fraction range of a global crop.
        local_scale: area fraction range of a local crop.
        volume_scale: area fraction range of the in-plane crop of a volume view (one crop for
            all slices of a view, so the view stays a coherent volume).
        flip_p: chance of a left-right flip.
        jitter_ct: contrast, brightness and gamma changes also on CT slices and volume views
            (default: only on 2D images; CT numbers are quantitative and emphysema is a density
            change that an intensity-invariant encoder would learn to ignore).
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast].
        brightness: added brightness drawn from [-brightness, brightness].
        gamma: range of the gamma exponent.
        blur_p: chance of a Gaussian blur.
        blur_sigma: blur sigma range in output pixels.
        noise_std: standard deviation of added Gaussian noise.
    """

    global_size: int = 224
    local_size: int = 96
    global_crops: int = 2
    local_crops: int = 6
    global_scale: tuple[float, float] = (0.14, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.14)
    volume_scale: tuple[float, float] = (0.4, 1.0)
    flip_p: float = 0.5
    jitter_ct: bool = False
    contrast: float = 0.4
    brightness: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        if self.global_crops < 2 or self.local_crops < 0:
            raise ValueError("global_crops must be at least 2 (codes are swapped between them), local_crops not negative")
        if min(self.global_size, self.local_size) < 32:
            raise ValueError("global_size and local_size must be at least 32 pixels")
        for name in ("global_scale", "local_scale", "volume_scale", "gamma", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range 0 < low <= high, got {low}, {high}")
        for name in ("global_scale", "local_scale", "volume_scale"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name} is an area fraction: at most 1")
        if not 0 <= self.flip_p <= 1 or not 0 <= self.blur_p <= 1 or not 0 <= self.contrast < 1 or self.brightness < 0 or self.noise_std < 0:
            raise ValueError("flip_p and blur_p must be in [0, 1], contrast in [0, 1), brightness and noise_std not negative")


@dataclass
class StageConfig:
    """One stage of the schedule: loss weights until a fraction of the run.

    Attributes:
        until: the stage ends at this fraction of the total steps (the last stage at 1.0).
        intra: weight of L_intra (2D clustering of slices and images).
        masked: weight of the masked slice-embedding prediction.
        inter: weight of L_inter (clustering agreement of two views of each volume).
        encoder_in_3d: the 3D losses train the ResNet trunk too (through the slices chosen by
            ``volume_backprop``); false: the trunk runs without gradient on volume views and
            only the token projection, the transformer and the heads learn from them (the
            exported 2D encoder is then plain 2D clustering).
    """

    until: float = 1.0
    intra: float = 1.0
    masked: float = 1.0
    inter: float = 1.0
    encoder_in_3d: bool = True

    @property
    def uses_volumes(self) -> bool:
        return self.masked > 0 or self.inter > 0

    def __post_init__(self) -> None:
        if not 0 < self.until <= 1:
            raise ValueError(f"until must be in (0, 1], got {self.until}")
        if min(self.intra, self.masked, self.inter) < 0 or self.intra + self.masked + self.inter <= 0:
            raise ValueError("loss weights must not be negative and at least one must be positive")


@dataclass
class VolumeBackpropConfig:
    """How the 3D losses reach the slice encoder's trunk in stages with ``encoder_in_3d``.

    Attributes:
        slices: slices per volume view that back-propagate into the trunk (0: all S). The others
            run without gradient (their tokens still enter the transformer); the chosen slices'
            gradient is scaled by S / slices, so on average it equals the gradient through all
            slices while activation memory grows with ``slices`` instead of S.
        recompute: activation checkpointing of the trunk on those slices (only each residual
            block's input is kept; the rest is recomputed in backward, about one more forward).
    """

    slices: int = 16
    recompute: bool = False

    def __post_init__(self) -> None:
        if self.slices < 0:
            raise ValueError(f"slices must not be negative, got {self.slices}")


@dataclass
class MaskingConfig:
    """Masked slice-embedding prediction.

    Attributes:
        ratio: fraction of the S tokens of a view replaced by the mask token (at least one).
    """

    ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")


def reference_schedule() -> list[StageConfig]:
    """The reference's staged order (2D clustering, then masked prediction, then volume
    clustering), every volume loss reaching the trunk."""
    return [StageConfig(until=0.6, masked=0.0, inter=0.0), StageConfig(until=0.8, inter=0.0), StageConfig(until=1.0)]


@dataclass
class Joint2d3dConfig:
    """The whole joint image-volume recipe."""

    method: Literal["joint2d3d"] = "joint2d3d"
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    volume_backprop: VolumeBackpropConfig = field(default_factory=VolumeBackpropConfig)
    schedule: list[StageConfig] = field(default_factory=reference_schedule)

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("schedule needs at least one stage")
        ends = [stage.until for stage in self.schedule]
        if any(b <= a for a, b in zip(ends, ends[1:])) or ends[-1] != 1.0:
            raise ValueError(f"schedule 'until' values must increase and the last must be 1.0, got {ends}")


def stage_at(schedule: list[StageConfig], step: int, total_steps: int) -> StageConfig:
    """The stage that optimiser step ``step`` (0-based) of ``total_steps`` belongs to."""
    for stage in schedule:
        if step < stage.until * total_steps:
            return stage
    return schedule[-1]
