"""Lesion models: severity control, zone predominance, subpleural bullae, vessel sparing, partial volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from drasclr_monailabel.data.lesions import CENTRILOBULAR, PANLOBULAR, PARASEPTAL, LesionSpec, insert_emphysema
from drasclr_monailabel.data.phantom import make_thorax_phantom

SPACING_XYZ = (2.5, 2.5, 2.5)


@pytest.fixture(scope="module")
def lung_phantom():
    """A noise-free phantom: lesions are the only thing that changes its HU."""
    return make_thorax_phantom(spacing=SPACING_XYZ, seed=3, noise_hu=0.0)


def _insert(case, fractions: dict[int, float], seed: int = 0):
    return insert_emphysema(case.volume.hu, case.lungs, SPACING_XYZ[::-1], LesionSpec(fractions=fractions),
                            np.random.default_rng(seed))


def _upper_lower_ratio(label: np.ndarray, lungs: np.ndarray, value: int) -> float:
    """Lesion share of the upper third of the lungs' height divided by that of the lower third."""
    slices = np.flatnonzero((lungs > 0).any(axis=(1, 2)))
    edges = np.linspace(slices[0], slices[-1] + 1, 4).round().astype(int)
    lower, upper = slice(edges[0], edges[1]), slice(edges[2], edges[3])  # array z points superior (LPS)

    def share(zone: slice) -> float:
        return np.count_nonzero(label[zone] == value) / np.count_nonzero(lungs[zone])

    return share(upper) / max(share(lower), 1e-9)


@pytest.mark.parametrize("value", [CENTRILOBULAR, PANLOBULAR, PARASEPTAL])
@pytest.mark.parametrize("target", [0.04, 0.15])
def test_labelled_fraction_reaches_the_target(lung_phantom, value, target):
    _, label = _insert(lung_phantom, {value: target})
    inside = lung_phantom.lungs > 0
    measured = np.count_nonzero(label[inside]) / np.count_nonzero(inside)
    assert measured == pytest.approx(target, abs=0.01)
    assert set(np.unique(label)) == {0, value}


def test_mixed_subtypes_each_reach_their_share(lung_phantom):
    _, label = _insert(lung_phantom, {CENTRILOBULAR: 0.06, PARASEPTAL: 0.03})
    inside = lung_phantom.lungs > 0
    for value, target in ((CENTRILOBULAR, 0.06), (PARASEPTAL, 0.03)):
        assert np.count_nonzero(label[inside] == value) / np.count_nonzero(inside) == pytest.approx(target, abs=0.01)


def test_centrilobular_is_upper_and_panlobular_lower_zone_predominant(lung_phantom):
    for seed in (0, 1):
        _, centrilobular = _insert(lung_phantom, {CENTRILOBULAR: 0.06}, seed)
        _, panlobular = _insert(lung_phantom, {PANLOBULAR: 0.1}, seed)
        assert _upper_lower_ratio(centrilobular, lung_phantom.lungs, CENTRILOBULAR) > 1.5
        assert _upper_lower_ratio(panlobular, lung_phantom.lungs, PANLOBULAR) < 1 / 1.5


def test_paraseptal_bullae_lie_along_the_pleura(lung_phantom):
    depth = ndimage.distance_transform_edt(lung_phantom.lungs > 0, sampling=SPACING_XYZ[::-1])
    _, paraseptal = _insert(lung_phantom, {PARASEPTAL: 0.08})
    _, centrilobular = _insert(lung_phantom, {CENTRILOBULAR: 0.06})
    assert np.percentile(depth[paraseptal == PARASEPTAL], 90) <= 10.0
    assert np.median(depth[paraseptal == PARASEPTAL]) < 0.5 * np.median(depth[centrilobular == CENTRILOBULAR])


def test_labels_stay_in_the_lungs_and_spare_vessels(lung_phantom):
    hu, label = _insert(lung_phantom, {CENTRILOBULAR: 0.08, PANLOBULAR: 0.08, PARASEPTAL: 0.04})
    lungs = lung_phantom.lungs > 0
    assert not np.any(label[~lungs])
    vessels = lungs & (lung_phantom.volume.hu > -300)
    assert vessels.sum() > 100
    assert not np.any(label[vessels])
    assert np.abs(hu[vessels] - lung_phantom.volume.hu[vessels]).max() < 60
    outside = ~ndimage.binary_dilation(lungs, iterations=2)
    assert np.array_equal(hu[outside], lung_phantom.volume.hu[outside].astype(np.float32))


def test_lesions_darken_towards_air_with_partial_volume_at_edges(lung_phantom):
    hu, label = _insert(lung_phantom, {PANLOBULAR: 0.15})
    lesion = label == PANLOBULAR
    core = ndimage.binary_erosion(lesion, iterations=2)
    assert -1000 <= np.median(hu[core]) < np.median(lung_phantom.volume.hu[core]) - 40  # tissue lost, towards air
    edge = lesion & ~ndimage.binary_erosion(lesion)
    ring = ndimage.binary_dilation(lesion) & ~lesion & (lung_phantom.lungs > 0) & (lung_phantom.volume.hu < -600)
    # Edge voxels sit between the lesion core and the untouched parenchyma around it.
    assert np.median(hu[core]) < np.median(hu[edge]) < np.median(hu[ring]) < np.median(lung_phantom.volume.hu[ring]) + 1


def test_zero_severity_changes_nothing(lung_phantom):
    hu, label = _insert(lung_phantom, {})
    assert not label.any()
    assert np.array_equal(hu, lung_phantom.volume.hu.astype(np.float32))
