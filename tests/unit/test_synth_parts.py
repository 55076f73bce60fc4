"""Parts of the synthetic cohort: random deformation, scanner kernels and noise, survival outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from drasclr_monailabel.data.deform import DeformRange, random_deformation
from drasclr_monailabel.data.phantom import LEFT_LUNG, RIGHT_LUNG, make_thorax_phantom
from drasclr_monailabel.data.scanner import simulate_scanner
from drasclr_monailabel.data.survival import synthetic_survival


@pytest.fixture(scope="module")
def coarse_phantom():
    return make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=5, noise_hu=0.0)


def test_deformation_keeps_geometry_and_anatomy_sides(coarse_phantom):
    volume, lungs = coarse_phantom.volume, coarse_phantom.lungs
    for seed in range(3):
        moved, moved_lungs = random_deformation(volume, lungs, np.random.default_rng(seed))
        assert moved.spacing == volume.spacing and moved.direction == volume.direction
        assert moved.hu.shape[1:] == volume.hu.shape[1:] and moved_lungs.shape == moved.hu.shape
        assert 0.7 * volume.hu.shape[0] - 1 <= moved.hu.shape[0] <= volume.hu.shape[0]
        assert np.count_nonzero(moved_lungs) >= 0.5 * np.count_nonzero(lungs)
        # LPS: the right lung lies at smaller x than the left one (no left-right flip)
        right_x = np.argwhere(moved_lungs == RIGHT_LUNG)[:, 2].mean()
        left_x = np.argwhere(moved_lungs == LEFT_LUNG)[:, 2].mean()
        assert right_x < left_x
        # the lung labels still sit on lung-density voxels of the warped image
        assert np.median(moved.hu[moved_lungs > 0]) < -700


def test_deformation_varies_with_the_seed_and_repeats_with_it(coarse_phantom):
    volume, lungs = coarse_phantom.volume, coarse_phantom.lungs
    a = random_deformation(volume, lungs, np.random.default_rng(1))
    b = random_deformation(volume, lungs, np.random.default_rng(1))
    c = random_deformation(volume, lungs, np.random.default_rng(2))
    assert np.array_equal(a[0].hu, b[0].hu) and np.array_equal(a[1], b[1])
    assert a[0].hu.shape != c[0].hu.shape or not np.array_equal(a[0].hu, c[0].hu)


def test_no_deformation_range_gives_the_source_back(coarse_phantom):
    still = DeformRange(rotation_deg=0, tilt_deg=0, scale=0, elastic_mm=0, min_slices_kept=1.0)
    moved, moved_lungs = random_deformation(coarse_phantom.volume, coarse_phantom.lungs, np.random.default_rng(0), still)
    assert np.array_equal(moved_lungs, coarse_phantom.lungs)
    assert np.abs(moved.hu.astype(int) - coarse_phantom.volume.hu).max() <= 1


def _uniform_with_edge(shape=(4, 96, 96)) -> np.ndarray:
    hu = np.full(shape, -850.0, dtype=np.float32)
    hu[:, :, shape[2] // 2:] = 40.0
    return hu


@pytest.mark.parametrize("kernel", ["smooth", "sharp"])
@pytest.mark.parametrize("noise_hu", [10.0, 50.0])
def test_noise_has_the_requested_level(kernel, noise_hu):
    hu = np.full((6, 128, 128), -850.0, dtype=np.float32)
    out = simulate_scanner(hu, (5.0, 0.6, 0.6), noise_hu, kernel, np.random.default_rng(0))
    assert out.dtype == np.int16
    assert out.std() == pytest.approx(noise_hu, rel=0.15)
    assert out.mean() == pytest.approx(-850.0, abs=2.0)


def test_sharp_noise_is_finer_grained_than_smooth_noise():
    hu = np.full((6, 128, 128), -850.0, dtype=np.float32)

    def neighbour_correlation(kernel: str) -> float:
        out = simulate_scanner(hu, (5.0, 0.6, 0.6), 30.0, kernel, np.random.default_rng(0)).astype(float) + 850.0
        return float(np.mean(out[:, :, 1:] * out[:, :, :-1]) / np.mean(out**2))

    assert neighbour_correlation("sharp") < neighbour_correlation("smooth") - 0.3


def test_sharp_kernel_overshoots_edges_and_smooth_kernel_blurs_them():
    hu = _uniform_with_edge()
    sharp = simulate_scanner(hu, (5.0, 0.6, 0.6), 0.0, "sharp", np.random.default_rng(0))
    smooth = simulate_scanner(hu, (5.0, 0.6, 0.6), 0.0, "smooth", np.random.default_rng(0))
    assert sharp.min() < -860 and sharp.max() > 50  # ringing on both sides of the edge
    assert smooth.min() >= -850 and smooth.max() <= 40
    assert np.count_nonzero((smooth[0, 0] > -840) & (smooth[0, 0] < 30)) >= 2  # a ramp, not a step


def test_scanner_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="unknown kernel"):
        simulate_scanner(np.zeros((1, 4, 4), np.float32), (1.0, 1.0, 1.0), 0.0, "bone", np.random.default_rng(0))


def test_survival_is_shorter_with_more_emphysema_and_partly_censored():
    rng = np.random.default_rng(0)
    mild = [synthetic_survival(1.0, rng) for _ in range(600)]
    severe = [synthetic_survival(30.0, rng) for _ in range(600)]
    mild_times, mild_events = np.array(mild).T
    severe_times, severe_events = np.array(severe).T
    assert np.median(severe_times) < 0.6 * np.median(mild_times)
    assert severe_events.mean() > mild_events.mean()
    assert 0.05 < mild_events.mean() < 0.95  # both deaths and censoring occur
    assert np.all(mild_times > 0)
