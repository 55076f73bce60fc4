"""The app's store of preprocessed scans: a hit is the pipeline's result, a changed file or a
damaged entry is prepared again, and the folder is trimmed least recently used first."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from drasclr_monailabel.anatomy import scan_store
from drasclr_monailabel.anatomy.cache import is_complete
from drasclr_monailabel.anatomy.pipeline import preprocess_volume
from drasclr_monailabel.anatomy.scan_store import ScanStore, store_id
from drasclr_monailabel.io.readers import read_ct


@pytest.fixture()
def counted(monkeypatch) -> list[str]:
    """Sources the store sent through the anatomy pipeline (each miss appends one)."""
    calls: list[str] = []

    def counting(volume, atlas, settings):
        calls.append(volume.source)
        return preprocess_volume(volume, atlas, settings)

    monkeypatch.setattr(scan_store, "preprocess_volume", counting)
    return calls


@pytest.fixture()
def scan_file(phantom_scans, tmp_path) -> Path:
    path = tmp_path / "scans" / "full.nii.gz"
    path.parent.mkdir()
    shutil.copy(phantom_scans / "full.nii.gz", path)
    return path


def assert_same_scan(a, b) -> None:
    for name in ("image", "lungs", "landmarks", "valid"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert a.origin == pytest.approx(b.origin) and a.spacing == pytest.approx(b.spacing)
    assert a.direction == pytest.approx(b.direction)
    assert a.registration.transform.GetParameters() == pytest.approx(b.registration.transform.GetParameters())
    assert a.registration.transform.GetFixedParameters() == pytest.approx(b.registration.transform.GetFixedParameters())
    assert a.registration.dice == pytest.approx(b.registration.dice, abs=1e-4)
    assert a.warnings == b.warnings


def test_a_stored_scan_is_read_back_as_the_pipeline_gave_it(scan_file, phantom_atlas, counted, tmp_path):
    store = ScanStore(tmp_path / "store")
    volume = read_ct(scan_file)
    first = store.preprocess(volume, phantom_atlas)
    second = store.preprocess(read_ct(scan_file), phantom_atlas)
    assert counted == [str(scan_file)]
    assert_same_scan(second, first)
    reference = preprocess_volume(volume, phantom_atlas)
    assert_same_scan(second, reference)
    assert (tmp_path / "store" / store_id(scan_file) / f"{store_id(scan_file)}_qa.png").is_file()


def test_a_replaced_file_or_another_atlas_is_prepared_again(scan_file, phantom_atlas, counted, tmp_path):
    store = ScanStore(tmp_path / "store")
    store.preprocess(read_ct(scan_file), phantom_atlas)
    stat = scan_file.stat()
    os.utime(scan_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    store.preprocess(read_ct(scan_file), phantom_atlas)
    assert len(counted) == 2
    other = replace(phantom_atlas, atlas_id="phantom3-000000000000")
    store.preprocess(read_ct(scan_file), other)
    assert len(counted) == 3
    assert is_complete(store.folder, store_id(scan_file), scan_file, other.atlas_id, scan_store.file_fingerprint(scan_file))


@pytest.mark.parametrize("damage", ["truncated image", "missing transform"])
def test_a_damaged_entry_is_prepared_again_not_an_error(scan_file, phantom_atlas, counted, tmp_path, damage):
    store = ScanStore(tmp_path / "store")
    reference = store.preprocess(read_ct(scan_file), phantom_atlas)
    stem = store.folder / store_id(scan_file) / store_id(scan_file)
    if damage == "truncated image":
        Path(f"{stem}_image.npy").write_bytes(Path(f"{stem}_image.npy").read_bytes()[:1000])
    else:
        Path(f"{stem}_affine.tfm").unlink()
    again = store.preprocess(read_ct(scan_file), phantom_atlas)
    assert len(counted) == 2
    assert_same_scan(again, reference)
    assert store.preprocess(read_ct(scan_file), phantom_atlas) is not None and len(counted) == 2  # rewritten whole


def test_volumes_without_a_source_file_and_a_zero_budget_are_not_stored(scan_file, phantom_atlas, counted, tmp_path):
    volume = read_ct(scan_file)
    ScanStore(tmp_path / "store").preprocess(replace(volume, source=""), phantom_atlas)
    ScanStore(tmp_path / "store", max_bytes=0).preprocess(volume, phantom_atlas)
    assert len(counted) == 2
    assert not (tmp_path / "store").exists()


def fake_entry(folder: Path, name: str, size: int, used: float, complete: bool = True) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / f"{name}_image.npy").write_bytes(b"x" * size)
    if complete:
        qa = folder / name / f"{name}_qa.json"
        qa.write_text("{}")
        os.utime(qa, (used, used))
    os.utime(folder / name, (used, used))


def test_trim_removes_least_recently_used_first_and_spares_the_named_scan(tmp_path):
    folder = tmp_path / "store"
    fake_entry(folder, "oldest", 400, used=1_000)
    fake_entry(folder, "old", 400, used=2_000)
    fake_entry(folder, "being-written", 400, used=9_000, complete=False)  # no _qa.json yet: the folder's time
    fake_entry(folder, "new", 400, used=3_000)
    fake_entry(folder, "newest", 400, used=4_000)
    ScanStore(folder, max_bytes=1_300).trim(keep="oldest")
    assert sorted(p.name for p in folder.iterdir()) == ["being-written", "newest", "oldest"]
    ScanStore(folder, max_bytes=900).trim()
    assert sorted(p.name for p in folder.iterdir()) == ["being-written", "newest"]


def test_a_hit_counts_as_use(scan_file, phantom_atlas, tmp_path):
    store = ScanStore(tmp_path / "store")
    store.preprocess(read_ct(scan_file), phantom_atlas)
    qa = store.folder / store_id(scan_file) / f"{store_id(scan_file)}_qa.json"
    os.utime(qa, (1_000, 1_000))
    store.preprocess(read_ct(scan_file), phantom_atlas)
    assert qa.stat().st_mtime > 1_000_000


def test_store_ids_keep_the_name_and_tell_folders_apart(tmp_path):
    a, b = store_id(tmp_path / "a" / "image.nii.gz"), store_id(tmp_path / "b" / "image.nii.gz")
    assert a.startswith("image-") and b.startswith("image-") and a != b
    assert store_id(tmp_path / "we ird:name.nrrd").startswith("we_ird_name-")


def test_lung_labels_on_the_scan_grid_are_kept_with_the_scan_and_not_outlive_it(scan_file, phantom_atlas, monkeypatch, tmp_path):
    from drasclr_monailabel.anatomy.pipeline import PreprocessedScan

    store = ScanStore(tmp_path / "store")
    volume = read_ct(scan_file)
    scan = store.preprocess(volume, phantom_atlas)
    expected = scan.lungs_on(volume)
    assert expected.shape == volume.hu.shape and set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(store.lungs_on(volume, scan), expected)
    kept = store.folder / store_id(scan_file) / f"{store_id(scan_file)}{scan_store.NATIVE_LUNGS_SUFFIX}"
    assert kept.is_file()

    computed = []
    original = PreprocessedScan.lungs_on
    monkeypatch.setattr(PreprocessedScan, "lungs_on", lambda self, v: computed.append(1) or original(self, v))
    np.testing.assert_array_equal(store.lungs_on(read_ct(scan_file), scan), expected)
    assert computed == []  # read back

    stat = scan_file.stat()
    os.utime(scan_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the scan file replaced
    store.lungs_on(read_ct(scan_file), scan)
    assert computed == [1]  # the kept labels belong to the old content: not used
    store.preprocess(read_ct(scan_file), phantom_atlas)
    assert not kept.exists()  # the folder was rewritten whole


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("ITK: cannot write")])
def test_a_store_that_cannot_be_written_costs_speed_not_the_scan(scan_file, phantom_atlas, monkeypatch, tmp_path, error):
    def failing(folder, scan_id, *args):
        (Path(folder) / scan_id).mkdir(parents=True, exist_ok=True)
        (Path(folder) / scan_id / f"{scan_id}_image.npy").write_bytes(b"half")  # what a full disk leaves
        raise error

    monkeypatch.setattr(scan_store, "write_scan", failing)
    store = ScanStore(tmp_path / "store")
    volume = read_ct(scan_file)
    scan = store.preprocess(volume, phantom_atlas)
    assert scan.valid.any() and store.lungs_on(volume, scan).shape == volume.hu.shape
    assert not (store.folder / store_id(scan_file)).exists()  # nothing half-written is left


def test_the_nnunet_lung_grid_reads_the_stored_scan(scan_file, phantom_atlas, counted, tmp_path):
    from drasclr_monailabel.nnunet.lung_grid import lung_grid_case

    store = ScanStore(tmp_path / "store")
    first = lung_grid_case(read_ct(scan_file), 1, phantom_atlas, scans=store)
    again = lung_grid_case(read_ct(scan_file), 1, phantom_atlas, scans=store)
    assert counted == [str(scan_file)]  # the second preparation came from the store
    for name in ("hu", "coordinates", "lungs", "lungs_native"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name), err_msg=name)
