"""The DrasCLR recipe (configs/drasclr.yaml) as dataclasses: every section, its keys and checks.

``drasclr pretrain`` validates a recipe against :class:`DrasclrConfig` (an unknown key or a value of
the wrong type stops it with the key named); docs/pretraining.md lists every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from drasclr_monailabel.models.encoder import EncoderArchitecture
from drasclr_monailabel.ssl.augment import AugmentConfig
from drasclr_monailabel.ssl.config import OptimConfig, TrainConfig


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
        queue_size: queue length per landmark (K); only slots written with a key of another
            subject count as negatives (``drasclr pretrain`` says how full the planned run gets them).
        queue_dtype: queue storage; float16 halves L x K x D x 4 bytes.
        momentum: key network update ``k = m k + (1 - m) q``.
        temperature: InfoNCE temperature.
        neighbour_weight: beta, weight of the neighbour InfoNCE (0 turns it and the reading of
            neighbour patches off).
        key_bn_splits: in one process, embed the keys in this many random sub-batches of at least
            two (shuffle-BN); 1 = one call. Under DDP keys are shuffled across processes instead.
        other_landmark_negatives: also use up to this many keys drawn at random from the other
            landmarks' queues as negatives (0: DrasCLR's own landmark only). They include other
            patches of the query's own subject, which share its scanner noise, kernel and
            inspiration, so they cannot be told apart by those alone.
    """

    queue_size: int = 4096
    queue_dtype: Literal["float32", "float16"] = "float32"
    momentum: float = 0.999
    temperature: float = 0.2
    neighbour_weight: float = 1.0
    key_bn_splits: int = 1
    other_landmark_negatives: int = 0

    def __post_init__(self) -> None:
        if self.queue_size < 1 or self.key_bn_splits < 1:
            raise ValueError("queue_size and key_bn_splits must be at least 1")
        if self.other_landmark_negatives < 0:
            raise ValueError("other_landmark_negatives must not be negative")
        if not 0 <= self.momentum < 1 or self.temperature <= 0 or self.neighbour_weight < 0:
            raise ValueError("momentum must be in [0, 1), temperature positive, neighbour_weight not negative")


@dataclass
class PreciseBnConfig:
    """BatchNorm statistics recomputed before export (see :mod:`.precise_bn`).

    Attributes:
        samples: patches used (un-augmented, random valid (subject, landmark) pairs); 0 keeps the
            running averages of training.
        batch_size: patches per batch.
        subjects_per_landmark: a batch holds ``batch_size / subjects_per_landmark`` random
            landmarks with this many random subjects each, so it mixes landmarks yet runs as one
            grouped convolution with few groups (a group of one sample runs PyTorch's slow
            reference convolution on a CPU).
    """

    samples: int = 4096
    batch_size: int = 64
    subjects_per_landmark: int = 4

    def __post_init__(self) -> None:
        if self.samples < 0 or self.batch_size < 2 or self.subjects_per_landmark < 1:
            raise ValueError("samples must be 0 or more, batch_size at least 2 and subjects_per_landmark at least 1")


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
    precise_bn: PreciseBnConfig = field(default_factory=PreciseBnConfig)
