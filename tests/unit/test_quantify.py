"""Densitometry and regions of ``quantify`` on the phantom with hand-inserted low-HU spheres."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from drasclr_monailabel.emphysema import REGIONS, quantify
from drasclr_monailabel.emphysema.histogram import HuHistogram
from drasclr_monailabel.errors import NoLungsError

RIGHT_UPPER, RIGHT_LOWER, LEFT_MIDDLE, LEFT_LOWER = 1, 3, 5, 6


def test_laa950_counts_exactly_the_inserted_voxels(lung_case):
    first = lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 6.0)
    second = lung_case.sphere(lung_case.deepest_voxel(LEFT_LOWER), 8.0)
    lung_case.insert(first | second)
    whole = quantify(lung_case.volume, lung_case.lungs).region("whole")
    n_lung = int(np.count_nonzero(lung_case.lungs))
    expected = int(first.sum() + second.sum())
    assert whole.voxels == n_lung
    assert whole.densitometry.laa950_percent == pytest.approx(100.0 * expected / n_lung, rel=1e-12)


def test_thresholds_are_strict(lung_case):
    at_threshold = lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 6.0)
    just_below = lung_case.sphere(lung_case.deepest_voxel(LEFT_LOWER), 6.0)
    lung_case.insert(at_threshold, hu=-950)
    lung_case.insert(just_below, hu=-951)
    whole = quantify(lung_case.volume, lung_case.lungs, clusters=False).region("whole").densitometry
    n_lung = np.count_nonzero(lung_case.lungs)
    assert whole.laa950_percent == pytest.approx(100.0 * just_below.sum() / n_lung)
    lung_hu = lung_case.volume.hu[lung_case.lungs > 0]
    assert whole.laa910_percent == pytest.approx(100.0 * np.count_nonzero(lung_hu < -910) / n_lung)
    assert whole.laa856_percent == pytest.approx(100.0 * np.count_nonzero(lung_hu < -856) / n_lung)


def test_left_right_assignment(lung_case):
    sphere = lung_case.sphere(lung_case.deepest_voxel(LEFT_MIDDLE), 6.0)
    lung_case.insert(sphere)
    report = quantify(lung_case.volume, lung_case.lungs, clusters=False)
    left = report.region("left")
    assert left.densitometry.laa950_percent == pytest.approx(100.0 * sphere.sum() / np.count_nonzero(lung_case.lungs == 2))
    assert report.region("right").densitometry.laa950_percent == 0.0
    # the phantom's right lung lies at negative world x (LPS: x grows to the patient's left)
    x_index = np.nonzero(lung_case.lungs == 1)[2]
    assert lung_case.volume.origin[0] + lung_case.volume.spacing[0] * x_index.mean() < 0


def test_apex_sphere_is_in_the_upper_zone_and_base_sphere_in_the_lower(lung_case):
    radius = 6.0
    deep_enough = (lung_case.depth_mm >= radius + 2) & (lung_case.lungs == 1)
    z = np.nonzero(deep_enough)[0]
    apex = tuple(int(i[0]) for i in np.nonzero(deep_enough & (np.arange(deep_enough.shape[0])[:, None, None] == z.max())))
    base = tuple(int(i[0]) for i in np.nonzero(deep_enough & (np.arange(deep_enough.shape[0])[:, None, None] == z.min())))
    lung_case.insert(lung_case.sphere(apex, radius) | lung_case.sphere(base, radius))
    report = quantify(lung_case.volume, lung_case.lungs, clusters=False)
    assert report.region("right_upper").densitometry.laa950_percent > 0
    assert report.region("right_lower").densitometry.laa950_percent > 0
    assert report.region("right_middle").densitometry.laa950_percent == 0
    assert report.region("left").densitometry.laa950_percent == 0
    # z index grows superiorly in this LPS phantom: the apex sphere was the one with the larger z
    assert apex[0] > base[0]


def test_thirds_are_equal_volume_within_one_slice(lung_case):
    report = quantify(lung_case.volume, lung_case.lungs, clusters=False)
    for side, label in (("right", 1), ("left", 2)):
        largest_slice = np.count_nonzero(lung_case.lungs == label, axis=(1, 2)).max()
        third = report.region(side).voxels / 3
        for zone in ("upper", "middle", "lower"):
            assert abs(report.region(f"{side}_{zone}").voxels - third) <= largest_slice
    whole = report.region("whole").voxels
    assert report.region("upper").voxels + report.region("middle").voxels + report.region("lower").voxels == whole


def test_zones_follow_world_orientation_not_array_order(lung_case):
    lung_case.insert(lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 6.0))
    volume = lung_case.volume
    top_z = volume.origin[2] + volume.spacing[2] * (volume.hu.shape[0] - 1)
    flipped = replace(volume, hu=volume.hu[::-1].copy(), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
                      origin=(volume.origin[0], volume.origin[1], top_z))
    original = quantify(volume, lung_case.lungs, clusters=False)
    mirrored = quantify(flipped, lung_case.lungs[::-1].copy(), clusters=False)
    assert original.rows() == mirrored.rows()
    assert mirrored.region("right_upper").densitometry.laa950_percent > 0


def test_perc15_mean_and_volume_match_numpy_on_the_same_voxels(phantom):
    report = quantify(phantom.volume, phantom.lungs, clusters=False)
    voxel_ml = float(np.prod(phantom.volume.spacing)) / 1000.0
    for name, label in (("whole", None), ("right", 1), ("left", 2)):
        inside = phantom.lungs > 0 if label is None else phantom.lungs == label
        hu = phantom.volume.hu[inside].astype(np.float64)
        stats = report.region(name)
        assert stats.densitometry.perc15_hu == pytest.approx(np.percentile(hu, 15), abs=1e-9)
        assert stats.densitometry.mean_hu == pytest.approx(hu.mean(), rel=1e-12)
        assert stats.volume_l == pytest.approx(hu.size * voxel_ml / 1000.0)


@pytest.mark.parametrize("q", [0.0, 15.0, 37.5, 50.0, 99.9, 100.0])
def test_histogram_percentile_interpolates_like_numpy(q):
    values = np.random.default_rng(3).integers(-1000, -700, size=101)
    histogram = HuHistogram(np.bincount(values + 1000, minlength=300), -1000)
    assert histogram.percentile(q) == pytest.approx(np.percentile(values, q), abs=1e-9)


def test_emphysema_mask_volume_share_and_subtypes(lung_case):
    deep = lung_case.sphere(lung_case.deepest_voxel(RIGHT_LOWER), 8.0)
    other = lung_case.sphere(lung_case.deepest_voxel(LEFT_LOWER), 6.0)
    lung_case.insert(deep)
    mask = np.zeros(lung_case.lungs.shape, dtype=np.uint8)
    mask[deep] = 2
    mask[other] = 3
    mask[lung_case.lungs == 0] = 1  # outside the lungs: ignored
    report = quantify(lung_case.volume, lung_case.lungs, mask, clusters=False)
    right = report.region("right").mask
    assert right is not None
    assert right.volume_ml == pytest.approx(deep.sum() * lung_case.voxel_ml)
    n_right = np.count_nonzero(lung_case.lungs == 1)
    assert right.percent_of_region == pytest.approx(100.0 * deep.sum() / n_right)
    assert right.subtype_percent_of_region == pytest.approx({"centrilobular": 0.0, "panlobular": 100.0 * deep.sum() / n_right,
                                                             "paraseptal": 0.0})
    assert right.densitometry.laa950_percent == 100.0
    whole = report.region("whole").mask
    assert whole.volume_ml == pytest.approx((deep.sum() + other.sum()) * lung_case.voxel_ml)
    assert whole.densitometry.laa950_percent == pytest.approx(100.0 * deep.sum() / (deep.sum() + other.sum()))


@pytest.mark.parametrize("dtype", [bool, np.uint8])
def test_binary_mask_has_no_subtype_breakdown(lung_case, dtype):
    mask = lung_case.sphere(lung_case.deepest_voxel(RIGHT_LOWER), 6.0).astype(dtype)
    whole = quantify(lung_case.volume, lung_case.lungs, mask, clusters=False).region("whole").mask
    assert whole.subtype_percent_of_region == {}
    assert whole.volume_ml == pytest.approx(np.count_nonzero(mask) * lung_case.voxel_ml)


def test_partial_coverage_is_flagged(lung_case):
    complete = quantify(lung_case.volume, lung_case.lungs, clusters=False)
    assert (complete.apex_cut, complete.base_cut, complete.warnings) == (False, False, [])
    lung_slices = np.flatnonzero(np.any(lung_case.lungs, axis=(1, 2)))
    top = int(lung_slices[-1]) - 8  # drop the apical 2 cm
    cut = replace(lung_case.volume, hu=lung_case.volume.hu[:top].copy())
    report = quantify(cut, lung_case.lungs[:top].copy(), clusters=False)
    assert report.apex_cut and not report.base_cut
    assert any("partial lung coverage" in w and "apex" in w for w in report.warnings)


def test_report_dict_is_json_ready_and_complete(lung_case):
    lung_case.insert(lung_case.sphere(lung_case.deepest_voxel(RIGHT_UPPER), 6.0))
    report = quantify(lung_case.volume, lung_case.lungs)
    data = json.loads(json.dumps(report.to_dict()))
    assert list(data["regions"]) == list(REGIONS)
    assert data["format"] == "drasclr-emphysema/1"
    assert data["clusters"]["n_clusters"] == 1
    assert len(report.rows()) == len(REGIONS)


def test_empty_lung_mask_raises_no_lungs(lung_case):
    with pytest.raises(NoLungsError):
        quantify(lung_case.volume, np.zeros_like(lung_case.lungs))


def test_mismatched_arrays_are_refused(lung_case):
    with pytest.raises(ValueError, match="shape"):
        quantify(lung_case.volume, lung_case.lungs[:-1])
    with pytest.raises(ValueError, match="shape"):
        quantify(lung_case.volume, lung_case.lungs, np.zeros((3, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="0 \\(outside\\)"):
        quantify(lung_case.volume, lung_case.lungs * 2)
