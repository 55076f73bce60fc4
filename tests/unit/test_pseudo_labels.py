"""Pseudo-labels from LAA clusters: size filter, airway removal, subtype heuristic, CIP codes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from drasclr_monailabel.emphysema import PseudoLabelOptions, laa_pseudo_labels, to_cip_labelmap
from drasclr_monailabel.emphysema.pseudo_labels import CENTRILOBULAR, PANLOBULAR, PARASEPTAL

RIGHT_UPPER, RIGHT_MIDDLE, RIGHT_LOWER, LEFT_UPPER, LEFT_MIDDLE, LEFT_LOWER = range(1, 7)
NO_SMOOTHING = PseudoLabelOptions(smoothing_sigma_mm=0.0)


def test_small_clusters_are_removed_and_large_ones_kept(lung_case):
    options = replace(NO_SMOOTHING, min_cluster_ml=0.05, binary=True)  # 5 voxels of 10 mm^3
    big = lung_case.sphere(lung_case.deepest_voxel(RIGHT_MIDDLE), 5.0)
    tiny = np.zeros_like(big)
    z, y, x = lung_case.deepest_voxel(LEFT_MIDDLE)
    tiny[z, y, x : x + 3] = True  # 3 voxels, 0.03 mL
    lung_case.insert(big | tiny)
    labels = laa_pseudo_labels(lung_case.volume, lung_case.lungs, options)
    assert big.sum() * lung_case.voxel_ml >= options.min_cluster_ml > tiny.sum() * lung_case.voxel_ml
    np.testing.assert_array_equal(labels > 0, big)
    assert set(np.unique(labels)) == {0, 1}


def test_subtype_heuristic(lung_case):
    deep_small = lung_case.sphere(lung_case.deepest_voxel(RIGHT_MIDDLE), 5.0)
    subpleural = lung_case.sphere(lung_case.voxel_at_depth(LEFT_UPPER, 5.0), 4.5)
    confluent = lung_case.sphere(lung_case.deepest_voxel(LEFT_LOWER), 13.0)  # ~9 mL, deep in the lung
    lung_case.insert(deep_small | subpleural | confluent)
    assert np.all(lung_case.lungs[subpleural] > 0) and lung_case.depth_mm[subpleural].min() <= 2.5
    labels = laa_pseudo_labels(lung_case.volume, lung_case.lungs, NO_SMOOTHING)
    assert np.all(labels[deep_small] == CENTRILOBULAR)
    assert np.all(labels[subpleural] == PARASEPTAL)
    assert np.all(labels[confluent] == PANLOBULAR)
    assert np.count_nonzero(labels) == deep_small.sum() + subpleural.sum() + confluent.sum()


def test_lung_cut_by_the_scan_edge_is_not_pleura(lung_case):
    lung_slices = np.flatnonzero(np.any(lung_case.lungs, axis=(1, 2)))
    middle = int(lung_slices[len(lung_slices) // 2])
    cut_lungs = lung_case.lungs[: middle + 1].copy()
    volume = replace(lung_case.volume, hu=lung_case.volume.hu[: middle + 1].copy())
    centre = np.argwhere(lung_case.depth_mm[middle] == lung_case.depth_mm[middle].max())[0]
    sphere = np.zeros(cut_lungs.shape, dtype=bool)
    sphere[middle - 2 : middle + 1, centre[0] - 2 : centre[0] + 3, centre[1] - 2 : centre[1] + 3] = True
    volume = replace(volume, hu=np.where(sphere, -980, volume.hu).astype(np.int16))
    labels = laa_pseudo_labels(volume, cut_lungs, NO_SMOOTHING)
    assert np.all(labels[sphere] == CENTRILOBULAR)


@pytest.mark.parametrize("tube_rule", [True, False])
def test_airway_lumen_is_not_labelled(phantom, tube_rule):
    """Bronchi inside the lung mask are removed, also by their link to the trachea alone."""
    intrapulmonary_airway = phantom.airways & (phantom.lungs > 0)
    options = PseudoLabelOptions(binary=True, airway_min_elongation=4.0 if tube_rule else 1e9)
    kept = laa_pseudo_labels(phantom.volume, phantom.lungs, replace(options, remove_airways=False))
    removed = laa_pseudo_labels(phantom.volume, phantom.lungs, options)
    labelled_without_removal = np.count_nonzero(kept[intrapulmonary_airway])
    assert labelled_without_removal > 100  # the phantom's bronchi do pass the threshold
    assert np.count_nonzero(removed[intrapulmonary_airway]) < 0.1 * labelled_without_removal


def test_air_the_lung_mask_missed_is_not_taken_for_airway(lung_case):
    """A cluster touching air outside the mask is kept when that air is no trachea or bronchus."""
    z_lung = np.flatnonzero(np.any(lung_case.lungs == 1, axis=(1, 2)))
    base = int(z_lung[len(z_lung) // 4])  # crop the scan so that this slice is its first
    volume = replace(lung_case.volume, hu=lung_case.volume.hu[base:].copy())
    lungs = lung_case.lungs[base:].copy()
    depth = lung_case.depth_mm[base:]
    y, x = np.unravel_index(np.argmax(np.where(lungs[0] == 1, depth[0], -1)), lungs[0].shape)
    hu = volume.hu.copy()
    hu[0:4, y - 3 : y + 3, x - 3 : x + 3] = -990  # a hole reaching the scan's edge...
    lungs[0, y - 3 : y + 3, x - 3 : x + 3] = 0  # ...where the lung mask missed it
    y2, x2 = np.unravel_index(np.argmax(np.where(lungs[6] == 2, depth[6], -1)), lungs[6].shape)
    hu[6:10, y2 - 3 : y2 + 3, x2 - 3 : x2 + 3] = -990  # a hole inside the left lung...
    lungs[6, y2, x2] = 0  # ...beside a one-voxel gap in the mask
    labels = laa_pseudo_labels(replace(volume, hu=hu), lungs, replace(NO_SMOOTHING, binary=True))
    assert np.all(labels[1:4, y - 3 : y + 3, x - 3 : x + 3] == 1)
    assert np.count_nonzero(labels[6:10, y2 - 3 : y2 + 3, x2 - 3 : x2 + 3]) == 6 * 6 * 4 - 1


def test_tube_shaped_cluster_is_removed_as_airway(lung_case):
    z, y, x = lung_case.deepest_voxel(RIGHT_MIDDLE)
    tube = np.zeros(lung_case.lungs.shape, dtype=bool)
    tube[z - 1 : z + 1, y - 1 : y + 1, x - 10 : x + 10] = True  # 4 x 4 x 40 mm, inside the lung
    lung_case.insert(tube)
    assert np.all(lung_case.lungs[tube] > 0)
    options = replace(NO_SMOOTHING, binary=True)
    assert not np.any(laa_pseudo_labels(lung_case.volume, lung_case.lungs, options))
    kept = laa_pseudo_labels(lung_case.volume, lung_case.lungs, replace(options, remove_airways=False))
    np.testing.assert_array_equal(kept > 0, tube)


def test_smoothing_suppresses_isolated_noise_voxels(lung_case):
    rng = np.random.default_rng(5)
    lung_voxels = np.flatnonzero(lung_case.lungs)
    noise = np.zeros(lung_case.lungs.size, dtype=bool)
    noise[rng.choice(lung_voxels, size=200, replace=False)] = True
    lung_case.insert(noise.reshape(lung_case.lungs.shape))
    options = PseudoLabelOptions(min_cluster_ml=0.0, binary=True, smoothing_sigma_mm=2.0)  # about one voxel
    assert np.any(laa_pseudo_labels(lung_case.volume, lung_case.lungs, replace(options, smoothing_sigma_mm=0.0)))
    assert not np.any(laa_pseudo_labels(lung_case.volume, lung_case.lungs, options))


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="min_cluster_ml"):
        PseudoLabelOptions(min_cluster_ml=-1.0)
    with pytest.raises(ValueError, match="panlobular_min_ml"):
        PseudoLabelOptions(panlobular_min_ml=0.0)


def test_cip_codes_with_zone_severity(lung_case):
    labels = np.zeros(lung_case.lungs.shape, dtype=np.uint8)
    labels[lung_case.zone_codes == LEFT_LOWER] = PANLOBULAR  # the whole zone: severe
    small = lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 4.0)
    labels[small] = CENTRILOBULAR  # a tiny share of its zone: mild
    labels[lung_case.lungs == 0] = PARASEPTAL  # outside the lungs: dropped
    cip = to_cip_labelmap(labels, lung_case.lungs, lung_case.volume.spacing, lung_case.volume.direction)
    assert cip.dtype == np.uint16
    assert np.all(cip[lung_case.zone_codes == LEFT_LOWER] == (21 << 8) + 11)  # severe panlobular, left lower third
    assert np.all(cip[small] >> 8 == 16)  # mild centrilobular
    assert np.all(cip[small & (lung_case.zone_codes == RIGHT_UPPER)] & 0xFF == 12)  # right upper third
    assert np.all(cip[lung_case.lungs == 0] == 0)
    right_middle_normal = (lung_case.zone_codes == RIGHT_MIDDLE) & (labels == 0)
    assert np.all(cip[right_middle_normal] == 13)  # region only, type 0
    binary = to_cip_labelmap((labels > 0).astype(np.uint8), lung_case.lungs, lung_case.volume.spacing,
                             lung_case.volume.direction, binary=True)
    assert np.all(binary[small] >> 8 == 4)
