"""A MONAI Label datastore on a PACS over DICOMweb that works offline (no dcmqi) and loses no label.

MONAI Label's own DICOMweb datastore downloads dcmqi at start-up to write DICOM SEG (fails on
machines without internet), caches its listings for two hours (a saved label does not show as
"labelled" until then) and reads every SEG's metadata on every listing. This one:

- checks the connection at start: a wrong password or an unreachable PACS stops the server with
  one line naming the URL and the problem;
- images are the PACS's CT series (``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``), ids are Series
  Instance UIDs (what OHIF sends); a series is downloaded once, read and validated as CT, and
  cached as ``<cache>/<uid>.nii.gz``;
- a ``final`` label is written as a DICOM SEG (highdicom, :mod:`drasclr_monailabel.pacs.seg`)
  referencing the source series and stored in the PACS (STOW-RS) before the local copy is
  updated; earlier SEGs stay in the PACS, so every revision is kept there too;
- an image is labelled when the PACS holds a SEG that references it and has a segment named like
  one of the app's labels; the newest such SEG is its label (read back onto the CT's grid for
  training). Listings are cached for a few seconds only; what a SEG references is read once and
  kept in ``<cache>/seg_index.json`` (a SEG never changes), so a restart reads only new SEGs;
- other tags (``original``) stay local, as in MONAI Label; images and PACS labels are never
  removed through MONAI Label (that is the PACS administrator's job).

The local cache is an :class:`~drasclr_monailabel.tasks.datastore.EmphysemaDatastore`, so label
checks, atomic writes and the label history work as for a studies folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel
from monailabel.interfaces.datastore import DefaultLabelTag

from drasclr_monailabel.errors import DrasclrError, InputError
from drasclr_monailabel.pacs.connection import PacsConnection, PacsError, open_client
from drasclr_monailabel.pacs.seg import read_seg, referenced_series_uid, slices_in_volume_order, write_seg
from drasclr_monailabel.pacs.series import SeriesInfo, find_series, read_series, retrieve_instances, series_metadata
from drasclr_monailabel.pacs.upload import store_datasets
from drasclr_monailabel.tasks.conf import ResolvedConf
from drasclr_monailabel.tasks.datastore import LABEL_SUFFIX, LABEL_VALUES, EmphysemaDatastore
from drasclr_monailabel.tasks.http import CONFLICT, UNPROCESSABLE, refuse
from drasclr_monailabel.tasks.labels import conform_label, read_grid, write_label
from drasclr_monailabel.utils.atomic import write_json, write_with

logger = logging.getLogger(__name__)

BAD_GATEWAY = 502
"""HTTP status for "the PACS behind this server failed" (the request itself was fine)."""

LISTING_TTL_S = 5.0
"""Seconds a PACS listing (series, SEGs) is reused; a label saved through this server shows at once."""

SEG_INDEX = "seg_index.json"
"""Cache file: what each SEG series of the PACS references (read once per SEG, kept across restarts)."""

SEG_KEY = "seg_series_instance_uid"
"""Label info key: the SEG series the local copy of a ``final`` label came from or went to."""

FINAL = DefaultLabelTag.FINAL


@dataclass(frozen=True)
class SegEntry:
    """What a SEG series in the PACS is, read once from its headers (a SEG never changes).

    Attributes:
        series: the SEG series.
        image_uid: Series Instance UID of the image series it references (None if it names none).
        segment_labels: its segments' labels.
        stamp: content date and time, to find the newest SEG of an image.
    """

    series: SeriesInfo
    image_uid: str | None
    segment_labels: tuple[str, ...]
    stamp: str

    def usable(self, label_names: Sequence[str]) -> bool:
        """True if a segment is named like one of ``label_names`` (case-insensitive)."""
        names = {name.lower() for name in label_names}
        return any(label.strip().lower() in names for label in self.segment_labels)

    def to_json(self) -> dict[str, Any]:
        return {"series": asdict(self.series), "image_uid": self.image_uid,
                "segment_labels": list(self.segment_labels), "stamp": self.stamp}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegEntry:
        return cls(SeriesInfo(**data["series"]), data["image_uid"], tuple(data["segment_labels"]), data["stamp"])


class DicomWebDatastore(EmphysemaDatastore):
    """CT series and ``final`` labels in a PACS, reached over DICOMweb; a local cache for the files.

    Args:
        connection: the PACS's DICOMweb root and credentials.
        cache_dir: folder for downloaded images, local label copies and the index.
        label_names: the app's label names (values 1..N), also the SEG segment labels.
        search_filter: QIDO-RS filter selecting the image series (default ``{"Modality": "CT"}``).

    Raises:
        PacsError: the PACS cannot be reached or refuses the credentials.
    """

    def __init__(self, connection: PacsConnection, cache_dir: str | Path, label_names: Sequence[str],
                 search_filter: dict[str, Any] | None = None) -> None:
        self.connection = connection
        self.label_names = list(label_names)
        self.search_filter = dict(search_filter or {"Modality": "CT"})
        self.client = open_client(connection)
        self._listing_lock = threading.Lock()
        self._series: dict[str, SeriesInfo] = {}
        self._series_at = -float("inf")
        self._seg_index = Path(cache_dir) / SEG_INDEX
        self._seg_entries = _read_seg_index(self._seg_index)
        self._labels: dict[str, SegEntry] = {}
        self._labels_at = -float("inf")
        cache = Path(cache_dir)
        self._downloads = cache / ".downloads"
        self._downloads.mkdir(parents=True, exist_ok=True)
        super().__init__(cache, cache, auto_reload=False, read_only=False)
        logger.info(f"DICOMweb datastore {connection.url} (cache {cache}): {len(self.list_images())} image series, "
                    f"{len(self.get_labeled_images())} labelled")

    def name(self) -> str:
        return self.connection.url

    def description(self) -> str:
        return f"PACS at {self.connection.url} (DICOMweb)"

    # ---- listings ------------------------------------------------------------------------------

    def list_images(self) -> list[str]:
        """Series Instance UIDs of the image series matching the search filter."""
        return sorted(self._image_series())

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Images with a usable SEG in the PACS (the ``final`` label)."""
        images = self._image_series()
        return sorted(image for image in self.final_labels() if image in images)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = set(self.get_labeled_images())
        return [image for image in self.list_images() if image not in labelled]

    def final_labels(self) -> dict[str, SegEntry]:
        """Image series UID -> its newest usable SEG in the PACS."""
        with self._listing_lock:
            if time.monotonic() - self._labels_at > LISTING_TTL_S:
                with pacs_http_errors():
                    segs = find_series(self.client, self.connection, {"Modality": "SEG"})
                    new = [s for s in segs if s.series_instance_uid not in self._seg_entries]
                    for series in new:
                        self._seg_entries[series.series_instance_uid] = self._describe_seg(series)
                if new:
                    write_json(self._seg_index, {uid: e.to_json() for uid, e in self._seg_entries.items()})
                newest: dict[str, SegEntry] = {}
                for series in segs:
                    entry = self._seg_entries[series.series_instance_uid]
                    if entry.usable(self.label_names) and entry.image_uid and (
                            entry.image_uid not in newest or entry.stamp > newest[entry.image_uid].stamp):
                        newest[entry.image_uid] = entry
                self._labels, self._labels_at = newest, time.monotonic()
            return dict(self._labels)

    def _image_series(self) -> dict[str, SeriesInfo]:
        with self._listing_lock:
            if time.monotonic() - self._series_at > LISTING_TTL_S:
                with pacs_http_errors():
                    found = find_series(self.client, self.connection, self.search_filter)
                self._series = {s.series_instance_uid: s for s in found if s.modality != "SEG"}
                self._series_at = time.monotonic()
            return dict(self._series)

    def _describe_seg(self, series: SeriesInfo) -> SegEntry:
        first = series_metadata(self.client, self.connection, series)[0]
        labels = tuple(str(getattr(s, "SegmentLabel", "")) for s in getattr(first, "SegmentSequence", []))
        stamp = f"{first.get('ContentDate', '')}{first.get('ContentTime', '')}|{first.get('SeriesDate', '')}{first.get('SeriesTime', '')}"
        return SegEntry(series, referenced_series_uid(first), labels, stamp)

    def _invalidate_labels(self) -> None:
        with self._listing_lock:
            self._labels_at = -float("inf")

    # ---- images --------------------------------------------------------------------------------

    def require_image(self, image_id: Any) -> str:
        """The id of a PACS image series, downloaded into the cache if needed; else HTTP 404."""
        if isinstance(image_id, str) and image_id not in self._datastore.objects and image_id in self._image_series():
            self._fetch_image(image_id)
        return super().require_image(image_id)

    def get_image_uri(self, image_id: str) -> str:
        """Local NIfTI of the series (downloaded on first use)."""
        return super().get_image_uri(self.require_image(image_id))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Cached info of a downloaded series; the PACS's identifiers for one not downloaded yet."""
        info = super().get_image_info(image_id)
        series = self._image_series().get(image_id)
        if not info and series is not None:
            info = _series_info_fields(series)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        super().update_image_info(self.require_image(image_id), info)

    def _fetch_image(self, image_id: str) -> None:
        """Download, check and cache one series as ``<uid>.nii.gz`` and add it to the index."""
        dest = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        with FileLock(self._downloads / f"{_file_key(image_id)}.lock"):
            if image_id in self._datastore.objects and dest.exists():
                return
            series = self._image_series()[image_id]
            start = time.perf_counter()
            with pacs_http_errors():
                volume = read_series(self.client, self.connection, series)
            write_with(dest, lambda tmp: sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=True))
            info = dict(_series_info_fields(series), ts=int(time.time()), name=dest.name)

            def apply(objects: dict[str, ImageLabelModel]) -> None:
                if image_id not in objects:
                    objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=".nii.gz"))

            self._mutate(apply)
            logger.info(f"Downloaded series {image_id} ({'x'.join(map(str, volume.shape_xyz))} voxels) "
                        f"in {time.perf_counter() - start:.1f} s")

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise refuse(CONFLICT, f"images of this server live in the PACS ({self.connection.url}); store the series "
                               "there (e.g. 'drasclr pacs-upload') instead of uploading it to MONAI Label")

    def remove_image(self, image_id: str) -> None:
        raise refuse(CONFLICT, f"images of this server live in the PACS ({self.connection.url}); remove the series there")

    # ---- labels --------------------------------------------------------------------------------

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """A ``final`` label goes to the PACS as a DICOM SEG first, then into the local cache.

        Raises:
            HTTPException: 404 unknown image, 422 a label that does not fit the image, 502 the PACS
                refused the SEG or failed (nothing is saved locally then).
        """
        image_id = self.require_image(image_id)
        if self.require_tag(label_tag) != FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info)
        grid = read_grid(self.get_image_uri(image_id))
        try:
            labels = conform_label(label_filename, grid, len(LABEL_VALUES), list(LABEL_VALUES))
        except InputError as exc:
            raise refuse(UNPROCESSABLE, f"label for image '{image_id}': {exc.problem}") from None
        if len(self.label_names) == 1:
            labels = (labels > 0).astype(np.uint8)  # binary emphysema is any subtype value (docs/formats.md)
        seg_uid = self._store_seg(image_id, labels)
        info = dict(label_info or {}, **{SEG_KEY: seg_uid})
        self._invalidate_labels()
        return super().save_label(image_id, label_filename, label_tag, info)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """Local copy of the image's label; for ``final``, refreshed from the PACS's newest SEG."""
        if label_tag != FINAL:
            return super().get_label_uri(label_id, label_tag)
        image_id = self.require_image(image_id or label_id)
        entry = self.final_labels().get(image_id)
        local = self._datastore.label(image_id, FINAL)
        if entry is not None and (local is None or local.info.get(SEG_KEY) != entry.series.series_instance_uid):
            self._fetch_label(image_id, entry)
        return super().get_label_uri(image_id, FINAL)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == FINAL:
            raise refuse(CONFLICT, f"'final' labels are DICOM SEG series in the PACS ({self.connection.url}); remove the SEG there")
        super().remove_label(label_id, label_tag)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Every labelled image with its newest label, both as local files (downloaded as needed)."""
        return [{"image": self.get_image_uri(image), "label": self.get_label_uri(image, FINAL)}
                for image in self.get_labeled_images()]

    def _store_seg(self, image_id: str, labels: np.ndarray) -> str:
        series = self._image_series()[image_id]
        start = time.perf_counter()
        with pacs_http_errors():
            sources = slices_in_volume_order(series_metadata(self.client, self.connection, series))
            seg = write_seg(labels, sources, self.label_names)
            store_datasets([seg], self.client, self.connection)
        logger.info(f"Stored label of {image_id} as DICOM SEG series {seg.SeriesInstanceUID} "
                    f"({int(getattr(seg, 'NumberOfFrames', 0))} frames) in {time.perf_counter() - start:.1f} s")
        return str(seg.SeriesInstanceUID)

    def _fetch_label(self, image_id: str, entry: SegEntry) -> None:
        """Read the SEG onto the cached image's grid and make it the local ``final`` label."""
        grid = read_grid(self.get_image_uri(image_id))
        seg_uid = entry.series.series_instance_uid
        with pacs_http_errors():
            sources = slices_in_volume_order(series_metadata(self.client, self.connection, self._image_series()[image_id]))
            instances = retrieve_instances(self.client, self.connection, entry.series)
            uids = [str(ds.SOPInstanceUID) for ds in sources]
            labels = np.zeros((len(uids), *grid.size[1::-1]), dtype=np.uint8)
            for instance in instances:
                part = read_seg(instance, uids, self.label_names, where=f"SEG series {seg_uid}")
                labels = np.where(part > 0, part, labels)
        with tempfile.TemporaryDirectory(prefix="drasclr-seg-") as tmp:
            path = Path(tmp) / f"label{LABEL_SUFFIX}"
            write_label(path, labels, grid)
            super().save_label(image_id, str(path), FINAL, {SEG_KEY: seg_uid, "source": "pacs"})
        logger.info(f"Read label of {image_id} from DICOM SEG series {seg_uid}")


@contextlib.contextmanager
def pacs_http_errors() -> Iterator[None]:
    """PACS failures become HTTP 502, unusable data HTTP 422, each with its one-line message."""
    try:
        yield
    except PacsError as exc:
        raise refuse(BAD_GATEWAY, str(exc)) from None
    except DrasclrError as exc:
        raise refuse(UNPROCESSABLE, str(exc)) from None


def dicomweb_datastore(url: str, resolved: ResolvedConf) -> DicomWebDatastore:
    """The app's datastore for ``--studies http(s)://...``, configured from MONAI Label's settings.

    Credentials: ``MONAI_LABEL_DICOMWEB_USERNAME`` / ``MONAI_LABEL_DICOMWEB_PASSWORD``; timeout:
    ``MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT``; image series: ``MONAI_LABEL_DICOMWEB_SEARCH_FILTER``;
    cache: ``MONAI_LABEL_DICOMWEB_CACHE_PATH`` or ``<app>/.drasclr/dicomweb``, one folder per URL.

    Raises:
        PacsError: the PACS cannot be reached or refuses the credentials (logged as one line).
    """
    from monailabel.config import settings

    connection = PacsConnection.from_monailabel_settings(url, settings)
    root = Path(settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip()) if settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip() \
        else resolved.state_dir / "dicomweb"
    try:
        return DicomWebDatastore(connection, root / _file_key(connection.url), resolved.conf.labels,
                                 settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    except PacsError as exc:
        logger.error(f"emphysema app cannot start: {exc}")
        raise


def _read_seg_index(path: Path) -> dict[str, SegEntry]:
    """The cached SEG descriptions; an unreadable cache is rebuilt from the PACS."""
    try:
        return {uid: SegEntry.from_json(data) for uid, data in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning(f"{path}: unreadable ({exc}); SEG references are read from the PACS again")
        return {}


def _series_info_fields(series: SeriesInfo) -> dict[str, str]:
    return {"SeriesInstanceUID": series.series_instance_uid, "StudyInstanceUID": series.study_instance_uid,
            "PatientID": series.patient_id, "SeriesDescription": series.description, "StudyDate": series.study_date,
            "Modality": series.modality}


def _file_key(text: str) -> str:
    """A short file-name-safe key for a URL or UID."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]
