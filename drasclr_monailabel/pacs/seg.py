"""Emphysema label maps as DICOM Segmentation (SEG) objects, written and read without dcmqi.

MONAI Label writes SEG with dcmqi's ``itkimage2segimage``, which it downloads at start-up (fails
offline). Here highdicom builds the SEG from the label map and the source CT's headers: every
frame references the CT slice it lies on (by SOP Instance UID and plane position), so viewers
(OHIF, 3D Slicer) overlay it on the right slice, and reading back is a lookup by that reference.

Segments: one per label name (``emphysema``, or ``centrilobular``, ``panlobular``, ``paraseptal``),
numbered like the label values 1..N, each coded as SNOMED CT 87433001 "Pulmonary emphysema" in
category 49755003 "Morphologically abnormal structure"; the subtype is the segment label. A SEG
from another tool is read by segment label (case-insensitive), so its numbering does not matter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import drasclr_monailabel
from drasclr_monailabel.errors import InputError

EMPHYSEMA = hd.sr.CodedConcept("87433001", "SCT", "Pulmonary emphysema")
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
SEG_SERIES_NUMBER = 300
SEG_DESCRIPTION = "Emphysema label (drasclr)"
MANUFACTURER = "drasclr-monailabel"
SEGMENT_COLOURS = {"emphysema": (230, 159, 0), "centrilobular": (230, 159, 0), "panlobular": (213, 94, 0),
                   "paraseptal": (86, 180, 233)}
"""Display colours (sRGB, Okabe-Ito palette: distinguishable with colour-blindness) of the segments."""
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and study attributes a SEG copies from its source; PACS often leave the empty ones out."""


def slices_in_volume_order(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """CT slice headers sorted along the slice normal, the z order of :func:`~drasclr_monailabel.io.readers.read_ct`."""
    orientation = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal))


def write_seg(labels: np.ndarray, sources: Sequence[pydicom.Dataset], label_names: Sequence[str],
              description: str = SEG_DESCRIPTION, series_number: int = SEG_SERIES_NUMBER) -> pydicom.Dataset:
    """A binary DICOM SEG of ``labels`` on the CT series ``sources``.

    Args:
        labels: uint8 (Z, Y, X) label map on the CT's grid, value k = ``label_names[k - 1]``.
        sources: the CT's slice headers in the label map's z order (see :func:`slices_in_volume_order`);
            pixel data is not needed.
        label_names: names of the values 1..N.

    Raises:
        InputError: the label map does not have the series' size, or holds values above N.
    """
    if labels.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise InputError("label", f"shape {labels.shape} (z, y, x) does not match the DICOM series "
                                  f"({len(sources)} slices of {sources[0].Rows} x {sources[0].Columns})")
    if labels.size and int(labels.max()) > len(label_names):
        raise InputError("label", f"holds value {int(labels.max())}, but only {len(label_names)} label(s) are defined")
    segments = []
    for number, name in enumerate(label_names, start=1):
        segment = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=CATEGORY,
            segmented_property_type=EMPHYSEMA,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        segment.RecommendedDisplayCIELabValue = list(_dicom_lab(SEGMENT_COLOURS.get(name, SEGMENT_COLOURS["emphysema"])))
        segments.append(segment)
    # highdicom logs every copied module at INFO; keep its warnings only.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    seg = hd.seg.Segmentation(
        source_images=[_with_type2_attributes(ds) for ds in sources],
        pixel_array=np.ascontiguousarray(labels, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="emphysema app",
        software_versions=drasclr_monailabel.__version__,
        device_serial_number="0",
        content_label="EMPHYSEMA",
        content_description="Emphysema label map",
        series_description=description,
        omit_empty_frames=bool(labels.any()),
    )
    return seg


def _dicom_lab(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """An sRGB colour as DICOM's RecommendedDisplayCIELabValue (CIELab scaled to 16-bit integers)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, dtype=np.float64).reshape(1, 1, 3) / 255.0)[0, 0]
    return hd.color.CIELabColor(float(lab[0]), float(lab[1]), float(lab[2])).value


def _with_type2_attributes(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A shallow copy of a source header with every attribute of :data:`COPIED_TYPE2` present (empty if missing)."""
    missing = [name for name in COPIED_TYPE2 if name not in ds]
    if not missing:
        return ds
    copy = pydicom.Dataset(ds)
    for name in missing:
        setattr(copy, name, "")
    return copy


def seg_label_values(seg: pydicom.Dataset, label_names: Sequence[str]) -> dict[int, int]:
    """Segment number -> label value, matched by segment label (case-insensitive); unknown segments left out."""
    values = {name.lower(): value for value, name in enumerate(label_names, start=1)}
    mapping = {}
    for segment in getattr(seg, "SegmentSequence", []):
        value = values.get(str(getattr(segment, "SegmentLabel", "")).strip().lower())
        if value is not None:
            mapping[int(segment.SegmentNumber)] = value
    return mapping


def referenced_series_uid(seg: pydicom.Dataset) -> str | None:
    """The Series Instance UID of the image series a SEG was drawn on (None if it names none)."""
    for item in getattr(seg, "ReferencedSeriesSequence", []):
        if getattr(item, "SeriesInstanceUID", None):
            return str(item.SeriesInstanceUID)
    return None


def read_seg(seg: pydicom.Dataset, source_uids: Sequence[str], label_names: Sequence[str], where: str = "SEG") -> np.ndarray:
    """The SEG as a uint8 (Z, Y, X) label map on the CT whose slices are ``source_uids`` (in z order).

    Frames are placed by the CT slice they reference, slices without a frame are background, and
    segments are mapped to label values by :func:`seg_label_values`.

    Raises:
        InputError (naming ``where``): not a SEG, no segment with a known label, or frames that
            reference slices outside ``source_uids``.
    """
    if str(getattr(seg, "Modality", "")) != "SEG":
        raise InputError(where, f"is not a DICOM Segmentation (modality {getattr(seg, 'Modality', 'none')})")
    mapping = seg_label_values(seg, label_names)
    if not mapping:
        found = [str(getattr(s, "SegmentLabel", "")) for s in getattr(seg, "SegmentSequence", [])]
        raise InputError(where, f"has no segment named {' or '.join(label_names)} (segments: {', '.join(found) or 'none'})")
    try:
        parsed = hd.seg.Segmentation.from_dataset(seg, copy=False)
        numbers = sorted(mapping)
        masks = parsed.get_pixels_by_source_instance(
            source_sop_instance_uids=list(source_uids), segment_numbers=numbers,
            assert_missing_frames_are_empty=True, ignore_spatial_locations=True,
        )
    except (ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise InputError(where, f"cannot be placed on its CT series ({exc})") from None
    labels = np.zeros(masks.shape[:3], dtype=np.uint8)
    for channel, number in enumerate(numbers):
        labels[masks[..., channel] > 0] = mapping[number]
    return labels
