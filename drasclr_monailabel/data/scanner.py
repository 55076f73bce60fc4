"""Scanner effects: reconstruction kernel, quantum noise and calibration, applied in the image plane.

A CT reconstruction kernel trades resolution for noise. Here a *smooth* (soft-tissue, e.g.
B30f-like) kernel blurs edges and gives blotchy, low-frequency noise; a *sharp* (lung, B60f-like)
kernel enhances edges (overshoot next to vessels and lesion borders) and gives fine-grained,
high-frequency noise. Both act within each slice, as filtered back-projection does; noise is
scaled to the requested standard deviation in HU after filtering, so ``noise_hu`` is the noise an
observer would measure in a uniform region (on top of the source scan's own noise). Noise grows as
dose falls (standard deviation about 1 / sqrt(mAs)); sharp kernels and low dose both widen the lung
histogram and raise %LAA-950 in normal lung (Boedeker et al., Radiology 2004; Yuan et al., Chest
2007; Gallardo-Estrella et al., Eur Radiol 2016). A calibration offset shifts every HU, as the
drift of a scanner's air and water values does between calibrations and between scanners (Parr
et al., AJRCCM 2004).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KERNELS = ("smooth", "sharp")
HU_RANGE = (-1024, 3071)

SMOOTH_BLUR_MM = 0.6
SMOOTH_NOISE_GRAIN_MM = 0.9
SHARP_UNSHARP_MM = 1.0
SHARP_GAIN = 0.6
SHARP_NOISE_GRAIN_MM = 0.6


def simulate_scanner(hu: np.ndarray, spacing_zyx: tuple[float, float, float], noise_hu: float, kernel: str,
                     rng: np.random.Generator, offset_hu: float = 0.0) -> np.ndarray:
    """Apply a reconstruction kernel, correlated noise and a calibration offset.

    Args:
        hu: float (Z, Y, X) HU.
        spacing_zyx: voxel size in mm, array order (only y and x are used: the filters are 2D).
        noise_hu: standard deviation of the added noise in HU (0 for none).
        kernel: "smooth" or "sharp".
        rng: random source of the noise.
        offset_hu: calibration error added to every voxel (HU).

    Returns:
        int16 HU clipped to [-1024, 3071].
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel '{kernel}'; choose from {', '.join(KERNELS)}")
    image = hu.astype(np.float32, copy=True)
    if kernel == "smooth":
        image = ndimage.gaussian_filter(image, sigma=_in_plane(SMOOTH_BLUR_MM, spacing_zyx))
    else:
        blurred = ndimage.gaussian_filter(image, sigma=_in_plane(SHARP_UNSHARP_MM, spacing_zyx))
        image += SHARP_GAIN * (image - blurred)
    if noise_hu > 0:
        image += _noise(image.shape, spacing_zyx, kernel, rng, noise_hu)
    image += offset_hu
    return np.clip(np.rint(image), *HU_RANGE).astype(np.int16)


def _in_plane(sigma_mm: float, spacing_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    return (0.0, sigma_mm / spacing_zyx[1], sigma_mm / spacing_zyx[2])


def _noise(shape: tuple[int, ...], spacing_zyx: tuple[float, float, float], kernel: str, rng: np.random.Generator,
           noise_hu: float) -> np.ndarray:
    white = rng.standard_normal(size=shape, dtype=np.float32)
    if kernel == "smooth":
        noise = ndimage.gaussian_filter(white, sigma=_in_plane(SMOOTH_NOISE_GRAIN_MM, spacing_zyx))
    else:
        noise = white - 0.8 * ndimage.gaussian_filter(white, sigma=_in_plane(SHARP_NOISE_GRAIN_MM, spacing_zyx))
    noise *= noise_hu / max(float(noise[:: max(1, shape[0] // 8)].std()), 1e-6)
    return noise
