"""Batched 3D patch augmentation on the training device (DrasCLR recipe, METHODS.md section 1).

All samples of a batch are augmented at once with torch: one ``affine_grid`` + ``grid_sample``
resamples every crop with its own random affine transform, noise and gamma are element-wise.
Data-loader workers only read int16 crops; the per-sample MONAI transforms of the reference ran
on CPU workers and were the other bottleneck after the per-sample convolution loop.

The crop read around the landmark is larger than the patch (e.g. 56^3 for a 32^3 patch) so that
translations of up to 12 voxels sample real image, not padding; what still falls outside the crop
takes the nearest border value (``padding_mode="border"``, as in the reference).

Every random number is drawn from the ``generator`` passed in, in a fixed order and amount
whatever the probabilities (the HU offset, off in the reference recipe, is drawn only when its
probability is above 0, so runs without it repeat those made before it existed), so a run
restored with the generator's state repeats exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drasclr_monailabel.models.intensity import IntensityWindow


@dataclass
class AugmentConfig:
    """Augmentation parameters; values act on HU.

    Attributes:
        affine_p: probability of the random affine transform per sample.
        translate_voxels: translation drawn uniformly in +-this per axis.
        rotate_degrees: rotation about each axis drawn uniformly in +-this.
        scale: scale factor per axis drawn uniformly in 1 +- this.
        noise_p: probability of additive Gaussian noise.
        noise_std_hu: its standard deviation (HU).
        contrast_p: probability of the gamma (contrast) change.
        gamma_range: gamma drawn uniformly in this range; applied to the sample's min-max range.
        offset_p: probability of a HU offset added to the whole sample (not in the reference: lung
            density differs between scans by inspiration level and calibration, a cue that tells
            scans apart without looking at structure; an offset drawn per view removes it).
        offset_hu: the offset is drawn uniformly in +-this (HU).
    """

    affine_p: float = 1.0
    translate_voxels: float = 12.0
    rotate_degrees: float = 10.0
    scale: float = 0.1
    noise_p: float = 0.25
    noise_std_hu: float = 50.0
    contrast_p: float = 0.25
    gamma_range: tuple[float, float] = (0.5, 4.5)
    offset_p: float = 0.0
    offset_hu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("affine_p", "noise_p", "contrast_p", "offset_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.gamma_range) != 2 or not 0 < self.gamma_range[0] <= self.gamma_range[1]:
            raise ValueError(f"gamma_range must be two positive numbers, low <= high, got {self.gamma_range}")
        if (not 0 <= self.scale < 1 or self.translate_voxels < 0 or self.rotate_degrees < 0 or self.noise_std_hu < 0
                or self.offset_hu < 0):
            raise ValueError("scale must be in [0, 1); translate_voxels, rotate_degrees, noise_std_hu and offset_hu must not be negative")


class PatchAugmenter:
    """Crops (N, 1, S, S, S) in HU -> augmented patches (N, 1, P, P, P) in network units.

    Order: clip HU to the window, random affine (resampling the centre P^3 of the crop), Gaussian
    noise, HU offset, gamma, then scale to network units (no second clip, as in the reference).
    """

    def __init__(self, config: AugmentConfig, patch_size: int, window: IntensityWindow) -> None:
        self.config = config
        self.patch_size = patch_size
        self.window = window

    def __call__(self, crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        crop_size = crops.shape[-1]
        if (crop_size - self.patch_size) % 2 or crop_size < self.patch_size:
            raise ValueError(f"crop size {crop_size} must exceed the patch size {self.patch_size} by an even number")
        x = self.window.clip(crops)
        n = x.shape[0]
        cfg = self.config
        theta = random_affine(n, cfg, generator, x.device)
        apply_affine = _coin(n, cfg.affine_p, generator, x.device)
        identity = torch.eye(3, 4, device=x.device).expand(n, 3, 4)
        theta = torch.where(apply_affine[:, None, None], theta, identity)
        x = resample_centre(x, theta, self.patch_size)
        noise = torch.randn(x.shape, generator=generator, device=x.device) * cfg.noise_std_hu
        x = x + noise * _coin(n, cfg.noise_p, generator, x.device).view(n, 1, 1, 1, 1)
        if cfg.offset_p > 0:
            offset = _uniform_symmetric(generator, x.device, n) * cfg.offset_hu
            x = x + (offset * _coin(n, cfg.offset_p, generator, x.device)).view(n, 1, 1, 1, 1)
        low, high = cfg.gamma_range
        gamma = low + (high - low) * torch.rand(n, generator=generator, device=x.device)
        gamma = torch.where(_coin(n, cfg.contrast_p, generator, x.device), gamma, torch.ones_like(gamma))
        x = adjust_gamma(x, gamma)
        return self.window.scale(x)


def random_affine(n: int, config: AugmentConfig, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` random transforms as (n, 3, 4) matrices in voxel units, mapping output to input offsets.

    Rows and columns are in ``affine_grid``'s (x, y, z) order; the matrix part is rotation
    (about x, then y, then z) times per-axis scale, the last column the translation in voxels.
    """
    angles = _uniform_symmetric(generator, device, n, 3) * math.radians(config.rotate_degrees)
    scales = 1 + _uniform_symmetric(generator, device, n, 3) * config.scale
    shifts = _uniform_symmetric(generator, device, n, 3) * config.translate_voxels
    rotation = _rotation_matrices(angles)
    matrix = rotation * scales[:, None, :]
    return torch.cat([matrix, shifts[:, :, None]], dim=2)


def resample_centre(crops: torch.Tensor, voxel_affine: torch.Tensor, size: int) -> torch.Tensor:
    """Sample a ``size``^3 patch from each crop (N, C, S, S, S) with the voxel-unit affine (N, 3, 4).

    The affine maps an output offset from the patch centre to an input offset from the crop
    centre (both in voxels); the identity returns the centre ``size``^3 of the crop exactly.
    """
    crop = crops.shape[-1]
    theta = torch.cat([voxel_affine[:, :, :3] * (size / crop), voxel_affine[:, :, 3:] * (2.0 / crop)], dim=2)
    grid = F.affine_grid(theta.to(crops.dtype), [crops.shape[0], crops.shape[1], size, size, size], align_corners=False)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="border", align_corners=False)


def adjust_gamma(x: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample gamma on the sample's own min-max range: ``((x - lo) / range) ** gamma * range + lo``."""
    flat = x.flatten(1)
    low = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    span = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1))) - low
    unit = ((x - low) / (span + eps)).clamp(0, 1)
    return unit ** gamma.view(-1, *([1] * (x.dim() - 1))) * span + low


def _uniform_symmetric(generator: torch.Generator, device: torch.device, *shape: int) -> torch.Tensor:
    """Draws of U(-1, 1) in ``shape``."""
    return 2 * torch.rand(*shape, generator=generator, device=device) - 1


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` independent Bernoulli(p) draws (always drawn, to keep the random stream fixed)."""
    return torch.rand(n, generator=generator, device=device) < p


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(n, 3) angles (radians) about x, y, z -> (n, 3, 3) rotation Rz @ Ry @ Rx."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(*entries: torch.Tensor) -> torch.Tensor:
        return torch.stack(entries, dim=1).view(-1, 3, 3)

    rx = matrix(one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0])
    ry = matrix(cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1])
    rz = matrix(cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one)
    return rz @ ry @ rx
