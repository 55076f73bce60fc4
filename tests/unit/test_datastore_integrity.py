"""The datastore's integrity rules on a small folder (issue 17): truncated NIfTI labels, server-owned
revisions, label and index changing together, orphaned temporary files, file modes, bounded image info."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi import HTTPException

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.tasks.datastore import (MAX_INFO_BYTES, MAX_INFO_KEYS, ORPHAN_MIN_AGE_S, EmphysemaDatastore,
                                                client_label_info)
from drasclr_monailabel.tasks.labels import conform_label, read_grid
from drasclr_monailabel.utils.atomic import FILE_MODE

SHAPE = (6, 8, 10)


def write_volume(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 2.0))
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def label_file(folder: Path, seed: int, value: int = 1, name: str = "label.nii.gz") -> Path:
    array = (np.random.default_rng(seed).random(SHAPE) < 0.3).astype(np.uint8) * value
    return write_volume(folder / name, array)


@pytest.fixture
def store(tmp_path) -> EmphysemaDatastore:
    studies = tmp_path / "studies"
    studies.mkdir()
    write_volume(studies / "scan.nii.gz", np.full(SHAPE, -800, np.int16))
    return EmphysemaDatastore(studies, studies / ".drasclr", label_names=["emphysema"])


def stored_state(store: EmphysemaDatastore) -> dict[str, bytes]:
    """Every file of the studies folder (label, history, index) with its bytes."""
    base = Path(store._datastore_path)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("suffix, compress", [(".nii.gz", True), (".nii", False)])
def test_truncated_nifti_label_is_refused(tmp_path, suffix, compress):
    whole = write_volume(tmp_path / f"whole{suffix}", (np.random.default_rng(0).random((20, 30, 40)) < 0.3).astype(np.uint8),
                         compress)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    grid = read_grid(whole)
    assert conform_label(whole, grid, 1).shape == (20, 30, 40)
    with pytest.raises(InputError, match="truncated"):
        conform_label(cut, grid, 1)


def test_client_label_info_cannot_change_server_keys():
    stored = {"revision": 3, "ts": 5, "name": "a.nii.gz", "voxels": {"1": 2}, "comment": "x"}
    assert client_label_info(stored, {"revision": 3, "comment": "y"}) == {"comment": "y"}  # sent back unchanged: fine
    for sent in ({"revision": "abc"}, {"revision": 5}, {"name": "b.nii.gz"}, {"voxels": {}}):
        with pytest.raises(HTTPException) as refused:
            client_label_info(stored, sent)
        assert refused.value.status_code == 422 and "set by the server" in refused.value.detail
    with pytest.raises(HTTPException) as refused:
        client_label_info(stored, ["revision"])
    assert refused.value.status_code == 422


def test_edited_revision_never_makes_a_save_overwrite_history(store, tmp_path):
    for seed in range(2):
        store.save_label("scan", str(label_file(tmp_path, seed)), "final", {})
    with pytest.raises(HTTPException):
        store.update_label_info("scan", "final", {"revision": 1})
    # an index edited behind the server's back (or restored from an old backup)
    index = json.loads(Path(store._datastore_config_path).read_text())
    index["objects"]["scan"]["labels"]["final"]["info"]["revision"] = "abc"
    Path(store._datastore_config_path).write_text(json.dumps(index))
    kept = {p.name: p.read_bytes() for p in store.label_history("scan", "final")}
    store.save_label("scan", str(label_file(tmp_path, 2)), "final", {})
    assert {p.name: p.read_bytes() for p in store.label_history("scan", "final")}.items() >= kept.items()
    assert [p.name for p in store.label_history("scan", "final")] == ["1.nii.gz", "2.nii.gz"]
    assert store.get_label_info("scan", "final")["revision"] == 3


def fail_on_index(monkeypatch, function: str, index: Path) -> None:
    """Make ``os.<function>`` fail with "disk full" when it touches the index or its temporary file
    (the only ``.json`` files next to it)."""
    original = getattr(os, function)

    def failing(*args, **kwargs):
        names = [Path(a) for a in args if isinstance(a, (str, Path))]
        if function == "fsync":
            names = [Path(os.readlink(f"/proc/self/fd/{args[0]}"))]
        if any(name.parent == index.parent and name.suffix == ".json" for name in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(os, function, failing)


@pytest.mark.parametrize("function", ["fsync", "replace"])
def test_failed_index_write_changes_neither_label_nor_index(store, tmp_path, monkeypatch, function):
    store.save_label("scan", str(label_file(tmp_path, 0)), "final", {})
    store.save_label("scan", str(label_file(tmp_path, 1)), "final", {})
    before = stored_state(store)
    with monkeypatch.context() as patch:
        fail_on_index(patch, function, Path(store._datastore_config_path))
        with pytest.raises(HTTPException) as refused:
            store.save_label("scan", str(label_file(tmp_path, 2)), "final", {})
    assert refused.value.status_code == 507 and "nothing changed" in refused.value.detail
    assert stored_state(store) == before
    assert store.get_label_info("scan", "final")["revision"] == 2
    store.save_label("scan", str(label_file(tmp_path, 3)), "final", {})
    assert store.get_label_info("scan", "final")["revision"] == 3
    assert [p.name for p in store.label_history("scan", "final")] == ["1.nii.gz", "2.nii.gz"]


def test_temporary_files_of_a_killed_save_are_removed_at_start(store, tmp_path):
    store.save_label("scan", str(label_file(tmp_path, 0)), "final", {})
    store.save_label("scan", str(label_file(tmp_path, 1)), "final", {})
    base = Path(store._datastore_path)
    orphans = [base / ".tmp-abc.json", base / "labels" / "final" / ".tmp-x.nii.gz",
               base / ".drasclr" / "label_history" / "final" / "scan" / ".tmp-y.nii.gz"]
    young = base / ".tmp-download.nii.gz"  # maybe another process's running write: kept
    for orphan in [*orphans, young]:
        orphan.write_bytes(b"half")
    os.utime(orphans[0], (time.time() - ORPHAN_MIN_AGE_S - 1,) * 2)
    EmphysemaDatastore(base, base / ".drasclr")
    assert not any(p.exists() for p in orphans) and young.exists()
    assert store.get_label_info("scan", "final")["revision"] == 2


def test_saved_labels_and_history_have_the_same_mode(store, tmp_path):
    for seed in range(2):
        store.save_label("scan", str(label_file(tmp_path, seed)), "final", {})
    label = Path(store.get_label_uri("scan", "final"))
    history = store.label_history("scan", "final")[0]
    assert (label.stat().st_mode & 0o777) == (history.stat().st_mode & 0o777) == FILE_MODE


def test_label_values_follow_the_served_label_set(store, tmp_path):
    with pytest.raises(HTTPException) as refused:
        store.save_label("scan", str(label_file(tmp_path, 0, value=2)), "final", {})
    assert refused.value.status_code == 422 and "0..1" in refused.value.detail
    subtypes = EmphysemaDatastore(store._datastore_path, Path(store._datastore_path) / ".drasclr")
    subtypes.save_label("scan", str(label_file(tmp_path, 0, value=3)), "final", {})


def test_image_info_is_bounded(store):
    store.update_image_info("scan", {"note": "x" * 100})
    with pytest.raises(HTTPException) as refused:
        store.update_image_info("scan", {"note": "x" * MAX_INFO_BYTES})
    assert refused.value.status_code == 413
    with pytest.raises(HTTPException) as refused:
        store.update_image_info("scan", {f"k{i}": i for i in range(MAX_INFO_KEYS + 1)})
    assert refused.value.status_code == 413
    with pytest.raises(HTTPException) as refused:
        store.update_image_info("scan", ["not", "an", "object"])
    assert refused.value.status_code == 422
    assert store.get_image_info("scan")["note"] == "x" * 100
