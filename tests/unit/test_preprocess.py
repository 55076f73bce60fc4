"""drasclr preprocess: output format, inputs (CSV, folder), shards, failures, resume after a kill."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.anatomy.batch import run_preprocess, shard_entries, write_summary
from drasclr_monailabel.anatomy.cache_format import CACHE_FORMAT
from drasclr_monailabel.anatomy.inputs import ScanEntry, list_scans
from drasclr_monailabel.cli.main import main
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.utils.atomic import TMP_PREFIX

ARRAYS = {"image": np.int16, "lung": np.uint8, "landmarks": np.int32, "valid": np.bool_}


@pytest.fixture(scope="module")
def cache(phantom_scans, phantom_atlas_dir, tmp_path_factory) -> Path:
    """The two phantom scans preprocessed against the phantom atlas without interruption (the reference output)."""
    out = tmp_path_factory.mktemp("cache")
    summary = run_preprocess(list_scans(phantom_scans), out, atlas_dir=phantom_atlas_dir, workers=1, progress=False)
    assert summary["done"] == 2
    return out


def load(folder: Path, scan_id: str, name: str) -> np.ndarray:
    return np.load(folder / scan_id / f"{scan_id}_{name}.npy", mmap_mode="r")


def test_output_format(cache, phantom_atlas):
    for scan_id in ("full", "upper"):
        qa = json.loads((cache / scan_id / f"{scan_id}_qa.json").read_text())
        assert qa["format"] == CACHE_FORMAT and qa["id"] == scan_id
        assert qa["atlas"]["id"] == phantom_atlas.atlas_id
        arrays = {name: load(cache, scan_id, name) for name in ARRAYS}
        for name, dtype in ARRAYS.items():
            assert arrays[name].dtype == dtype, name
        assert arrays["image"].shape == arrays["lung"].shape == tuple(qa["grid"]["size"][::-1])
        assert qa["grid"]["spacing"] == [1.0, 1.0, 1.0]
        assert arrays["landmarks"].shape == (phantom_atlas.n_landmarks, 3)
        assert arrays["valid"].shape == (phantom_atlas.n_landmarks,)
        assert set(np.unique(arrays["lung"]).tolist()) == {0, 1, 2}
        assert qa["landmarks"]["n_valid"] == int(arrays["valid"].sum())
        # The transform maps atlas landmark centres onto the stored voxel indices.
        transform = sitk.ReadTransform(str(cache / scan_id / f"{scan_id}_affine.tfm"))
        world = np.array([transform.TransformPoint(p) for p in phantom_atlas.landmarks.world])
        index = np.rint((world - np.array(qa["grid"]["origin"])))[:, ::-1]
        np.testing.assert_array_equal(index, arrays["landmarks"])
        # Valid landmarks: centre inside the array, whole patch reachable with padding.
        valid_centres = arrays["landmarks"][arrays["valid"]]
        assert np.all((valid_centres >= 0) & (valid_centres < arrays["image"].shape))
        assert (cache / scan_id / f"{scan_id}_qa.png").stat().st_size > 10_000
    full, upper = (json.loads((cache / s / f"{s}_qa.json").read_text()) for s in ("full", "upper"))
    assert full["landmarks"]["n_valid"] > 0.95 * phantom_atlas.n_landmarks
    assert upper["landmarks"]["n_valid"] < 0.8 * phantom_atlas.n_landmarks
    summary = json.loads((cache / "summary.json").read_text())
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 0, 0)


def test_cached_image_matches_the_source_at_the_recorded_grid(cache, phantom_scans):
    qa = json.loads((cache / "upper" / "upper_qa.json").read_text())
    image = load(cache, "upper", "image")
    source = sitk.ReadImage(str(phantom_scans / "upper.nii.gz"), sitk.sitkFloat32)
    rng = np.random.default_rng(0)
    voxels = np.stack([rng.integers(0, n, 300) for n in image.shape], axis=1)
    world = np.array(qa["grid"]["origin"]) + voxels[:, ::-1] * np.array(qa["grid"]["spacing"])
    expected = [source.EvaluateAtPhysicalPoint(tuple(p), sitk.sitkLinear) for p in world]
    np.testing.assert_allclose(image[tuple(voxels.T)], expected, atol=1.0)
    lung = load(cache, "upper", "lung")
    assert np.median(image[lung > 0]) < -700  # parenchyma


def test_csv_manifest_resolves_relative_paths_and_ids(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "images" / name).write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image,label,lungs,laa950\ncase_b,images/b.nii.gz,labels/b.nii.gz,lungs/b.nii.gz,3.1\n"
                        ",images/a.nii.gz,labels/a.nii.gz,lungs/a.nii.gz,2.0\n")
    expected = [ScanEntry("a", tmp_path / "images" / "a.nii.gz"), ScanEntry("case_b", tmp_path / "images" / "b.nii.gz")]
    assert list_scans(manifest) == expected
    assert list_scans(tmp_path) == expected  # a folder holding manifest.csv is read through it


def test_folder_lists_files_and_series_folders(tmp_path):
    (tmp_path / "b.nrrd").write_bytes(b"")
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "series1").mkdir()
    (tmp_path / "series1" / "0001.dcm").write_bytes(b"")
    assert [e.scan_id for e in list_scans(tmp_path)] == ["a", "b", "series1"]
    assert list_scans(tmp_path / "series1") == [ScanEntry("series1", tmp_path / "series1")]


@pytest.mark.parametrize("text, problem", [
    ("image\nx.nii.gz\n", None),
    ("path\nx.nii.gz\n", "'image' column"),
    ("id,image\nsame,x.nii.gz\nsame,y.nii.gz\n", "two scans have the id 'same'"),
    ("id,image\nbad/id,x.nii.gz\n", "usable as a folder name"),
])
def test_csv_problems_are_named(tmp_path, text, problem):
    manifest = tmp_path / "list.csv"
    manifest.write_text(text)
    if problem is None:
        assert list_scans(manifest)[0].path == tmp_path / "x.nii.gz"
    else:
        with pytest.raises(InputError, match=problem):
            list_scans(manifest)


def test_shards_cover_every_scan_exactly_once():
    entries = [ScanEntry(f"scan{i:02d}", Path(f"/data/scan{i:02d}.nii.gz")) for i in range(23)]
    shuffled = random.Random(0).sample(entries, len(entries))
    for count in (1, 2, 3, 7, 30):
        shards = [shard_entries(shuffled, (i, count)) for i in range(count)]
        seen = [e for shard in shards for e in shard]
        assert sorted(seen) == sorted(entries) and len(seen) == len(set(seen))
        assert shards == [shard_entries(entries, (i, count)) for i in range(count)]  # independent of input order


def test_shard_summaries_merge(tmp_path):
    base = {"format": "drasclr-cache-summary/1", "atlas": "a-1", "warnings": []}
    write_summary(tmp_path, {**base, "shard": "0/2", "n_scans": 3, "done": 2, "skipped": 0, "failed": 1,
                             "failures": [{"id": "x", "reason": "x.nii.gz: bad"}]}, (0, 2))
    write_summary(tmp_path, {**base, "shard": "1/2", "n_scans": 2, "done": 1, "skipped": 1, "failed": 0, "failures": []}, (1, 2))
    merged = json.loads((tmp_path / "summary.json").read_text())
    assert (merged["n_scans"], merged["done"], merged["skipped"], merged["failed"]) == (5, 3, 1, 1)
    assert merged["shards"] == ["0/2", "1/2"] and merged["failures"][0]["id"] == "x"


def test_bad_scans_are_logged_and_skipped(tmp_path, phantom_scans, sample_brain_mr, abdomen_ct, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "good.nii.gz").symlink_to(phantom_scans / "upper.nii.gz")
    (folder / "corrupt.nii.gz").write_bytes(os.urandom(5000))
    (folder / "mr.nrrd").symlink_to(sample_brain_mr)
    sitk.WriteImage(abdomen_ct.to_sitk(), str(folder / "abdomen.nii.gz"))
    out = tmp_path / "cache"

    code = main(["preprocess", str(folder), "--out", str(out), "--workers", "1", "--no-progress"])

    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (1, 3)
    reasons = {f["id"]: f["reason"] for f in summary["failures"]}
    assert reasons["abdomen"].startswith(f"{folder / 'abdomen.nii.gz'}: no lungs found")
    assert reasons["corrupt"].startswith(str(folder / "corrupt.nii.gz"))
    assert "Hounsfield" in reasons["mr"]
    assert (out / "good" / "good_qa.json").is_file()
    assert not any((out / scan_id / f"{scan_id}_qa.json").exists() for scan_id in reasons)
    printed = capsys.readouterr().out
    assert "1 done, 0 skipped, 3 failed" in printed and "failed abdomen:" in printed


def test_usage_errors_exit_with_2(tmp_path, capsys):
    assert main(["preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", str(tmp_path), "--out", str(tmp_path / "c"), "--shard", "2/2"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(cache, phantom_scans, phantom_atlas_dir, tmp_path):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "drasclr_monailabel.cli.main", "preprocess", str(phantom_scans), "--out", str(out),
               "--atlas", str(phantom_atlas_dir), "--workers", "1", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "full" / "full_qa.json"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists()
    # Whatever the kill left of the second scan, make it look half-written.
    partial = out / "upper"
    partial.mkdir(exist_ok=True)
    (partial / "upper_image.npy").write_bytes(b"garbage")
    (partial / f"{TMP_PREFIX}abc.npy").write_bytes(b"partial")
    (partial / "upper_qa.json").unlink(missing_ok=True)

    summary = run_preprocess(list_scans(phantom_scans), out, atlas_dir=phantom_atlas_dir, workers=1, progress=False)

    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 1, 0)
    for scan_id in ("full", "upper"):
        for name in ARRAYS:
            np.testing.assert_array_equal(load(out, scan_id, name), load(cache, scan_id, name), err_msg=f"{scan_id} {name}")
        ours = sitk.ReadTransform(str(out / scan_id / f"{scan_id}_affine.tfm")).GetParameters()
        reference = sitk.ReadTransform(str(cache / scan_id / f"{scan_id}_affine.tfm")).GetParameters()
        np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert not list(out.rglob(f"{TMP_PREFIX}*"))


def test_a_scan_registered_to_another_atlas_is_redone_with_a_warning(cache, phantom_scans, tmp_path, caplog):
    """A cache made with one atlas, rerun with another (the default atlas changed): redone, never mixed."""
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    with caplog.at_level("WARNING"):
        summary = run_preprocess(list_scans(phantom_scans), out, workers=1, progress=False)  # the shipped atlas
    assert (summary["done"], summary["skipped"]) == (2, 0)
    assert "full was registered to atlas phantom3-" in caplog.text and "redoing it with atlas realct3-" in caplog.text
    assert {json.loads((out / s / f"{s}_qa.json").read_text())["atlas"]["id"] for s in ("full", "upper")} == {summary["atlas"]}


def test_a_scan_written_in_an_older_cache_format_is_redone_with_a_warning(cache, phantom_scans, phantom_atlas_dir, tmp_path, caplog):
    """Format 1 placed partial scans' landmarks with the similarity alone: such a scan is redone, the
    others kept."""
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    qa_file = out / "upper" / "upper_qa.json"
    qa_file.write_text(json.dumps({**json.loads(qa_file.read_text()), "format": "drasclr-cache/1"}))
    with caplog.at_level("WARNING"):
        summary = run_preprocess(list_scans(phantom_scans), out, atlas_dir=phantom_atlas_dir, workers=1, progress=False)
    assert (summary["done"], summary["skipped"]) == (1, 1)
    assert f"upper was written in cache format drasclr-cache/1; redoing it in {CACHE_FORMAT}" in caplog.text
    assert "full was written" not in caplog.text
    assert json.loads(qa_file.read_text())["format"] == CACHE_FORMAT


def test_a_replaced_source_is_redone_and_an_unchanged_one_skipped(cache, phantom_scans, phantom_atlas_dir, tmp_path):
    import shutil

    from drasclr_monailabel.utils.fingerprint import file_fingerprint

    sources = tmp_path / "scans"
    shutil.copytree(phantom_scans, sources)
    out = tmp_path / "cache"
    shutil.copytree(cache, out)
    for scan_id in ("full", "upper"):  # the copied cache, pointed at the copied sources
        qa_file = out / scan_id / f"{scan_id}_qa.json"
        qa = json.loads(qa_file.read_text())
        qa["source"] = str((sources / f"{scan_id}.nii.gz").resolve())
        qa["source_fingerprint"] = file_fingerprint(sources / f"{scan_id}.nii.gz")
        qa_file.write_text(json.dumps(qa))
    stat = (sources / "upper.nii.gz").stat()
    os.utime(sources / "upper.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place
    summary = run_preprocess(list_scans(sources), out, atlas_dir=phantom_atlas_dir, workers=1, progress=False)
    assert (summary["done"], summary["skipped"]) == (1, 1)
    redone = json.loads((out / "upper" / "upper_qa.json").read_text())
    assert redone["source_fingerprint"] == file_fingerprint(sources / "upper.nii.gz")
