"""Refine an affine lung registration by maximising the lungs' overlap (soft Dice) directly.

Mutual information on label images (``anatomy.registration``) finds the right basin but not the
affine with the best lung overlap: on real CT held out from the atlas the overlap optimum was
0.006-0.017 Dice higher (docs/anatomy.md). This step starts from that fit and climbs the
volume-weighted mean of the right and left lungs' soft Dice:

- the fixed (subject) points are a seeded sample of the 2 mm registration grid, dense in the band
  where the subject's lung boundary lies (a Gaussian of the lung indicator between 0.02 and 0.98)
  and sparse elsewhere, each point weighted by the share of its region it stands for, so the sums
  estimate the whole grid's;
- the moving (atlas) right and left indicators are Gaussian-smoothed, coarse then fine, and
  sampled trilinearly at the transformed points, with their gradients (analytic chain rule, no
  autograd: numpy in one fixed order, so two runs on any machine give the same transform, as the
  mutual information fit does, and preprocessing workers need not import torch);
- Adam on the 12 affine parameters, matrix steps scaled so that a step moves points at the lungs'
  radius (about 100 mm) as far as a translation step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# The lungs' radius in mm: matrix steps are translation steps divided by it.
_LUNG_RADIUS_MM = 100.0
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class OverlapSettings:
    """``sigmas_mm``: atlas smoothing per stage (coarse to fine); ``iterations``: Adam steps per
    stage; ``step_mm``: Adam's step, in mm of point shift; ``band_samples`` / ``other_samples``:
    fixed points drawn near the subject's lung boundary / elsewhere; ``band_sigma_mm``: the
    Gaussian that defines the band; ``seed``: the sample's seed."""

    sigmas_mm: tuple[float, ...] = (4.0, 2.0)
    iterations: int = 50
    step_mm: float = 0.5
    band_samples: int = 20_000
    other_samples: int = 5_000
    band_sigma_mm: float = 6.0
    seed: int = 1


def refine_overlap(fixed: sitk.Image, moving: sitk.Image, subject_to_atlas: sitk.AffineTransform,
                   settings: OverlapSettings = OverlapSettings()) -> sitk.AffineTransform:
    """The affine near ``subject_to_atlas`` (subject world -> atlas world, LPS mm) with the best lung overlap.

    Args:
        fixed: subject labels (0 / 1 right / 2 left) on an axis-aligned isotropic grid, cropped
            around the lungs.
        moving: atlas labels on an axis-aligned isotropic grid wide enough for the warped points.
        subject_to_atlas: the starting fit; its centre is kept.
    """
    points, labels, weights = _fixed_sample(fixed, settings)
    centre = np.array(subject_to_atlas.GetCenter())
    offsets = points - centre                                          # (N, 3) mm
    target = np.stack([labels == 1, labels == 2]).astype(np.float64)   # (2, N)
    volumes = target @ weights                                         # (2,) weighted voxel counts
    share = volumes / volumes.sum()
    params = np.concatenate([np.array(subject_to_atlas.GetMatrix()), np.array(subject_to_atlas.GetTranslation()) + centre])
    rates = np.concatenate([np.full(9, settings.step_mm / _LUNG_RADIUS_MM), np.full(3, settings.step_mm)])
    first, second, step = np.zeros(12), np.zeros(12), 0
    origin, spacing = np.array(moving.GetOrigin()), np.array(moving.GetSpacing())
    for sigma in settings.sigmas_mm:
        channels = _smoothed_indicators(moving, sigma)
        for _ in range(settings.iterations):
            matrix, shift = params[:9].reshape(3, 3), params[9:]
            voxel = (offsets @ matrix.T + shift - origin) / spacing  # (N, 3) x, y, z voxel of the atlas grid
            warped, slope = _trilinear(channels, voxel)           # (2, N), (2, N, 3) per voxel
            overlap = np.sum(weights * warped * target, axis=1)
            total = np.maximum(np.sum(weights * (warped + target), axis=1), 1e-9)  # a side absent from both: no gradient
            # d(-sum_k share_k Dice_k) / d warped_ki, then through the trilinear slope to the points (mm)
            d_warped = -(share * 2.0 / total**2)[:, None] * weights * (target * total[:, None] - overlap[:, None])
            gradient_q = np.einsum("kn,knd->nd", d_warped, slope) / spacing
            gradient = np.concatenate([(gradient_q.T @ offsets).ravel(), gradient_q.sum(axis=0)])
            step += 1
            first = _ADAM_BETAS[0] * first + (1 - _ADAM_BETAS[0]) * gradient
            second = _ADAM_BETAS[1] * second + (1 - _ADAM_BETAS[1]) * gradient**2
            corrected = (first / (1 - _ADAM_BETAS[0] ** step)) / (np.sqrt(second / (1 - _ADAM_BETAS[1] ** step)) + _ADAM_EPS)
            params = params - rates * corrected
    out = sitk.AffineTransform(3)
    out.SetCenter([float(v) for v in centre])
    out.SetMatrix([float(v) for v in params[:9]])
    out.SetTranslation([float(v) for v in params[9:] - centre])
    return out


def _fixed_sample(fixed: sitk.Image, settings: OverlapSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (N, 3) of a seeded sample of ``fixed``, their labels (N,) and region weights (N,)."""
    labels = sitk.GetArrayViewFromImage(fixed)
    lungs = (labels > 0).astype(np.float32)
    near = ndimage.gaussian_filter(lungs, settings.band_sigma_mm / fixed.GetSpacing()[0], truncate=3.0)
    band = (near > 0.02) & (near < 0.98)
    rng = np.random.default_rng(settings.seed)
    chosen, weights = [], []
    for region, wanted in ((band, settings.band_samples), (~band, settings.other_samples)):
        flat = np.flatnonzero(region)
        if flat.size == 0:
            continue
        take = np.sort(rng.choice(flat, size=min(wanted, flat.size), replace=False))
        chosen.append(take)
        weights.append(np.full(take.size, flat.size / take.size))
    index = np.concatenate(chosen)
    xyz = np.stack(np.unravel_index(index, labels.shape), axis=-1)[:, ::-1]
    points = np.array(fixed.GetOrigin()) + xyz * np.array(fixed.GetSpacing())
    return points, labels.ravel()[index], np.concatenate(weights)


def _smoothed_indicators(labels: sitk.Image, sigma_mm: float) -> np.ndarray:
    """Float32 (2, Z, Y, X): the right and left lung indicators of an isotropic grid after a Gaussian of ``sigma_mm``."""
    array = sitk.GetArrayViewFromImage(labels)
    sigma = sigma_mm / labels.GetSpacing()[0]
    return np.stack([ndimage.gaussian_filter((array == label).astype(np.float32), sigma, truncate=3.0) for label in (1, 2)])


def _trilinear(channels: np.ndarray, voxel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear values (C, N) of ``channels`` (C, Z, Y, X) at continuous voxel points (N, 3; x, y, z)
    and their slopes (C, N, 3; d/dx, d/dy, d/dz per voxel); zero outside the grid."""
    n_z, n_y, n_x = channels.shape[1:]
    low = np.floor(voxel).astype(np.int64)
    fx, fy, fz = (voxel - low).T
    inside = np.all((low >= 0) & (low < np.array([n_x, n_y, n_z]) - 1), axis=1)
    base = np.where(inside, (low[:, 2] * n_y + low[:, 1]) * n_x + low[:, 0], 0)
    flat = channels.reshape(len(channels), -1)
    corners = {(dx, dy, dz): np.take(flat, base + (dz * n_y + dy) * n_x + dx, axis=1) * inside for dx, dy, dz in np.ndindex(2, 2, 2)}
    # Interpolate along x, then y, then z, keeping each stage's difference for the slopes.
    rows = ((0, 0), (1, 0), (0, 1), (1, 1))  # (dy, dz)
    x00, x10, x01, x11 = [(1 - fx) * corners[0, dy, dz] + fx * corners[1, dy, dz] for dy, dz in rows]
    dx00, dx10, dx01, dx11 = [corners[1, dy, dz] - corners[0, dy, dz] for dy, dz in rows]
    y0, y1 = (1 - fy) * x00 + fy * x10, (1 - fy) * x01 + fy * x11
    values = (1 - fz) * y0 + fz * y1
    slope_x = (1 - fz) * ((1 - fy) * dx00 + fy * dx10) + fz * ((1 - fy) * dx01 + fy * dx11)
    slope_y = (1 - fz) * (x10 - x00) + fz * (x11 - x01)
    slope_z = y1 - y0
    return values, np.stack([slope_x, slope_y, slope_z], axis=-1)
