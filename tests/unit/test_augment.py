"""Batched on-device augmentation: shapes, identity at p = 0, exact translations, reproducibility."""

from __future__ import annotations

import torch

from drasclr_monailabel.models.intensity import IntensityWindow
from drasclr_monailabel.ssl.augment import (
    AugmentConfig,
    PatchAugmenter,
    adjust_gamma,
    resample_centre,
)

WINDOW = IntensityWindow()
OFF = AugmentConfig(affine_p=0.0, noise_p=0.0, contrast_p=0.0)


def crops(n: int = 3, size: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1100, 400, (n, 1, size, size, size), generator=g, dtype=torch.int16)


def test_shapes_and_range() -> None:
    augmenter = PatchAugmenter(AugmentConfig(noise_p=1.0, contrast_p=1.0), patch_size=32, window=WINDOW)
    out = augmenter(crops(), torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 32, 32, 32) and out.dtype == torch.float32
    assert out.min() > -1.6 and out.max() < 1.6  # window [-1, 1] plus noise


def test_all_probabilities_zero_give_the_normalised_centre_patch() -> None:
    c = crops()
    out = PatchAugmenter(OFF, patch_size=32, window=WINDOW)(c, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, WINDOW(c[:, :, 4:36, 4:36, 4:36]), atol=1e-4, rtol=0)


def test_integer_translation_shifts_the_patch_exactly() -> None:
    c = crops(n=1).float()
    affine = torch.zeros(1, 3, 4)
    affine[0, :, :3] = torch.eye(3)
    affine[0, :, 3] = torch.tensor([3.0, -2.0, 1.0])  # (x, y, z) voxels
    out = resample_centre(c, affine, 32)
    expected = c[:, :, 4 + 1 : 36 + 1, 4 - 2 : 36 - 2, 4 + 3 : 36 + 3]  # array order (z, y, x)
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=0)


def test_same_generator_state_gives_the_same_views_and_views_differ() -> None:
    augmenter = PatchAugmenter(AugmentConfig(noise_p=0.5, contrast_p=0.5), patch_size=32, window=WINDOW)
    c = crops()
    a = augmenter(c, torch.Generator().manual_seed(4))
    b = augmenter(c, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    generator = torch.Generator().manual_seed(4)
    first, second = augmenter(c, generator), augmenter(c, generator)
    assert not torch.allclose(first, second)


def test_gamma_one_is_identity_and_gamma_keeps_the_range() -> None:
    x = torch.rand(2, 1, 4, 4, 4) * 1000
    torch.testing.assert_close(adjust_gamma(x, torch.ones(2)), x, atol=1e-3, rtol=0)
    y = adjust_gamma(x, torch.tensor([0.5, 3.0]))
    torch.testing.assert_close(y.flatten(1).min(1).values, x.flatten(1).min(1).values, atol=1e-3, rtol=0)
    torch.testing.assert_close(y.flatten(1).max(1).values, x.flatten(1).max(1).values, atol=1e-2, rtol=0)


def test_hu_offset_moves_every_voxel_of_a_view_by_one_amount_within_its_range() -> None:
    c = crops(n=64)
    plain = PatchAugmenter(OFF, patch_size=32, window=WINDOW)(c, torch.Generator().manual_seed(0))
    shifted = PatchAugmenter(AugmentConfig(affine_p=0.0, noise_p=0.0, contrast_p=0.0, offset_p=1.0, offset_hu=40.0),
                             patch_size=32, window=WINDOW)(c, torch.Generator().manual_seed(0))
    hu_per_unit = WINDOW.divisor
    offset = (shifted - plain).flatten(1) * hu_per_unit  # HU, per view
    torch.testing.assert_close(offset.min(1).values, offset.max(1).values, atol=1e-2, rtol=0)  # one amount per view
    assert offset.abs().max() <= 40.0 + 1e-2 and offset[:, 0].std() > 15.0  # spread over +-40 HU


def test_hu_offset_off_draws_only_what_the_reference_recipe_draws() -> None:
    """Runs without the offset (the reference recipe) consume the random stream exactly as before
    the offset existed: affine angles, scales, shifts and coin, noise and its coin, gamma and its coin."""
    n, c = 3, crops()
    generator = torch.Generator().manual_seed(4)
    PatchAugmenter(AugmentConfig(noise_p=0.5, contrast_p=0.5, offset_hu=40.0), patch_size=32, window=WINDOW)(c, generator)
    reference = torch.Generator().manual_seed(4)
    for shape in [(n, 3), (n, 3), (n, 3), (n,)]:
        torch.rand(*shape, generator=reference)
    torch.randn((n, 1, 32, 32, 32), generator=reference)
    for _ in range(3):
        torch.rand(n, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
