"""Synthetic cohort: reproducible files, manifest contract, true labels, imperfect threshold, atomic output."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.lung_mask import segment_lungs
from drasclr_monailabel.data import synth_cohort
from drasclr_monailabel.data.synth_cohort import (
    MANIFEST_COLUMNS,
    PhantomSource,
    SynthSettings,
    laa_percent,
    synthesize_case,
    threshold_dice,
    write_cohort,
)
from drasclr_monailabel.errors import ConfigError, InputError

SETTINGS = SynthSettings(severity_percent=(4.0, 15.0), phantom_spacing=(3.0, 3.0, 3.0))


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(_read(path))


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def phantom_cohort(tmp_path_factory) -> Path:
    """Four phantom scans at 3 mm, seed 7."""
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, 4, [PhantomSource(SETTINGS.phantom_spacing)], SETTINGS, seed=7)
    return out


def test_manifest_has_the_contract_columns_and_every_file(phantom_cohort):
    with open(phantom_cohort / "manifest.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == MANIFEST_COLUMNS
    rows = _manifest(phantom_cohort)
    assert [r["id"] for r in rows] == [f"synth_{i:04d}" for i in range(4)]
    for row in rows:
        image, label, lungs = (_read(phantom_cohort / row[k]) for k in ("image", "label", "lungs"))
        assert image.GetPixelID() == sitk.sitkInt16
        assert label.GetPixelID() == lungs.GetPixelID() == sitk.sitkUInt8
        for other in (label, lungs):
            assert other.GetSize() == image.GetSize()
            assert np.allclose(other.GetSpacing(), image.GetSpacing()) and np.allclose(other.GetOrigin(), image.GetOrigin())
        assert row["kernel"] in ("smooth", "sharp")
        assert 10.0 <= float(row["noise_hu"]) <= 60.0
        assert SETTINGS.lung_hu[0] <= float(row["lung_hu"]) <= SETTINGS.lung_hu[1]
        assert SETTINGS.hu_offset[0] <= float(row["hu_offset"]) <= SETTINGS.hu_offset[1]
        assert row["event"] in ("0", "1") and float(row["survival_time"]) > 0
    assert not list(phantom_cohort.rglob(".tmp-*"))


def test_manifest_numbers_match_the_written_files(phantom_cohort):
    for row in _manifest(phantom_cohort):
        image, label, lungs = (_array(phantom_cohort / row[k]) for k in ("image", "label", "lungs"))
        inside = lungs > 0
        assert float(row["laa950"]) == pytest.approx(100.0 * np.mean(image[inside] < -950), abs=1e-3)
        assert float(row["severity"]) == pytest.approx(100.0 * np.mean(label[inside] > 0), abs=1e-3)
        assert 3.0 <= float(row["severity"]) <= 16.0
        present = {int(v) for v in np.unique(label)} - {0}
        names = {"centrilobular": 1, "panlobular": 2, "paraseptal": 3}
        assert present == {names[n] for n in row["subtype"].split("+")}


def test_labels_only_inside_the_lungs_with_known_values(phantom_cohort):
    for row in _manifest(phantom_cohort):
        label, lungs = _array(phantom_cohort / row["label"]), _array(phantom_cohort / row["lungs"])
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert set(np.unique(lungs)) == {0, 1, 2}
        assert not np.any(label[lungs == 0])


def test_plain_threshold_is_clearly_worse_than_the_true_label(phantom_cohort):
    dice = []
    for row in _manifest(phantom_cohort):
        image, label, lungs = (_array(phantom_cohort / row[k]) for k in ("image", "label", "lungs"))
        dice.append(threshold_dice(image, lungs, label))
    assert np.mean(dice) < 0.8
    assert np.mean(dice) > 0.2  # the lesions are still dark: the threshold finds part of them


def test_same_seed_gives_identical_arrays_and_another_seed_does_not(tmp_path):
    source = [PhantomSource(SETTINGS.phantom_spacing)]
    first = write_cohort(tmp_path / "a", 1, source, SETTINGS, seed=11)
    again = write_cohort(tmp_path / "b", 1, source, SETTINGS, seed=11)
    other = write_cohort(tmp_path / "c", 1, source, SETTINGS, seed=12)
    assert first == again
    for row in first:
        for kind in ("image", "label", "lungs"):
            assert np.array_equal(_array(tmp_path / "a" / row[kind]), _array(tmp_path / "b" / row[kind]))
    assert not np.array_equal(_array(tmp_path / "a" / first[0]["image"]), _array(tmp_path / "c" / other[0]["image"]))


def test_one_scan_can_be_remade_from_its_manifest_seed(phantom_cohort):
    row = _manifest(phantom_cohort)[2]
    seed = int(row["seed"])
    case = synthesize_case(PhantomSource(SETTINGS.phantom_spacing).scan(seed), SETTINGS, seed)
    assert np.array_equal(case.volume.hu, _array(phantom_cohort / row["image"]))
    assert np.array_equal(case.label, _array(phantom_cohort / row["label"]))


def test_failure_midway_leaves_no_manifest_and_no_partial_files(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth_cohort.synthesize_case

    def fail_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_cohort, "synthesize_case", fail_on_second)
    with pytest.raises(RuntimeError):
        write_cohort(tmp_path, 3, [PhantomSource(SETTINGS.phantom_spacing)], SETTINGS, seed=0)
    assert not (tmp_path / "manifest.csv").exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["synth_0000.nii.gz"] * 3


def test_existing_cohort_is_kept_unless_overwrite(phantom_cohort, tmp_path):
    before = (phantom_cohort / "manifest.csv").read_bytes()
    with pytest.raises(InputError, match="already holds a synthetic cohort"):
        write_cohort(phantom_cohort, 1, [PhantomSource(SETTINGS.phantom_spacing)], SETTINGS, seed=0)
    assert (phantom_cohort / "manifest.csv").read_bytes() == before


@pytest.mark.parametrize(
    "settings, key",
    [
        (SynthSettings(severity_percent=(20.0, 10.0)), "--severity"),
        (SynthSettings(severity_percent=(0.0, 90.0)), "--severity"),
        (SynthSettings(noise_hu=(-1.0, 10.0)), "--noise"),
        (SynthSettings(subtype_weights={"centrilobular": 0.0, "panlobular": 0.0, "paraseptal": 0.0}), "--mix"),
        (SynthSettings(kernels=("blurry",)), "--kernels"),
        (SynthSettings(lung_hu=(-800.0, -880.0)), "--lung-hu"),
        (SynthSettings(lung_hu=(-990.0, -850.0)), "--lung-hu"),
        (SynthSettings(hu_offset=(-150.0, 0.0)), "--hu-offset"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, settings, key):
    with pytest.raises(ConfigError, match=key):
        write_cohort(tmp_path / "out", 1, [PhantomSource((3.0, 3.0, 3.0))], settings, seed=0)
    assert not (tmp_path / "out").exists()


def test_laa_and_dice_helpers_on_known_arrays():
    hu = np.array([[[-1000, -960, -940, -900]]], dtype=np.int16)
    lungs = np.array([[[1, 1, 1, 0]]], dtype=np.uint8)
    label = np.array([[[1, 0, 1, 0]]], dtype=np.uint8)
    assert laa_percent(hu, lungs) == pytest.approx(200.0 / 3.0)
    # threshold finds voxels 0 and 1, truth is voxels 0 and 2: one shared of 2 + 2
    assert threshold_dice(hu, lungs, label) == pytest.approx(0.5)


def test_real_ct_source_keeps_its_geometry_and_gets_lesions_in_its_lungs(tmp_path, sample_lung1):
    source = synth_cohort.RealSource(sample_lung1, segment_lungs, name="lung1_image")
    rows = write_cohort(tmp_path, 1, [source], SynthSettings(severity_percent=(10.0, 10.0)), seed=3)
    image = _read(tmp_path / rows[0]["image"])
    original = _read(sample_lung1)
    assert np.allclose(image.GetSpacing(), original.GetSpacing())
    assert image.GetSize()[:2] == original.GetSize()[:2] and image.GetSize()[2] <= original.GetSize()[2]
    label, lungs = _array(tmp_path / rows[0]["label"]), _array(tmp_path / rows[0]["lungs"])
    assert float(rows[0]["severity"]) == pytest.approx(10.0, abs=1.0)
    assert not np.any(label[lungs == 0])
    assert rows[0]["source"] == "lung1_image"


def test_a_sample_data_name_is_a_source(sample_lung1):
    def no_lungs(volume):
        return np.zeros(volume.hu.shape, dtype=np.uint8)

    sources = synth_cohort.resolve_sources(["lung1_image", "phantom"], SETTINGS, no_lungs)
    assert isinstance(sources[0], synth_cohort.RealSource) and isinstance(sources[1], PhantomSource)
    assert sources[0].name == "lung1_image" and sources[0].path == sample_lung1


def test_worker_processes_write_the_same_cohort_in_the_same_order(tmp_path):
    source = [PhantomSource(SETTINGS.phantom_spacing)]
    seen: dict[int, list[int]] = {1: [], 2: []}
    rows = {workers: write_cohort(tmp_path / str(workers), 3, source, SETTINGS, seed=5, workers=workers,
                                  on_case=lambda case, w=workers: seen[w].append(case.seed))
            for workers in (1, 2)}
    assert rows[1] == rows[2] and len(rows[2]) == 3
    assert [row["id"] for row in _manifest(tmp_path / "2")] == ["synth_0000", "synth_0001", "synth_0002"]
    assert seen[1] == seen[2] == [int(row["seed"]) for row in rows[2]]
    for row in rows[1]:
        for kind in ("image", "label", "lungs"):
            assert np.array_equal(_array(tmp_path / "1" / row[kind]), _array(tmp_path / "2" / row[kind]))


@pytest.mark.parametrize("error", [InputError("scan.nii.gz", "no lungs found"), ConfigError("--lung-hu", "out of range")])
def test_user_errors_cross_process_boundaries_intact(error):
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)
