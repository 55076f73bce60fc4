"""Preprocessed scans kept on disk, by file and content, for a server that sees the same scans again.

The anatomy pipeline (lung mask, registration, 1 mm grid) costs 2-5 s per chest CT on two cores,
a third of an interactive pre-segmentation. In the annotation loop the same scan is prepared again
and again: scored after every training round, inferred when an annotator opens it, prepared for
every later round once it is labelled. Those run in different processes (MONAI Label's training
and scoring subprocesses, the server), so the store is a folder in the cache format of
:mod:`~drasclr_monailabel.anatomy.cache`, one scan folder per source file:

- a lookup checks the ``_qa.json`` (written last) against the file's path, size and modification
  time (``utils.fingerprint``) and the atlas, so a replaced scan or another atlas is a miss;
- a hit marks the scan as recently used (its ``_qa.json``'s modification time); after a write the
  least recently used scans are removed until the folder fits ``max_bytes``;
- a scan removed or rewritten by another process while it is read is a miss, never an error:
  the scan is preprocessed again;
- beside the cache-format files the folder keeps the lung labels on the scan's own grid
  (:meth:`ScanStore.lungs_on`), which quantification and the label map need; a scan folder is
  rewritten whole, so they never outlive the scan they came from.

Scans whose source is not a file (an in-memory volume, a DICOM folder) are preprocessed every time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np

from drasclr_monailabel.anatomy.atlas import Atlas
from drasclr_monailabel.anatomy.cache import is_complete, qa_path, read_scan, recorded_atlas, scan_folder, write_scan
from drasclr_monailabel.anatomy.pipeline import PipelineSettings, PreprocessedScan, preprocess_volume
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.utils.atomic import save_npy
from drasclr_monailabel.utils.fingerprint import file_fingerprint

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 5 * 2**30
"""5 GiB: about 50 full-chest scans (int16 image and uint8 lungs on the 1 mm lung grid, lung labels
on the scan's own grid: ~105 MB for a 512^2 x 133 CT)."""

NATIVE_LUNGS_SUFFIX = "_lung_native.npy"
"""The lung labels on the source scan's own grid, beside the cache-format files (store only)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class ScanStore:
    """``volume -> PreprocessedScan`` with the results kept in ``folder``.

    Args:
        folder: the store's folder (created on first write).
        max_bytes: size the folder is trimmed to after each write (least recently used first);
            0 keeps nothing (every call preprocesses).
        settings: the pipeline settings every scan of this store is preprocessed with.
    """

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 settings: PipelineSettings = PipelineSettings()) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.settings = settings

    def preprocess(self, volume: CTVolume, atlas: Atlas) -> PreprocessedScan:
        """The scan of ``volume`` read from the store, or preprocessed (and stored) on a miss.

        Raises:
            NoLungsError / InputError: as :func:`~drasclr_monailabel.anatomy.pipeline.preprocess_volume`
                (failures are not stored: a refused scan is refused again, at the same cost).
        """
        source = volume.source
        fingerprint = file_fingerprint(source) if source and os.path.isfile(source) else None
        if fingerprint is None or self.max_bytes <= 0:
            return preprocess_volume(volume, atlas, self.settings)
        scan_id = store_id(source)
        if is_complete(self.folder, scan_id, source, atlas.atlas_id, fingerprint):
            try:
                scan = read_scan(self.folder, scan_id)
            except InputError as exc:
                logger.info("scan store: %s", exc)
            else:
                _touch(qa_path(self.folder, scan_id))
                return scan
        scan = preprocess_volume(volume, atlas, self.settings)
        self._write(scan_id, source, scan, atlas)
        return scan

    def lungs_on(self, volume: CTVolume, scan: PreprocessedScan) -> np.ndarray:
        """``scan.lungs_on(volume)`` (the lung labels on the volume's own grid), kept beside the
        stored scan as ``<id>_lung_native.npy`` once computed (0.3 s on a 512^2 x 133 CT)."""
        path = self._current_file(volume.source, NATIVE_LUNGS_SUFFIX)
        if path is not None and path.is_file():
            try:
                lungs = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                logger.info("scan store: %s unreadable (%s)", path, exc)
            else:
                if lungs.shape == volume.hu.shape and lungs.dtype == np.uint8:
                    return lungs
        lungs = scan.lungs_on(volume)
        if path is not None:
            try:
                save_npy(path, lungs)
            except OSError as exc:
                logger.warning("scan store: could not keep %s (%s)", path, exc)
        return lungs

    def _current_file(self, source: str, suffix: str) -> Path | None:
        """Where the store keeps ``suffix`` of ``source``'s scan folder, if that folder holds the
        file's current content; else None."""
        if self.max_bytes <= 0 or not source or not os.path.isfile(source):
            return None
        scan_id = store_id(source)
        atlas_id = recorded_atlas(self.folder, scan_id)
        if atlas_id is None or not is_complete(self.folder, scan_id, source, atlas_id, file_fingerprint(source)):
            return None
        return scan_folder(self.folder, scan_id) / f"{scan_id}{suffix}"

    def _write(self, scan_id: str, source: str, scan: PreprocessedScan, atlas: Atlas) -> None:
        folder = scan_folder(self.folder, scan_id)
        try:
            shutil.rmtree(folder, ignore_errors=True)  # also what write_scan does not name (the native lung labels)
            write_scan(self.folder, scan_id, source, scan, atlas, self.settings, scan.timings)
            self.trim(keep=scan_id)
        except (OSError, RuntimeError) as exc:  # a full disk (ITK raises RuntimeError) costs speed, not the request
            logger.warning("scan store: could not keep %s in %s (%s)", source, self.folder, exc)
            shutil.rmtree(folder, ignore_errors=True)

    def trim(self, keep: str | None = None) -> None:
        """Remove the least recently used scan folders until the store fits ``max_bytes``."""
        folders = [(*_usage(folder), folder.name) for folder in (self.folder.iterdir() if self.folder.is_dir() else ())]
        total = sum(size for _, size, _ in folders)
        for _, size, name in sorted(folders):
            if total <= self.max_bytes:
                break
            if name == keep:
                continue
            shutil.rmtree(scan_folder(self.folder, name), ignore_errors=True)
            total -= size


def store_id(source: str | Path) -> str:
    """Folder name of a source file: its readable name and a hash of its absolute path
    (two ``image.nii.gz`` in different folders do not collide)."""
    path = Path(source).resolve()
    name = _UNSAFE.sub("_", path.name.split(".")[0])[:60] or "scan"
    return f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _usage(folder: Path) -> tuple[float, int]:
    """(last use, bytes) of a scan folder: last use is its ``_qa.json``'s modification time, or the
    folder's own while it is being written (so a scan another process is writing is not removed first)."""
    try:
        files = list(folder.iterdir())
        qa = folder / f"{folder.name}_qa.json"
        used = (qa if qa in files else folder).stat().st_mtime
        return used, sum(f.stat().st_size for f in files if f.exists())
    except OSError:  # removed by another process meanwhile
        return 0.0, 0
