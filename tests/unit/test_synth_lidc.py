"""Synthetic emphysema in a real full-chest CT (LIDC-IDRI-0001): spared airways, subtype anatomy,
partly destroyed lung, and the -950 HU baseline on a small cohort."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from drasclr_monailabel.data.lesions import CENTRILOBULAR, PANLOBULAR, PARASEPTAL, LesionSpec, insert_emphysema
from drasclr_monailabel.data.synth_cohort import RealSource, SynthSettings, case_seeds, synthesize_case, threshold_dice

TARGET_DICE = 0.45


@pytest.fixture(scope="module")
def lidc_spacing(lidc_case) -> np.ndarray:
    return np.array(lidc_case.volume.spacing[::-1])


def _insert(lidc_case, spacing: np.ndarray, fractions: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    return insert_emphysema(lidc_case.volume.hu, lidc_case.lungs, tuple(spacing), LesionSpec(fractions=fractions),
                            np.random.default_rng(0))


def _zone_share(label: np.ndarray, lungs: np.ndarray, value: int) -> tuple[float, float]:
    """Share of the upper and of the lower third of the lungs' height that holds ``value``."""
    slices = np.flatnonzero((lungs > 0).any(axis=(1, 2)))
    edges = np.linspace(slices[0], slices[-1] + 1, 4).round().astype(int)
    shares = [np.count_nonzero(label[a:b] == value) / np.count_nonzero(lungs[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    return shares[2], shares[0]  # array z points superior


@pytest.fixture(scope="module")
def painted(lidc_case, lidc_spacing):
    """All three subtypes painted into LIDC-IDRI-0001 (no deformation, no scanner effects)."""
    return _insert(lidc_case, lidc_spacing, {PARASEPTAL: 0.08, CENTRILOBULAR: 0.1, PANLOBULAR: 0.1})


def test_trachea_and_the_lung_beside_it_are_never_labelled(lidc_case, lidc_spacing, painted, sample_lidc_structures):
    import SimpleITK as sitk

    labels_path, names_path = sample_lidc_structures
    names = {row.split(",")[2]: int(row.split(",")[3]) for row in names_path.read_text().splitlines()[1:]}
    structures = sitk.Resample(sitk.ReadImage(str(labels_path)), lidc_case.volume.to_sitk(), sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0)
    trachea = sitk.GetArrayFromImage(structures) == names["trachea"]  # drawn by another tool, not by the generator
    near = ndimage.distance_transform_edt(~trachea, sampling=lidc_spacing) <= 5.0
    _, label = painted
    assert np.count_nonzero(near & (lidc_case.lungs > 0)) > 1000  # the reference lungs do reach the trachea
    assert not np.any(label[near])


def test_subtypes_keep_their_anatomy_in_real_lungs(lidc_case, lidc_spacing, painted):
    _, label = painted
    upper, lower = _zone_share(label, lidc_case.lungs, CENTRILOBULAR)
    assert upper > 1.5 * lower
    upper, lower = _zone_share(label, lidc_case.lungs, PANLOBULAR)
    assert lower > 1.5 * upper
    box = ndimage.find_objects((lidc_case.lungs > 0).astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(lidc_case.lungs[box] > 0, 1), sampling=lidc_spacing)[1:-1, 1:-1, 1:-1]
    assert np.median(depth[label[box] == PARASEPTAL]) < 0.5 * np.median(depth[label[box] == CENTRILOBULAR])


def test_real_lung_lesions_hold_voxels_above_950_and_below_it(lidc_case, painted):
    hu, label = painted
    for value in (CENTRILOBULAR, PANLOBULAR, PARASEPTAL):
        above = np.mean(hu[label == value] >= -950)
        assert 0.2 < above < 0.9, value


@pytest.mark.slow
def test_threshold_baseline_stays_below_the_target_on_lidc_scans(lidc_case):
    """Three LIDC-derived scans with the default ranges (about 25 s each on one core)."""
    source = RealSource(lidc_case.volume.source, lambda volume: lidc_case.lungs, name="lidc0001_image")
    settings = SynthSettings(severity_percent=(5.0, 25.0))
    dice = [threshold_dice(c.volume.hu, c.lungs, c.label)
            for c in (synthesize_case(source.scan(seed), settings, seed) for seed in case_seeds(3, 3))]
    assert np.mean(dice) <= TARGET_DICE
