"""A local-folder datastore that refuses bad writes and never loses a label.

It is MONAI Label's :class:`LocalDatastore` (images in the studies folder, labels in
``labels/<tag>/``, index in ``datastore_v2.json``) with these changes:

- ids and tags are checked: an image id must be a known image (or, for a new upload, a plain
  file name) and a tag a plain word, so no request can write outside the studies folder;
- an uploaded image must be a readable CT, an uploaded label must have the image's grid and the
  model's label values; it is stored as ``<id>.nii.gz`` on the image's exact grid;
- a saved label replaces the previous one only after the new file is complete (atomic rename),
  and the previous one is kept in ``<state>/label_history/<tag>/<id>/`` with its revision number;
- every change of the index re-reads it under the lock first and writes it atomically, so a
  training or scoring subprocess and the server never overwrite each other's entries.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.segmentation.labels import SUBTYPES
from drasclr_monailabel.tasks.http import CONFLICT, NOT_FOUND, UNPROCESSABLE, refuse
from drasclr_monailabel.tasks.labels import conform_label, read_grid, write_label
from drasclr_monailabel.utils.atomic import TMP_PREFIX, atomic_path, write_text

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha")
LABEL_SUFFIX = ".nii.gz"
LABEL_VALUES = SUBTYPES
"""Stored label values 1..3 (docs/formats.md); a binary emphysema label uses 1 (any value > 0 is emphysema)."""
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_FORBIDDEN_IN_ID = ("/", "\\", "\x00")


class EmphysemaDatastore(LocalDatastore):
    """Local studies folder with validated, atomic, versioned label saves.

    Args:
        studies: the studies folder (images at its top level).
        state_dir: folder for the label history (usually ``<studies>/.drasclr``).
        auto_reload: watch the folder for images and labels added by hand.
        read_only: do not reconcile the index with the folder at start.
    """

    def __init__(self, studies: str | Path, state_dir: str | Path, auto_reload: bool = False, read_only: bool = False) -> None:
        self._history_dir = Path(state_dir) / "label_history"
        super().__init__(str(studies), extensions=IMAGE_EXTENSIONS, auto_reload=auto_reload, read_only=read_only)

    # ---- ids ---------------------------------------------------------------------------------

    def require_image(self, image_id: Any) -> str:
        """The id if it names an image of this datastore; else HTTP 404 (no path is ever accepted)."""
        if not isinstance(image_id, str) or not image_id:
            raise refuse(UNPROCESSABLE, "no image id given")
        if image_id not in self._datastore.objects:
            raise refuse(NOT_FOUND, f"image '{_shorten(image_id)}' is not in the datastore")
        return image_id

    @staticmethod
    def require_tag(tag: Any) -> str:
        """A label tag usable as a folder name (letters, digits, ``_``, ``-``); else HTTP 422."""
        if not isinstance(tag, str) or not _TAG.match(tag):
            raise refuse(UNPROCESSABLE, f"label tag '{_shorten(str(tag))}' is not allowed (letters, digits, _ or -)")
        return tag

    # ---- writes ------------------------------------------------------------------------------

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Validate ``label_filename`` against the image, then store it atomically as the new revision.

        Raises:
            HTTPException: 404 unknown image, 422 bad tag or a label that does not fit the image.
        """
        image_id = self.require_image(image_id)
        label_tag = self.require_tag(label_tag)
        image_path = Path(self.get_image_uri(image_id))
        try:
            grid = read_grid(image_path)
            labels = conform_label(label_filename, grid, len(LABEL_VALUES), list(LABEL_VALUES))
        except InputError as exc:
            # The upload's temporary name means nothing to the client: name the image instead.
            raise refuse(UNPROCESSABLE, f"label for image '{image_id}': {exc.problem}") from None
        dest = Path(self._datastore.label_path(label_tag)) / f"{image_id}{LABEL_SUFFIX}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        info = dict(label_info or {})
        voxels = {str(v): int(np.count_nonzero(labels == v)) for v in range(1, len(LABEL_VALUES) + 1)}
        tmp = _complete_temp_file(dest, lambda path: write_label(path, labels, grid))
        try:
            def apply(objects: dict[str, ImageLabelModel]) -> None:
                obj = objects.get(image_id)
                if obj is None:
                    raise refuse(NOT_FOUND, f"image '{image_id}' was removed while its label was being saved")
                previous = obj.labels.get(label_tag)
                revision = int(previous.info.get("revision", 1)) + 1 if previous else 1
                if previous is not None:
                    self._keep_previous(image_id, label_tag, previous, revision - 1)
                os.replace(tmp, dest)
                info.update({"ts": int(time.time()), "name": dest.name, "revision": revision, "voxels": voxels})
                obj.labels[label_tag] = DataModel(info=info, ext=LABEL_SUFFIX)

            self._mutate(apply)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info(f"Saved label {label_tag}/{dest.name} (revision {info['revision']})")
        return image_id

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded CT under a new id; refuses non-CT files and ids that exist or are not plain names."""
        suffix = _volume_suffix(image_filename)
        if suffix is None:
            raise refuse(UNPROCESSABLE, f"{Path(image_filename).name}: only {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} images can be added")
        image_id = image_id or Path(image_filename).name[: -len(suffix)]
        _check_new_id(image_id)
        try:
            read_ct(image_filename)
        except InputError as exc:
            raise refuse(UNPROCESSABLE, f"upload for image '{image_id}': {exc.problem}") from None
        dest = Path(self._datastore.image_path()) / f"{image_id}{suffix}"

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            if image_id in objects or dest.exists():
                raise refuse(CONFLICT, f"image '{image_id}' already exists; remove it first or choose another id")
            with atomic_path(dest) as tmp:
                shutil.copyfile(image_filename, tmp)
            info = dict(image_info or {}, ts=int(time.time()), name=dest.name)
            objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))

        self._mutate(apply)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Remove an image and its labels (label history is kept); unknown ids get HTTP 404."""
        super().remove_image(self.require_image(image_id))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the image's info (read-modify-write under the lock)."""
        image_id = self.require_image(image_id)

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            if image_id in objects:
                objects[image_id].image.info.update(info)

        self._mutate(apply)

    def update_images_info(self, updates: dict[str, dict[str, Any]]) -> None:
        """Merge many images' info in one index write (scores of a whole cohort)."""
        def apply(objects: dict[str, ImageLabelModel]) -> None:
            for image_id, info in updates.items():
                if image_id in objects:
                    objects[image_id].image.info.update(info)

        self._mutate(apply)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into a label's info (read-modify-write under the lock)."""
        label_id = self.require_image(label_id)
        label_tag = self.require_tag(label_tag)

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            label = objects[label_id].labels.get(label_tag) if label_id in objects else None
            if label is None:
                raise refuse(NOT_FOUND, f"image '{label_id}' has no '{label_tag}' label")
            label.info.update(info)

        self._mutate(apply)

    def label_history(self, image_id: str, tag: str) -> list[Path]:
        """Earlier revisions of a label, oldest first."""
        folder = self._history_dir / self.require_tag(tag) / self.require_image(image_id)
        return sorted(folder.glob(f"*{LABEL_SUFFIX}"), key=lambda p: int(p.name.split(".")[0]))

    # ---- index -------------------------------------------------------------------------------

    @property
    def _datastore(self) -> LocalDatastoreModel:
        """The index, re-read whenever ``datastore_v2.json`` changed on disk.

        Training and scoring subprocesses write the index too, and an atomic rename is not a
        "modified" event for MONAI Label's file watcher, so every access checks the file's
        identity (inode, time, size: one ``stat``) instead of trusting memory.
        """
        self._follow_index()
        return self.__dict__["_index"]

    @_datastore.setter
    def _datastore(self, model: LocalDatastoreModel) -> None:
        self.__dict__["_index"] = model

    def _follow_index(self) -> None:
        try:
            stat = os.stat(self._datastore_config_path)
        except (AttributeError, FileNotFoundError):
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self.__dict__.get("_index_stamp"):
            return
        model = LocalDatastoreModel.model_validate_json(Path(self._datastore_config_path).read_text())
        model.base_path = self._datastore_path
        self.__dict__["_index"] = model
        self.__dict__["_index_stamp"] = stamp

    def _mutate(self, apply: Callable[[dict[str, ImageLabelModel]], None]) -> None:
        """Run ``apply`` on the freshest index under the datastore lock, then write it atomically."""
        with FileLock(self._lock_file):
            apply(self._datastore.objects)
            self._write_index()

    def _write_index(self) -> None:
        self._ignore_event_config = True
        model = self.__dict__["_index"]
        write_text(self._datastore_config_path, model.model_dump_json(exclude={"base_path"}, indent=2))
        stat = os.stat(self._datastore_config_path)
        self._config_ts = stat.st_mtime
        self.__dict__["_index_stamp"] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """MONAI Label's writer, made atomic (a crash mid-write would otherwise corrupt the index)."""
        if lock:
            with FileLock(self._lock_file):
                self._write_index()
        else:
            self._write_index()

    def _list_files(self, path: str, patterns: Any) -> dict[str, str]:
        """MONAI Label's folder listing without this module's temporary files."""
        return {k: v for k, v in super()._list_files(path, patterns).items() if not k.startswith(TMP_PREFIX)}

    def _keep_previous(self, image_id: str, tag: str, previous: DataModel, revision: int) -> None:
        current = Path(self._datastore.label_path(tag)) / f"{image_id}{previous.ext}"
        if not current.exists():
            return
        target = self._history_dir / tag / image_id / f"{revision}{previous.ext}"
        with atomic_path(target) as tmp:
            shutil.copyfile(current, tmp)
        if previous.ext != LABEL_SUFFIX:
            current.unlink()


def _complete_temp_file(dest: Path, writer: Callable[[Path], None]) -> Path:
    """A fully written and flushed temporary file next to ``dest``, ready for ``os.replace``."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=LABEL_SUFFIX, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _volume_suffix(filename: str) -> str | None:
    name = Path(filename).name.lower()
    for pattern in IMAGE_EXTENSIONS:
        if name.endswith(pattern[1:]):
            return pattern[1:]
    return None


def _check_new_id(image_id: str) -> None:
    if (not image_id or image_id in (".", "..") or image_id.startswith(".")
            or any(c in image_id for c in _FORBIDDEN_IN_ID) or len(image_id) > 200):
        raise refuse(UNPROCESSABLE, f"image id '{_shorten(image_id)}' is not allowed (a plain file name is needed)")


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

