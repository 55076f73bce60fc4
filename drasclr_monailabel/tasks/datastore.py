"""A local-folder datastore that refuses bad writes and never loses a label.

It is MONAI Label's :class:`LocalDatastore` (images in the studies folder, labels in
``labels/<tag>/``, index in ``datastore_v2.json``) with these changes:

- ids and tags are checked: an image id must be a known image (or, for a new upload, a plain
  file name) and a tag a plain word, so no request can write outside the studies folder;
- an uploaded image must be a readable CT, an uploaded label must have the image's grid and the
  model's label values; it is stored as ``<id>.nii.gz`` on the image's exact grid;
- a saved label replaces the previous one only after the new file is complete (atomic rename),
  and the previous one is kept in ``<state>/label_history/<tag>/<id>/`` with its revision number;
  label file, history copy and index change together or not at all, and revision numbers are the
  server's (a client cannot set them, and a save never overwrites a history slot);
- temporary files left by a killed save are removed at start; image info is bounded in size;
- every change of the index re-reads it under the lock first and writes it atomically, so a
  training or scoring subprocess and the server never overwrite each other's entries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
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
from drasclr_monailabel.utils.atomic import FILE_MODE, TMP_PREFIX, atomic_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("*.nii.gz", "*.nii", "*.nrrd", "*.mha")
LABEL_SUFFIX = ".nii.gz"
LABEL_VALUES = SUBTYPES
"""Stored label values 1..3 (docs/formats.md); a binary emphysema label uses 1 (any value > 0 is emphysema)."""
SERVER_LABEL_KEYS = ("revision", "ts", "name", "voxels")
"""Label info keys that only the server sets (a client's label info cannot change them)."""
MAX_INFO_KEYS = 64
MAX_INFO_BYTES = 64 * 1024
"""Bounds of one image's info: it lives in the index, which every request reads."""
ORPHAN_MIN_AGE_S = 60.0
"""A temporary file in the studies folder idle this long belongs to no running write."""
PAYLOAD_TOO_LARGE = 413
INSUFFICIENT_STORAGE = 507
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
_FORBIDDEN_IN_ID = ("/", "\\", "\x00")


class EmphysemaDatastore(LocalDatastore):
    """Local studies folder with validated, atomic, versioned label saves.

    Args:
        studies: the studies folder (images at its top level).
        state_dir: folder for the label history (usually ``<studies>/.drasclr``).
        auto_reload: watch the folder for images and labels added by hand.
        read_only: do not reconcile the index with the folder at start.
        label_names: the labels the app serves (values 1..N); a saved label may hold only 0..N.
    """

    def __init__(self, studies: str | Path, state_dir: str | Path, auto_reload: bool = False, read_only: bool = False,
                 label_names: Sequence[str] = LABEL_VALUES) -> None:
        self._history_dir = Path(state_dir) / "label_history"
        self._label_names = list(label_names)
        super().__init__(str(studies), extensions=IMAGE_EXTENSIONS, auto_reload=auto_reload, read_only=read_only)
        if not read_only:
            self._remove_orphaned_temp_files()

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
        """Validate ``label_filename`` against the image, then store it as the new revision.

        The label file, the previous revision's history copy and the index change together or
        not at all: everything is written to temporary files first and renamed at the end.

        Raises:
            HTTPException: 404 unknown image, 422 bad tag or a label that does not fit the image,
                507 the server could not write (nothing changed).
        """
        image_id = self.require_image(image_id)
        label_tag = self.require_tag(label_tag)
        grid = read_grid(Path(self.get_image_uri(image_id)))
        try:
            labels = conform_label(label_filename, grid, len(self._label_names), self._label_names)
        except InputError as exc:
            # The upload's temporary name means nothing to the client: name the image instead.
            raise refuse(UNPROCESSABLE, f"label for image '{image_id}': {exc.problem}") from None
        info = dict(label_info or {})
        info["voxels"] = {str(v): int(np.count_nonzero(labels == v)) for v in range(1, len(self._label_names) + 1)}
        try:
            with FileLock(self._lock_file):
                self._store_label(image_id, label_tag, lambda path: write_label(path, labels, grid), info)
        except (OSError, RuntimeError) as exc:  # SimpleITK reports a failed write as RuntimeError
            raise refuse(INSUFFICIENT_STORAGE, f"label for image '{image_id}' not saved, nothing changed: "
                                               f"the server cannot write ({_reason(exc)})") from None
        logger.info(f"Saved label {label_tag}/{image_id}{LABEL_SUFFIX} (revision {info['revision']})")
        return image_id

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded CT under a new id; refuses non-CT files and ids that exist or are not plain names."""
        suffix = _volume_suffix(image_filename)
        if suffix is None:
            raise refuse(UNPROCESSABLE, f"{Path(image_filename).name}: only {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} images can be added")
        image_id = image_id or Path(image_filename).name[: -len(suffix)]
        _check_new_id(image_id)
        info = _bounded_info(image_id, {}, image_info or {})
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
            objects[image_id] = ImageLabelModel(image=DataModel(info=dict(info, ts=int(time.time()), name=dest.name), ext=suffix))

        self._mutate(apply)
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Remove an image and its labels (MONAI Label removes each through :meth:`remove_label`, so
        every label's last revision joins the label history). Unknown ids get HTTP 404."""
        super().remove_image(self.require_image(image_id))

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label; its current revision goes to the label history first, as a save keeps
        the revision it replaces, so a delete never loses an annotation. HTTP 404 when there is
        no such label. The file goes only after the index no longer lists it (a failed index write
        leaves the label in place)."""
        image_id, tag = self.require_image(label_id), self.require_tag(label_tag)
        removed: list[Path] = []

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            label = objects[image_id].labels.get(tag) if image_id in objects else None
            if label is None:
                raise refuse(NOT_FOUND, f"image '{image_id}' has no '{tag}' label")
            self._keep_previous(image_id, tag, label, self._next_revision(image_id, tag, label) - 1)
            removed.append(Path(self._datastore.label_path(tag)) / f"{image_id}{label.ext}")
            del objects[image_id].labels[tag]

        self._mutate(apply)
        removed[0].unlink(missing_ok=True)
        logger.info(f"Removed label {tag}/{image_id}; its last revision is in the label history")

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the image's info (read-modify-write under the lock); HTTP 413 if the
        result would exceed :data:`MAX_INFO_BYTES` or :data:`MAX_INFO_KEYS`."""
        image_id = self.require_image(image_id)

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            if image_id in objects:
                image = objects[image_id].image
                image.info = _bounded_info(image_id, image.info, info)

        self._mutate(apply)

    def update_images_info(self, updates: dict[str, dict[str, Any]]) -> None:
        """Merge many images' info in one index write (scores of a whole cohort)."""
        def apply(objects: dict[str, ImageLabelModel]) -> None:
            for image_id, info in updates.items():
                if image_id in objects:
                    objects[image_id].image.info.update(info)

        self._mutate(apply)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into a label's info; the server's own keys (:data:`SERVER_LABEL_KEYS`)
        may be sent back unchanged but not changed (HTTP 422)."""
        label_id = self.require_image(label_id)
        label_tag = self.require_tag(label_tag)

        def apply(objects: dict[str, ImageLabelModel]) -> None:
            label = objects[label_id].labels.get(label_tag) if label_id in objects else None
            if label is None:
                raise refuse(NOT_FOUND, f"image '{label_id}' has no '{label_tag}' label")
            label.info.update(client_label_info(label.info, info))

        self._mutate(apply)

    def label_history(self, image_id: str, tag: str) -> list[Path]:
        """Earlier revisions of a label, oldest first."""
        return [path for _, path in self._history(self.require_image(image_id), self.require_tag(tag))]

    # ---- label revisions ---------------------------------------------------------------------

    def _store_label(self, image_id: str, tag: str, writer: Callable[[Path], None], info: dict[str, Any]) -> None:
        """Stage the label, the history copy and the index, then rename; undo everything on failure.

        Runs under the datastore lock, so every temporary file that exists outside it is orphaned.
        """
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise refuse(NOT_FOUND, f"image '{image_id}' was removed while its label was being saved")
        dest = Path(self._datastore.label_path(tag)) / f"{image_id}{LABEL_SUFFIX}"
        previous = obj.labels.get(tag)
        revision = self._next_revision(image_id, tag, previous)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = _complete_temp_file(dest, writer)
        kept = self._keep_previous(image_id, tag, previous, revision - 1)
        published = False

        def publish() -> None:
            nonlocal published
            os.replace(staged, dest)
            published = True

        info.update({"ts": int(time.time()), "name": dest.name, "revision": revision})
        obj.labels[tag] = DataModel(info=info, ext=LABEL_SUFFIX)
        try:
            self._write_index(then=publish)
        except BaseException:
            self._forget_index()
            if published:
                _restore(dest, kept if previous is not None and previous.ext == LABEL_SUFFIX else None)
            if kept is not None:
                kept.unlink(missing_ok=True)
            raise
        finally:
            staged.unlink(missing_ok=True)
        if previous is not None and previous.ext != LABEL_SUFFIX:
            (dest.parent / f"{image_id}{previous.ext}").unlink(missing_ok=True)

    def _next_revision(self, image_id: str, tag: str, previous: DataModel | None) -> int:
        """One above the current revision; never a number that the history already holds (an
        index restored from a backup or edited by hand cannot make a save overwrite history)."""
        newest_kept = max((number for number, _ in self._history(image_id, tag)), default=0)
        if previous is None:
            return newest_kept + 1
        stored = previous.info.get("revision")
        current = stored if isinstance(stored, int) and not isinstance(stored, bool) else 1
        return max(current, newest_kept + 1) + 1

    def _history(self, image_id: str, tag: str) -> list[tuple[int, Path]]:
        folder = self._history_dir / tag / image_id
        numbered = ((_revision_number(p), p) for p in (folder.iterdir() if folder.is_dir() else ()))
        return sorted((n, p) for n, p in numbered if n is not None)

    def _keep_previous(self, image_id: str, tag: str, previous: DataModel | None, revision: int) -> Path | None:
        """Copy the current label into its history slot (a new file); the slot's path, or None."""
        if previous is None:
            return None
        current = Path(self._datastore.label_path(tag)) / f"{image_id}{previous.ext}"
        if not current.exists():
            return None
        target = self._history_dir / tag / image_id / f"{revision}{previous.ext}"
        with atomic_path(target) as tmp:
            shutil.copyfile(current, tmp)
        return target

    def _remove_orphaned_temp_files(self) -> None:
        """Remove the temporary files of writes that were killed midway.

        Labels and history are written only under the datastore lock, so under the lock every
        temporary file there is orphaned. The studies folder's top level also receives downloads
        of a DICOMweb cache, written outside it: there only files idle for
        :data:`ORPHAN_MIN_AGE_S` are removed, so a subprocess that starts never breaks a running write.
        """
        base = Path(self._datastore_path)
        cutoff = time.time() - ORPHAN_MIN_AGE_S
        with FileLock(self._lock_file):
            locked = [*(base / "labels").glob(f"*/{TMP_PREFIX}*"), *self._history_dir.rglob(f"{TMP_PREFIX}*")]
            idle = [p for p in base.glob(f"{TMP_PREFIX}*") if p.is_file() and p.stat().st_mtime < cutoff]
            for path in [*locked, *idle]:
                if path.is_file():
                    path.unlink()
                    logger.info(f"Removed {path.name}, left by an interrupted write")

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

    def _forget_index(self) -> None:
        """Drop the in-memory index (changed by a write that failed): the next access re-reads the file."""
        self.__dict__.pop("_index_stamp", None)

    def _mutate(self, apply: Callable[[dict[str, ImageLabelModel]], None]) -> None:
        """Run ``apply`` on the freshest index under the datastore lock, then write it atomically."""
        with FileLock(self._lock_file):
            try:
                apply(self._datastore.objects)
                self._write_index()
            except BaseException:
                self._forget_index()
                raise

    def _write_index(self, then: Callable[[], None] | None = None) -> None:
        """Write the index to a temporary file, run ``then`` (the renames that belong to this
        change), and only then rename the index into place."""
        self._ignore_event_config = True
        model = self.__dict__["_index"]
        with atomic_path(self._datastore_config_path) as tmp:
            tmp.write_text(model.model_dump_json(exclude={"base_path"}, indent=2))
            if then is not None:
                then()
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


def client_label_info(stored: dict[str, Any], sent: Any) -> dict[str, Any]:
    """The part of ``sent`` a client may merge into a label's info.

    Raises:
        HTTPException: 422 if ``sent`` is not an object or changes a key the server owns.
    """
    if not isinstance(sent, dict):
        raise refuse(UNPROCESSABLE, "label info must be a JSON object")
    changed = sorted(k for k in SERVER_LABEL_KEYS if k in sent and sent[k] != stored.get(k))
    if changed:
        raise refuse(UNPROCESSABLE, f"label info key(s) {', '.join(changed)} are set by the server and cannot be changed")
    return {k: v for k, v in sent.items() if k not in SERVER_LABEL_KEYS}


def _bounded_info(image_id: str, stored: dict[str, Any], sent: Any) -> dict[str, Any]:
    """``stored`` merged with ``sent``; HTTP 422 if ``sent`` is no object, 413 if the result is too large."""
    if not isinstance(sent, dict):
        raise refuse(UNPROCESSABLE, f"info for image '{_shorten(image_id)}' must be a JSON object")
    merged = {**stored, **sent}
    size = len(json.dumps(merged, default=str))
    if len(merged) > MAX_INFO_KEYS or size > MAX_INFO_BYTES:
        raise refuse(PAYLOAD_TOO_LARGE, f"info for image '{_shorten(image_id)}' would hold {len(merged)} keys, "
                                        f"{size} bytes; at most {MAX_INFO_KEYS} keys and {MAX_INFO_BYTES} bytes are kept")
    return merged


def _restore(dest: Path, kept: Path | None) -> None:
    """Put the previous label back in place of ``dest`` (remove ``dest`` if there was none)."""
    if kept is None:
        dest.unlink(missing_ok=True)
        return
    with atomic_path(dest) as tmp:
        shutil.copyfile(kept, tmp)


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


def _revision_number(path: Path) -> int | None:
    number = path.name.split(".")[0]
    return int(number) if number.isdigit() else None


def _complete_temp_file(dest: Path, writer: Callable[[Path], None]) -> Path:
    """A fully written and flushed temporary file next to ``dest``, ready for ``os.replace``."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=LABEL_SUFFIX, dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, FILE_MODE)
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

