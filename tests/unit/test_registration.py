"""Affine registration: recovering a known affine, landmarks landing in lung, partial coverage, real CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.lung_mask import lung_labels_working_grid
from drasclr_monailabel.anatomy.pipeline import preprocess_volume
from drasclr_monailabel.anatomy.registration import RegistrationSettings, register_to_atlas
from drasclr_monailabel.data.phantom import make_thorax_phantom
from drasclr_monailabel.io import CTVolume, read_ct


def labels_image(case) -> sitk.Image:
    image = sitk.GetImageFromArray(case.lungs)
    image.SetSpacing(case.volume.spacing)
    image.SetOrigin(case.volume.origin)
    return image


def test_recovers_a_known_affine():
    atlas = labels_image(make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=3, noise_hu=0.0))
    rng = np.random.default_rng(0)
    known = sitk.AffineTransform(3)  # subject point -> atlas point
    known.SetCenter((0.0, 0.0, 20.0))
    known.SetMatrix((np.eye(3) + rng.uniform(-0.08, 0.08, (3, 3))).ravel().tolist())
    known.SetTranslation(rng.uniform(-15.0, 15.0, 3).tolist())
    subject = sitk.Resample(atlas, atlas, known, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)

    result = register_to_atlas(subject, atlas)

    lung = np.argwhere(sitk.GetArrayFromImage(subject) > 0)[::50]
    points = [subject.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]]) for index in lung]
    found = result.transform.GetInverse()
    errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), known.TransformPoint(p))) for p in points]
    assert np.mean(errors) < 1.5  # mm, on a 3 mm grid
    assert result.dice > 0.95


def test_partial_scan_gets_its_in_plane_scales_and_keeps_the_similarity_in_z():
    """A slab of the upper lungs whose x and y are scaled differently (known): the similarity has
    one scale, the in-plane refinement recovers the two in-plane scales and the shear, and leaves
    every entry that involves z as the similarity set it."""
    atlas = labels_image(make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=3, noise_hu=0.0))
    known = sitk.AffineTransform(3)  # subject point -> atlas point, in-plane only
    known.SetCenter((0.0, 0.0, 20.0))
    known.SetMatrix((1.12, 0.03, 0.0, 0.0, 0.92, 0.0, 0.0, 0.0, 1.0))
    known.SetTranslation((6.0, -8.0, 0.0))
    subject = sitk.Resample(atlas, atlas, known, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    slices = np.flatnonzero(sitk.GetArrayViewFromImage(subject).any(axis=(1, 2)))
    slab = subject[:, :, int(slices[0] + 0.55 * (slices[-1] - slices[0])):]  # apex and the upper lungs, cut below

    def fit(partial_transform: str) -> tuple[np.ndarray, float]:
        result = register_to_atlas(slab, atlas, RegistrationSettings(partial_transform=partial_transform))
        return np.array(sitk.AffineTransform(result.transform.GetInverse()).GetMatrix()).reshape(3, 3), result.dice

    similarity, similarity_dice = fit("similarity")
    in_plane, in_plane_dice = fit("similarity_in_plane")
    assert np.ptp(np.linalg.svd(similarity, compute_uv=False)) < 1e-6  # a rotation times one scale
    assert in_plane[0, 0] / in_plane[1, 1] == pytest.approx(1.12 / 0.92, abs=0.04)
    assert in_plane[0, 1] == pytest.approx(0.03, abs=0.02)
    np.testing.assert_allclose(in_plane[:, 2], similarity[:, 2], atol=1e-9)
    np.testing.assert_allclose(in_plane[2, :], similarity[2, :], atol=1e-9)
    assert in_plane_dice > similarity_dice + 0.03


def test_partial_scan_gets_its_sagittal_tilt():
    """A base slab of a subject whose cranio-caudal axis tilts with depth (atlas z = z + 0.12 y,
    known): the similarity can only rotate, the in-plane stage keeps its z row, and the tilt stage
    recovers the slope and puts the lungs where the known transform does."""
    atlas = labels_image(make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=3, noise_hu=0.0))
    known = sitk.AffineTransform(3)  # subject point -> atlas point
    known.SetCenter((0.0, 0.0, 20.0))
    known.SetMatrix((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.12, 1.0))
    subject = sitk.Resample(atlas, atlas, known, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    slices = np.flatnonzero(sitk.GetArrayViewFromImage(subject).any(axis=(1, 2)))
    slab = subject[:, :, :int(slices[0] + 0.55 * (slices[-1] - slices[0]))]  # bases and the lower lungs, cut above
    lung = np.argwhere(sitk.GetArrayFromImage(slab) > 0)[::40]
    points = [slab.TransformIndexToPhysicalPoint([int(v) for v in index[::-1]]) for index in lung]

    def fit(partial_transform: str) -> tuple[np.ndarray, float]:
        found = register_to_atlas(slab, atlas, RegistrationSettings(partial_transform=partial_transform)).transform.GetInverse()
        errors = [np.linalg.norm(np.subtract(found.TransformPoint(p), known.TransformPoint(p))) for p in points]
        return np.array(sitk.AffineTransform(found).GetMatrix()).reshape(3, 3), float(np.mean(errors))

    in_plane, in_plane_error = fit("similarity_in_plane")
    tilt, tilt_error = fit("similarity_in_plane_tilt")
    assert abs(in_plane[2, 1] - 0.12) > 0.05  # the similarity's rotation does not reach it
    assert tilt[2, 1] == pytest.approx(0.12, abs=0.02)
    np.testing.assert_allclose(tilt[2, [0, 2]], in_plane[2, [0, 2]], atol=1e-9)  # z versus x and the z scale stay
    assert tilt_error < 1.5 < in_plane_error  # mm


def depth_mm(mask: np.ndarray, centre: np.ndarray, reach: int = 12) -> float:
    """Distance (mm, 1 mm grid) from ``centre`` to the nearest voxel outside ``mask`` (capped at ``reach``)."""
    low = np.maximum(centre - reach, 0)
    box = mask[low[0]:centre[0] + reach + 1, low[1]:centre[1] + reach + 1, low[2]:centre[2] + reach + 1]
    outside = np.argwhere(~box)
    if not mask[tuple(centre)]:
        return 0.0
    return float(np.min(np.linalg.norm(outside + low - centre, axis=1))) if len(outside) else float(reach)


@pytest.fixture(scope="module")
def full_scan(phantom_atlas):
    """A full-chest phantom (not one of the atlas's subjects) through the pipeline."""
    return preprocess_volume(make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=21).volume, phantom_atlas)


def test_landmarks_land_in_the_subject_lung(full_scan, phantom_atlas):
    scan = full_scan
    atlas_lung = sitk.GetArrayFromImage(phantom_atlas.lungs) > 0
    depth = np.array([depth_mm(atlas_lung, centre) for centre in phantom_atlas.landmarks.voxel])
    assert scan.registration.dice > 0.9
    assert scan.valid.mean() > 0.95
    in_subject_lung = scan.lungs[tuple(np.clip(scan.landmarks, 0, np.array(scan.lungs.shape) - 1).T)] > 0
    # Affine registration cannot follow every boundary (heart size varies), so centres near the
    # atlas lung's edge may fall just outside; those well inside must land in the subject lung.
    assert np.mean(in_subject_lung[scan.valid & (depth >= 5)]) > 0.95
    assert np.mean(in_subject_lung[scan.valid & (depth > 0)]) > 0.85
    # Sides are kept: landmarks of the atlas's right lung land in the subject's right lung.
    atlas_side = sitk.GetArrayFromImage(phantom_atlas.lungs)[tuple(phantom_atlas.landmarks.voxel.T)]
    right = scan.valid & (atlas_side == 1) & (depth >= 5)
    assert np.mean(scan.lungs[tuple(scan.landmarks[right].T)] == 1) > 0.9


def test_partial_coverage_marks_unscanned_landmarks_invalid(full_scan, phantom_atlas):
    full = full_scan
    upper_volume = make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=21, z_range_mm=(40.0, 180.0)).volume
    upper = preprocess_volume(upper_volume, phantom_atlas)
    atlas_z = phantom_atlas.landmarks.world[:, 2]
    low_atlas = atlas_z < np.percentile(atlas_z, 25)
    assert not upper.valid[low_atlas].any()
    assert 0.2 < upper.valid.mean() < 0.8
    assert any("partial lung coverage" in w for w in upper.warnings)
    # Where both runs have the landmark, the partial scan puts it at nearly the same place.
    both = full.valid & upper.valid
    full_world = np.asarray(full.origin) + full.landmarks[both][:, ::-1]
    upper_world = np.asarray(upper.origin) + upper.landmarks[both][:, ::-1]
    assert np.median(np.linalg.norm(full_world - upper_world, axis=1)) < 8.0


def test_real_ct_registers(sample_lung2, default_atlas):
    volume = read_ct(sample_lung2)
    result = register_to_atlas(lung_labels_working_grid(volume), default_atlas.lungs)
    assert result.dice > 0.85  # lung2 is one of the atlas's three scans
    scale = np.abs(np.linalg.det(np.array(result.transform.GetMatrix()).reshape(3, 3))) ** (1 / 3)
    assert 0.85 < scale < 1.2


def test_oblique_scan(phantom_atlas):
    case = make_thorax_phantom(spacing=(3.0, 3.0, 3.0), seed=22)
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    oblique = CTVolume(hu=case.volume.hu, spacing=case.volume.spacing, origin=case.volume.origin,
                       direction=tuple(rotation.ravel()), source="oblique")
    scan = preprocess_volume(oblique, phantom_atlas)
    assert scan.registration.dice > 0.9
    assert scan.valid.mean() > 0.9
    # The axis-aligned 1 mm grid's corners were not scanned: padded with -1024 HU.
    assert scan.image[0, 0, 0] == -1024 and scan.image[-1, -1, -1] == -1024
    # The lungs are found where the rotated scan put them: compare with the phantom's truth.
    truth = sitk.GetImageFromArray(case.lungs)
    truth.CopyInformation(oblique.to_sitk())
    grid = sitk.Image(scan.image.shape[::-1], sitk.sitkUInt8)
    grid.SetOrigin(scan.origin)
    truth_on_grid = sitk.GetArrayFromImage(sitk.Resample(truth, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    overlap = 2.0 * np.count_nonzero((scan.lungs > 0) & (truth_on_grid > 0)) / (np.count_nonzero(scan.lungs) + np.count_nonzero(truth_on_grid))
    assert overlap > 0.95


@pytest.fixture(scope="module")
def lidc_full(lidc_case, default_atlas):
    """LIDC-IDRI-0001, the whole chest, through the pipeline with the shipped atlas."""
    return preprocess_volume(lidc_case.volume, default_atlas)


def landmark_world(scan) -> np.ndarray:
    """World position (x, y, z mm) of every landmark centre of a preprocessed scan."""
    return np.asarray(scan.origin) + scan.landmarks[:, ::-1] * np.asarray(scan.spacing)


def test_full_chest_real_ct_registers_with_its_landmarks_in_lung(lidc_full):
    from drasclr_monailabel.anatomy.landmarks import patch_fractions

    scan = lidc_full
    assert scan.registration.dice >= 0.85
    assert scan.valid.mean() >= 0.95
    assert np.mean(patch_fractions(scan.lungs > 0, scan.landmarks[scan.valid]) > 0.1) >= 0.95


@pytest.mark.parametrize("part, lung_mm", [("apex", 60.0), ("apex", 100.0), ("base", 60.0), ("base", 100.0)])
def test_slabs_put_landmarks_where_the_full_scan_does(lidc_case, lidc_full, default_atlas, part, lung_mm):
    """Apex-only and base-only slabs cut from LIDC-IDRI-0001: only landmarks whose patch was scanned are
    valid, and they lie near where the whole scan puts them.

    Issue 15's line is 10 mm. With these slab limits (from the reference lobes; the benchmark's come
    from the pipeline's lungs, docs/anatomy.md) every landmark was within it, the largest 9.7 mm
    (base, 60 mm), medians 1.6-7.5 mm; without the tilt stage (``similarity_in_plane``) 93 % of the
    100 mm apex slab's were (largest 13.6 mm), which fails here."""
    from drasclr_monailabel.data.sections import cut_slab

    base, apex = lidc_case.lung_z_range()
    low, high = (apex - lung_mm, apex + 30.0) if part == "apex" else (base - 30.0, base + lung_mm)
    slab = preprocess_volume(cut_slab(lidc_case.volume, low, high, source=f"{part}.nii.gz"), default_atlas)
    assert any("partial lung coverage" in w for w in slab.warnings)
    world = landmark_world(slab)[slab.valid]
    z = lidc_case.slice_z()
    first, last = z[z >= low][0], z[z <= high][-1]
    assert np.all((world[:, 2] - 16 >= first - 1.5) & (world[:, 2] + 16 <= last + 1.5))  # whole patch scanned
    both = slab.valid & lidc_full.valid
    assert both.sum() >= 0.9 * slab.valid.sum() >= 10
    distance = np.linalg.norm(landmark_world(slab)[both] - landmark_world(lidc_full)[both], axis=1)
    assert np.median(distance) <= 8.0
    assert distance.max() <= 10.0


def test_slab_with_too_little_lung_is_refused(lidc_case, default_atlas):
    from drasclr_monailabel.data.sections import cut_slab
    from drasclr_monailabel.errors import InputError

    middle = sum(lidc_case.lung_z_range()) / 2.0
    thin = cut_slab(lidc_case.volume, middle - 12.0, middle + 12.0, source="thin.nii.gz")  # 10 slices of 2.5 mm
    with pytest.raises(InputError, match=r"^thin\.nii\.gz: the scan holds only \d+ mm of lung .* at least 30 mm"):
        preprocess_volume(thin, default_atlas)


def test_slab_of_the_middle_of_the_lungs_is_flagged_or_refused(lidc_case, default_atlas):
    """Cut at both ends, a slab shows neither apex nor base: its height in the atlas is a guess
    (measured up to 12 mm off, docs/anatomy.md), so it is kept with a warning that says so, or
    refused when the user asks for scans with a lung end."""
    from drasclr_monailabel.anatomy.pipeline import PipelineSettings
    from drasclr_monailabel.data.sections import cut_slab
    from drasclr_monailabel.errors import InputError

    middle = sum(lidc_case.lung_z_range()) / 2.0
    slab = cut_slab(lidc_case.volume, middle - 60.0, middle + 60.0, source="middle.nii.gz")
    kept = preprocess_volume(slab, default_atlas)
    assert any("neither apex nor base" in w and "--require-lung-end" in w for w in kept.warnings)
    with pytest.raises(InputError, match=r"^middle\.nii\.gz: the lungs run through both the first and the last slice, so neither apex nor base"):
        preprocess_volume(slab, default_atlas, PipelineSettings(require_lung_end=True))


@pytest.mark.parametrize("part", ["apex", "base"])
def test_partial_slab_with_40_mm_of_lung_is_refused(lidc_case, default_atlas, part):
    """Slabs with 40 mm of lung put landmarks a median 11 mm off (docs/anatomy.md): refused, not silently wrong."""
    from drasclr_monailabel.data.sections import cut_slab
    from drasclr_monailabel.errors import InputError

    base, apex = lidc_case.lung_z_range()
    low, high = (apex - 40.0, apex + 30.0) if part == "apex" else (base - 30.0, base + 40.0)
    with pytest.raises(InputError, match=rf"^{part}\.nii\.gz: the scan covers only part of the lungs \(\d+ mm of lung, cut .* at least 50 mm"):
        preprocess_volume(cut_slab(lidc_case.volume, low, high, source=f"{part}.nii.gz"), default_atlas)

