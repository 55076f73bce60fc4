"""Multi-crop and volume-view augmentation on the device, batched (one grid_sample per call).

Inputs are squares in [0, 1] display units (0 = air / black); outputs are network units
``2 x - 1`` (so a CT slice gets exactly the lung window mapping of docs/formats.md). Per crop:
a random resized crop (area fraction and aspect ratio drawn, position anywhere inside the
square) with a left-right flip, done as one affine sampling grid; then contrast and brightness,
gamma, Gaussian blur and Gaussian noise. Contrast, brightness and gamma apply only to samples
marked ``jitter`` (by default the 2D images, not CT): CT numbers are quantitative and emphysema
is a density change, so an encoder taught to ignore global intensity would ignore the disease.

The slices of one volume view share one crop and one intensity change (noise excepted), so a view
stays a coherent volume: its slices still line up and the transformer can compare them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from drasclr_monailabel.ssl.joint2d3d.config import CropConfig


class SliceAugmenter:
    """Random crops of 2D samples and volume views, drawn from the trainer's generator."""

    def __init__(self, config: CropConfig) -> None:
        self.config = config

    def multi_crop(self, images: torch.Tensor, jitter: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1, N, N) in [0, 1] -> global crops (n_global * B, 1, G, G) and local crops
        (n_local * B, 1, L, L) or None, crop-major (rows c*B .. c*B + B - 1 are crop c).
        ``jitter`` (B,) bool: samples that get contrast, brightness and gamma changes."""
        c = self.config
        glob = self.global_crops(images, jitter, generator)
        local = None
        if c.local_crops:
            local = self.augment(images.repeat(c.local_crops, 1, 1, 1), c.local_size, c.local_scale, 1, jitter.repeat(c.local_crops), generator)
        return glob, local

    def global_crops(self, images: torch.Tensor, jitter: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The global crops of :meth:`multi_crop` alone: (n_global * B, 1, G, G), crop-major."""
        c = self.config
        return self.augment(images.repeat(c.global_crops, 1, 1, 1), c.global_size, c.global_scale, 1, jitter.repeat(c.global_crops), generator)

    def volume_views(self, views: torch.Tensor, jitter: bool, generator: torch.Generator) -> torch.Tensor:
        """(V, 2, S, N, N) in [0, 1] -> (V * 2 * S, 1, G, G), one crop per view shared by its S slices;
        ``jitter``: views get contrast, brightness and gamma changes too."""
        v, two, s, n, _ = views.shape
        flags = torch.full((v * two * s,), jitter, dtype=torch.bool, device=views.device)
        return self.augment(views.reshape(v * two * s, 1, n, n), self.config.global_size, self.config.volume_scale, s, flags, generator)

    def augment(self, images: torch.Tensor, size: int, scale: tuple[float, float], group: int, jitter: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """Crop and jitter ``images`` (M, 1, N, N) -> (M, 1, size, size) in network units; each run of
        ``group`` consecutive images shares its random parameters; ``jitter`` (M,) bool selects the
        images whose contrast, brightness and gamma change (all parameters are drawn regardless, so
        the random stream does not depend on it)."""
        c = self.config
        m = images.shape[0]
        count = m // group
        device = images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            draw = torch.rand(count, generator=generator, device=device)
            return (low + (high - low) * draw).repeat_interleave(group)

        area = uniform(*scale)
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        width = torch.sqrt(area * ratio).clamp(max=1.0)
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        flip = torch.where(uniform(0.0, 1.0) < c.flip_p, -1.0, 1.0)
        shift_x = uniform(-1.0, 1.0) * (1 - width)
        shift_y = uniform(-1.0, 1.0) * (1 - height)
        zero = torch.zeros_like(width)
        theta = torch.stack([torch.stack([width * flip, zero, shift_x], 1), torch.stack([zero, height, shift_y], 1)], 1)
        grid = F.affine_grid(theta, [m, 1, size, size], align_corners=False)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        on = jitter.view(m, 1, 1, 1)
        contrast = torch.where(on, uniform(1 - c.contrast, 1 + c.contrast).view(m, 1, 1, 1), 1.0)
        brightness = torch.where(on, uniform(-c.brightness, c.brightness).view(m, 1, 1, 1), 0.0)
        x = (x - 0.5) * contrast + 0.5 + brightness
        gamma = torch.where(on, torch.exp(uniform(math.log(c.gamma[0]), math.log(c.gamma[1]))).view(m, 1, 1, 1), 1.0)
        x = x.clamp(0, 1).pow(gamma)
        if c.blur_p > 0:
            blurred = _gaussian_blur(x, uniform(*c.blur_sigma), c.blur_sigma[1])
            x = torch.where((uniform(0.0, 1.0) < c.blur_p).view(m, 1, 1, 1), blurred, x)
        if c.noise_std > 0:
            x = x + c.noise_std * torch.randn(x.shape, generator=generator, device=device)
        return 2 * x - 1


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each image of ``x`` (M, 1, H, W) with its own ``sigma`` (M,) in pixels (separable)."""
    m = x.shape[0]
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (M, K)
    planes = F.pad(x.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")  # (1, M, H + 2r, W + 2r)
    planes = F.conv2d(planes, kernel.view(m, 1, -1, 1), groups=m)
    planes = F.conv2d(planes, kernel.view(m, 1, 1, -1), groups=m)
    return planes.transpose(0, 1)
