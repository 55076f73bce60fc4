"""Keep nnU-Net's intensity augmentations off the atlas-coordinate channels.

nnU-Net's training pipeline adds noise, blur, brightness, contrast, low-resolution and gamma
changes to every image channel. Applied to the coordinate channels they would move the location
that routes the encoder's conditional convolutions (brightness x1.25 moves a voxel a quarter of the
atlas further out). Spatial transforms (rotation, scaling, mirroring) must still move the
coordinates with the image, so only the intensity transforms are restricted to the CT channel.
"""

from __future__ import annotations

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import (
    MultiplicativeBrightnessTransform,
)
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import (
    SimulateLowResolutionTransform,
)
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

INTENSITY_TRANSFORMS = (GaussianNoiseTransform, GaussianBlurTransform, MultiplicativeBrightnessTransform,
                        ContrastTransform, SimulateLowResolutionTransform, GammaTransform)


class LeadingChannelsOnly(BasicTransform):
    """Apply ``transform`` to the first ``channels`` image channels and pass the others through."""

    def __init__(self, transform: BasicTransform, channels: int = 1) -> None:
        super().__init__()
        self.transform = transform
        self.channels = channels

    def __call__(self, **data_dict) -> dict:
        image = data_dict.get("image")
        if image is None or image.shape[0] <= self.channels:
            return self.transform(**data_dict)
        data_dict["image"] = image[: self.channels]
        data_dict = self.transform(**data_dict)
        data_dict["image"] = torch.cat([data_dict["image"], image[self.channels:]])
        return data_dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels}, transform={self.transform})"


def intensity_on_ct_only(pipeline: BasicTransform) -> BasicTransform:
    """nnU-Net's composed training transforms with every intensity transform limited to channel 0."""
    if not isinstance(pipeline, ComposeTransforms):
        return pipeline
    wrapped = []
    for transform in pipeline.transforms:
        inner = transform.transform if isinstance(transform, RandomTransform) else transform
        wrapped.append(LeadingChannelsOnly(transform) if isinstance(inner, INTENSITY_TRANSFORMS) else transform)
    return ComposeTransforms(wrapped)
