"""Realism of the synthetic emphysema: partly destroyed lung, spared airways, scanner and inspiration
variation, subtypes a threshold cannot tell apart, and a -950 HU baseline that stays weak."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from scipy import ndimage

from drasclr_monailabel.data.airways import PERI_AIRWAY_MM, spared_structures
from drasclr_monailabel.data.hu_overlap import NORMAL, HuHistograms
from drasclr_monailabel.data.inspiration import set_inspiration
from drasclr_monailabel.data.lesions import CENTRILOBULAR, PANLOBULAR, PARASEPTAL, LesionSpec, insert_emphysema
from drasclr_monailabel.data.lung_layout import parenchyma_weight, smooth_hu
from drasclr_monailabel.data.phantom import make_thorax_phantom
from drasclr_monailabel.data.scanner import simulate_scanner
from drasclr_monailabel.data.synth_cohort import PhantomSource, SynthSettings, case_seeds, synthesize_case, threshold_dice

SPACING_XYZ = (2.5, 2.5, 2.5)
TARGET_DICE = 0.45


@pytest.fixture(scope="module")
def phantom():
    """A noise-free phantom: lesions are the only thing that changes its HU."""
    return make_thorax_phantom(spacing=SPACING_XYZ, seed=3, noise_hu=0.0)


def _insert(case, fractions: dict[int, float], seed: int = 0):
    return insert_emphysema(case.volume.hu, case.lungs, SPACING_XYZ[::-1], LesionSpec(fractions=fractions),
                            np.random.default_rng(seed))


@pytest.mark.parametrize("value", [CENTRILOBULAR, PANLOBULAR, PARASEPTAL])
def test_lesions_hold_partly_destroyed_lung_on_both_sides_of_950(phantom, value):
    hu, label = _insert(phantom, {value: 0.12})
    lesion = label == value
    above = np.mean(hu[lesion] >= -950)
    assert above > 0.2  # partly destroyed lung above the threshold
    assert 1.0 - above > 0.1  # and destroyed lung below it
    # every lesion darkens the lung it sits in: the labelled voxels lost tissue
    source = phantom.volume.hu.astype(np.float32)
    assert np.median(source[lesion] - hu[lesion]) > 40


def test_airway_lumens_and_lung_next_to_trachea_and_main_bronchi_are_never_labelled(phantom):
    _, label = _insert(phantom, {PARASEPTAL: 0.15, PANLOBULAR: 0.2, CENTRILOBULAR: 0.1})
    spacing = np.array(SPACING_XYZ[::-1])
    assert np.count_nonzero(label) > 0.4 * np.count_nonzero(phantom.lungs)
    lumen = phantom.airways & (phantom.volume.hu < -950)  # air-dark lumen (airways thinner than a voxel are not visible)
    assert not np.any(label[lumen])
    # trachea and main bronchi: airway voxels at least 5 mm from the airway wall (lobar bronchi are narrower)
    central = ndimage.distance_transform_edt(phantom.airways, sampling=spacing) >= 5.0
    assert central.any()
    near = ndimage.distance_transform_edt(~central, sampling=spacing) <= 10.0
    assert np.count_nonzero(near & (phantom.lungs > 0)) > 50  # the check covers lung
    assert not np.any(label[near])


def _tube_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1 mm block of lung (-860 HU) with a 16 mm air tube entering from the top, outside air at one side."""
    shape = (60, 80, 80)
    hu = np.full(shape, -860.0, dtype=np.float32)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    tube = ((y - 40) ** 2 + (x - 40) ** 2 <= 8 ** 2) & (z >= 20)
    hu[np.broadcast_to(tube, shape)] = -1000.0
    hu[:, :, :4] = -1000.0  # outside air reaching a side of the box
    lungs = hu > -950
    lungs[:, :, :10] = False
    return hu, lungs, np.array([1.0, 1.0, 1.0])


def test_spared_structures_cover_lung_beside_a_central_airway_but_not_beside_outside_air():
    hu, lungs, spacing = _tube_scene()
    spared = spared_structures(hu, lungs, spacing)
    assert not np.any(spared & ~lungs)
    beside_tube = (slice(40, 60), 40, slice(50, 40 + 8 + int(PERI_AIRWAY_MM) - 3))
    assert spared[beside_tube].all()
    assert not spared[50, 40, 40 + 8 + int(PERI_AIRWAY_MM) + 6]  # farther than the zone
    assert not spared[:, :, 10:14].any()  # lung beside the outside air is ordinary lung
    assert not spared[:10].any()  # below the tube's end


def test_inspiration_sets_normal_lung_density_and_keeps_vessels(phantom):
    hu, label = _insert(phantom, {CENTRILOBULAR: 0.05})
    spacing = SPACING_XYZ[::-1]
    inside = phantom.lungs > 0
    weight = parenchyma_weight(smooth_hu(hu, np.array(spacing)), inside)
    normal = (weight >= 0.99) & (label == 0)
    vessels = inside & (phantom.volume.hu > -300)
    medians = {}
    for target in (-900.0, -820.0):
        out, factor = set_inspiration(hu, phantom.lungs, label, spacing, target)
        assert np.median(out[normal]) == pytest.approx(target, abs=3.0)
        assert np.abs(out[vessels] - hu[vessels]).max() < 60
        assert np.array_equal(out[~inside], hu[~inside])
        medians[target] = (factor, np.median(out[label > 0]))
    assert medians[-900.0][0] < 1.0 < medians[-820.0][0]  # deeper breath: less tissue per voxel
    assert medians[-900.0][1] < medians[-820.0][1]  # destroyed lung follows the breath too


def test_calibration_offset_shifts_every_voxel():
    hu = np.full((4, 64, 64), -850.0, dtype=np.float32)
    base = simulate_scanner(hu, (2.5, 0.7, 0.7), 0.0, "smooth", np.random.default_rng(0))
    shifted = simulate_scanner(hu, (2.5, 0.7, 0.7), 0.0, "smooth", np.random.default_rng(0), offset_hu=12.0)
    assert np.all(shifted.astype(int) - base == 12)


def _fixed(**ranges) -> SynthSettings:
    """Settings with one value per range, on a coarse phantom."""
    return SynthSettings(severity_percent=(12.0, 12.0), phantom_spacing=(2.5, 2.5, 2.5), mixed_probability=0.0,
                         **{key: (value, value) if isinstance(value, float) else value for key, value in ranges.items()})


def test_scanner_and_inspiration_move_normal_lung_across_the_threshold_and_lesions_above_it():
    source = PhantomSource((2.5, 2.5, 2.5))
    deep_noisy = synthesize_case(source.scan(1), _fixed(lung_hu=-900.0, noise_hu=60.0, kernels=("sharp",),
                                                        hu_offset=-10.0), 1)
    shallow_clean = synthesize_case(source.scan(1), _fixed(lung_hu=-820.0, noise_hu=10.0, kernels=("smooth",),
                                                          hu_offset=10.0), 1)
    share = {}
    for name, case in (("deep", deep_noisy), ("shallow", shallow_clean)):
        inside = case.lungs > 0
        normal, lesion = inside & (case.label == 0), case.label > 0
        share[name] = (np.mean(case.volume.hu[normal] < -950), np.mean(case.volume.hu[lesion] < -950))
        assert np.median(case.volume.hu[normal]) > -950
    assert share["deep"][0] > 0.1  # many normal voxels below -950 HU: a deep breath on a noisy sharp scan
    assert share["shallow"][0] < 0.01
    assert share["shallow"][1] < 0.5  # most destroyed lung above -950 HU at a shallow breath
    assert deep_noisy.lung_hu < shallow_clean.lung_hu


@pytest.fixture(scope="module")
def small_cohort():
    """Six phantom scans with the default ranges (every subtype as main subtype twice)."""
    settings = SynthSettings(phantom_spacing=(3.0, 3.0, 3.0), mixed_probability=0.0)
    source = PhantomSource(settings.phantom_spacing)
    cases = []
    for seed in case_seeds(5, 40):
        case = synthesize_case(source.scan(seed), settings, seed)
        if case.subtype != "none" and sum(c.subtype == case.subtype for c in cases) < 2 and case.severity_percent > 2:
            cases.append(case)
        if len(cases) == 6:
            return cases
    raise AssertionError("could not draw two scans per subtype")


def test_threshold_baseline_stays_below_the_target(small_cohort):
    dice = [threshold_dice(c.volume.hu, c.lungs, c.label) for c in small_cohort]
    assert np.mean(dice) <= TARGET_DICE
    assert np.mean(dice) > 0.1  # lesions are darker than lung: the threshold still finds part of them


def test_threshold_cannot_tell_subtypes_apart(small_cohort):
    histograms = HuHistograms()
    for case in small_cohort:
        histograms.add(case.volume.hu, case.lungs, case.label)
    subtypes = [name for name in histograms.present() if name != NORMAL]
    assert len(subtypes) == 3
    for first, second in combinations(subtypes, 2):
        assert histograms.best_threshold_accuracy(first, second) < 0.65
    for name in subtypes:  # each subtype is darker than normal lung, but not all below -950 HU
        assert histograms.quantile(name, 0.5) < histograms.quantile(NORMAL, 0.5) - 40
        assert 0.2 < histograms.share_below(name, -950) < 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_every_subtype_puts_all_three_in_one_scan_each_in_its_own_zone(seed):
    settings = SynthSettings(severity_percent=(15.0, 15.0), phantom_spacing=SPACING_XYZ, every_subtype=True)
    case = synthesize_case(PhantomSource(SPACING_XYZ).scan(seed), settings, seed)
    assert sorted(case.subtype.split("+")) == ["centrilobular", "panlobular", "paraseptal"]
    counts = {value: np.count_nonzero(case.label == value) for value in (CENTRILOBULAR, PANLOBULAR, PARASEPTAL)}
    assert min(counts.values()) >= 0.1 * sum(counts.values())  # each gets at least ~15 % of the lesions
    assert case.subtype.split("+")[0] == {CENTRILOBULAR: "centrilobular", PANLOBULAR: "panlobular",
                                          PARASEPTAL: "paraseptal"}[max(counts, key=counts.get)]
    heights = {value: np.mean(np.nonzero(case.label == value)[0]) for value in counts}  # array z points superior (LPS)
    assert heights[CENTRILOBULAR] > heights[PANLOBULAR]
    depth = ndimage.distance_transform_edt(case.lungs > 0, sampling=case.volume.spacing[::-1])
    assert np.median(depth[case.label == PARASEPTAL]) < 0.5 * np.median(depth[case.label == CENTRILOBULAR])
