"""Export annotated CT scans to an nnU-Net raw dataset (``drasclr export-nnunet``).

Each case is brought to the anatomy pipeline's grid (1 mm isotropic, cropped to the lungs plus a
margin, LPS; the grid the DrasCLR encoder was pretrained on), so nnU-Net plans a 1 mm target
spacing and never resamples, a warm-started encoder sees the voxel size it learned, the
coordinate channels come from the same atlas registration as the app's model, and the
lung crop keeps outside air (which looks like emphysema) out of training. Labels are checked
against their image's grid (one line naming the file on a mismatch), mapped to class indices
(binary or subtypes) and put on the same grid.

Re-running is idempotent: ``drasclr_export.json`` records each case's source files (size and
modification time) and the export options; unchanged cases are skipped, changed ones rewritten
(an image that got a label moves from imagesTs to imagesTr), cases no longer in the source
removed. Every file is written atomically, and ``dataset.json`` (removed while anything changes)
is written last, so a dataset with a ``dataset.json`` is complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.atlas import Atlas, load_atlas, load_default_atlas
from drasclr_monailabel.emphysema.label_input import read_label_map
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.nnunet.dataset import (
    FILE_ENDING,
    build_dataset_json,
    dataset_name,
    image_files,
    nnunet_case_id,
)
from drasclr_monailabel.nnunet.lung_grid import LungGridCase, lung_grid_case
from drasclr_monailabel.nnunet.sources import SourceCase
from drasclr_monailabel.segmentation.labels import LabelSet
from drasclr_monailabel.utils.atomic import TMP_PREFIX, write_json, write_with

RECORD_NAME = "drasclr_export.json"
RECORD_FORMAT = "drasclr-nnunet-export/1"
TRAINING, TEST = "Tr", "Ts"
CASE_FOLDERS = ("imagesTr", "labelsTr", "imagesTs")


@dataclass(frozen=True)
class ExportOptions:
    """What shapes the exported files (a change rewrites every case).

    Attributes:
        labels: binary emphysema or the three subtypes.
        coordinates: add the three atlas-coordinate channels.
        unlabelled: also export images without a label, to ``imagesTs`` (for prediction).
        spacing_mm: grid spacing in whole mm (1, the encoder's resolution; coarser for quick checks).
        atlas: atlas folder for registration and coordinates (None: the shipped atlas, the app's).
    """

    labels: LabelSet
    coordinates: bool = False
    unlabelled: bool = False
    spacing_mm: int = 1
    atlas: Path | None = None

    def recorded(self, atlas_id: str) -> dict[str, Any]:
        """The options as stored in the export record (what a re-run compares)."""
        return {"labels": list(self.labels.names), "coordinates": self.coordinates, "spacing_mm": self.spacing_mm,
                "atlas_id": atlas_id}


@dataclass
class ExportSummary:
    """What an export run did."""

    folder: Path
    training: int = 0
    test: int = 0
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.folder}: {self.training} training cases" + (f", {self.test} to predict (imagesTs)" if self.test else "")
               + f"; written {len(self.written)}, unchanged {len(self.skipped)}, removed {len(self.removed)}"]
        return out + [f"warning: {w}" for w in self.warnings]


def export_dataset(
    cases: list[SourceCase],
    raw_root: str | Path,
    dataset_id: int,
    name: str,
    options: ExportOptions,
    source: str,
    progress: Callable[[Iterable], Iterable] = lambda items: items,
) -> ExportSummary:
    """Write (or bring up to date) ``raw_root/DatasetXXX_Name`` from ``cases``.

    Args:
        cases: images with labels (training) and without (exported only with ``options.unlabelled``).
        raw_root: the ``nnUNet_raw`` folder.
        dataset_id: nnU-Net dataset id, 1-999.
        name: dataset name (letters, digits, ``_``, ``-``).
        options: label set, coordinate channels, unlabelled images.
        source: description of where the cases come from (for dataset.json).
        progress: wraps the case iterator (e.g. a tqdm bar).

    Raises:
        InputError: an unreadable image or label, a label off its image's grid, label values
            outside 0-3, no labelled case, a clash with another dataset or with files the export
            did not write.
    """
    folder = _dataset_folder(Path(raw_root), dataset_id, name)
    if options.spacing_mm < 1:
        raise InputError(raw_root, f"grid spacing must be a whole number of mm >= 1, got {options.spacing_mm}")
    selected = _select(cases, options)
    if not any(split == TRAINING for split, _ in selected.values()):
        raise InputError(source, "has no labelled case to export")
    atlas = load_atlas(options.atlas) if options.atlas is not None else load_default_atlas()
    record = _read_record(folder)
    if record.get("options") != options.recorded(atlas.atlas_id):
        _remove_cases(folder, record, list(record.get("cases", {})))
        record = {"format": RECORD_FORMAT, "options": options.recorded(atlas.atlas_id), "cases": {}}
    _remove_leftover_temporaries(folder)
    _refuse_foreign_files(folder, set(record["cases"]))
    summary = ExportSummary(folder)
    stale = [case_id for case_id in record["cases"] if case_id not in selected]
    pending = [case_id for case_id, (split, case) in selected.items()
               if record["cases"].get(case_id, {}).get("stamp") != _stamp(case, split) or not _files_exist(folder, case_id, split, options)]
    moved = [case_id for case_id in pending
             if record["cases"].get(case_id, {}).get("split", selected[case_id][0]) != selected[case_id][0]]
    if stale or pending:
        (folder / "dataset.json").unlink(missing_ok=True)
    record["cases"] = _remove_cases(folder, record, stale + moved)
    summary.removed = stale
    write_json(folder / RECORD_NAME, record)
    for case_id in progress(list(selected)):
        split, case = selected[case_id]
        if case_id in pending:
            entry = _export_case(folder, case_id, split, case, options, atlas)
            entry["stamp"] = _stamp(case, split)
            record["cases"][case_id] = entry
            write_json(folder / RECORD_NAME, record)
            summary.written.append(case_id)
        else:
            summary.skipped.append(case_id)
        summary.warnings.extend(record["cases"][case_id].get("warnings", []))
    summary.training = sum(split == TRAINING for split, _ in selected.values())
    summary.test = len(selected) - summary.training
    summary.warnings.extend(_missing_class_warnings(record, options.labels))
    write_json(folder / "dataset.json", build_dataset_json(name, options.labels, options.coordinates, summary.training,
                                                           atlas.atlas_id, options.spacing_mm, source))
    return summary


def _dataset_folder(raw_root: Path, dataset_id: int, name: str) -> Path:
    if not 1 <= dataset_id <= 999:
        raise InputError(raw_root, f"dataset id {dataset_id} is outside nnU-Net's 1-999")
    if not name or nnunet_case_id(name) != name or "." in name:
        raise InputError(raw_root, f"dataset name {name!r} may hold only letters, digits, '_' and '-'")
    if raw_root.exists() and not raw_root.is_dir():
        raise InputError(raw_root, "exists and is not a folder (expected the nnUNet_raw folder)")
    folder = raw_root / dataset_name(dataset_id, name)
    prefix = dataset_name(dataset_id, "")
    clashes = [p.name for p in raw_root.glob(f"{prefix}*") if p.is_dir() and p != folder] if raw_root.is_dir() else []
    if clashes:
        raise InputError(raw_root / clashes[0], f"already uses dataset id {dataset_id}; nnU-Net needs one folder per id "
                                                "(choose another --dataset-id or remove it)")
    return folder


def _select(cases: list[SourceCase], options: ExportOptions) -> dict[str, tuple[str, SourceCase]]:
    """``{nnU-Net case id: (split, case)}``, refusing two images that map to one case id."""
    selected: dict[str, tuple[str, SourceCase]] = {}
    for case in cases:
        if case.label is None and not options.unlabelled:
            continue
        case_id = nnunet_case_id(case.image_id)
        if case_id in selected:
            raise InputError(case.image, f"maps to nnU-Net case '{case_id}' like {selected[case_id][1].image}; rename one")
        selected[case_id] = (TRAINING if case.label is not None else TEST, case)
    return selected


def _export_case(folder: Path, case_id: str, split: str, case: SourceCase, options: ExportOptions,
                 atlas: Atlas) -> dict[str, Any]:
    """Write one case's channels (and label) and return its record entry."""
    volume = read_ct(case.image)
    stored = None
    if case.label is not None:
        stored = read_label_map(case.label, volume)
        try:
            native_voxels = int(np.count_nonzero(options.labels.to_classes(stored)))
        except ValueError as exc:
            raise InputError(case.label, str(exc)) from None
    prepared = lung_grid_case(volume, options.spacing_mm, atlas, label_map=stored, label_set=options.labels)
    for path, channel in zip(image_files(folder / f"images{split}", case_id, options.coordinates), _channels(prepared, options)):
        _write_image(path, channel, prepared.grid)
    entry: dict[str, Any] = {"image_id": case.image_id, "split": split, "warnings": []}
    if prepared.labels is not None:
        _write_image(folder / "labelsTr" / f"{case_id}{FILE_ENDING}", prepared.labels, prepared.grid)
        native_ml = native_voxels * float(np.prod(volume.spacing)) / 1000.0
        exported_ml = float(np.count_nonzero(prepared.labels)) * float(np.prod(prepared.grid.GetSpacing())) / 1000.0
        entry["voxels"] = {str(c): int(np.count_nonzero(prepared.labels == c)) for c in range(1, options.labels.num_classes)}
        entry["label_ml"] = {"native": round(native_ml, 3), "exported": round(exported_ml, 3)}
        if native_ml > 0 and exported_ml < 0.9 * native_ml:
            entry["warnings"].append(f"{case.label}: only {exported_ml:.1f} of {native_ml:.1f} mL of label lie inside the "
                                     "lung mask (labels outside the lungs are not exported)")
    return entry


def _channels(prepared: LungGridCase, options: ExportOptions) -> list[np.ndarray]:
    channels = [prepared.hu]
    if options.coordinates:
        channels.extend(prepared.coordinates.astype(np.float32))
    return channels


def _write_image(path: Path, array: np.ndarray, grid: sitk.Image) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(grid)
    write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def _stamp(case: SourceCase, split: str) -> dict[str, Any]:
    """What identifies a case's inputs: paths, sizes and modification times, and its split."""
    def one(path: Path | None) -> list[Any] | None:
        if path is None:
            return None
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    return {"image": one(case.image), "label": one(case.label), "split": split}


def _files(folder: Path, case_id: str, split: str, coordinates: bool) -> list[Path]:
    files = image_files(folder / f"images{split}", case_id, coordinates)
    return files + ([folder / "labelsTr" / f"{case_id}{FILE_ENDING}"] if split == TRAINING else [])


def _files_exist(folder: Path, case_id: str, split: str, options: ExportOptions) -> bool:
    return all(p.is_file() for p in _files(folder, case_id, split, options.coordinates))


def _remove_cases(folder: Path, record: dict[str, Any], case_ids: list[str]) -> dict[str, Any]:
    """Delete the files of recorded cases; returns the record's remaining cases."""
    coordinates = bool(record.get("options", {}).get("coordinates"))
    cases = dict(record.get("cases", {}))
    for case_id in case_ids:
        entry = cases.pop(case_id, {})
        for path in _files(folder, case_id, entry.get("split", TRAINING), coordinates):
            path.unlink(missing_ok=True)
    return cases


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / RECORD_NAME
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot be read ({exc}); remove the dataset folder and export again") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise InputError(path, f"is not a {RECORD_FORMAT} record")
    return record


def _remove_leftover_temporaries(folder: Path) -> None:
    """Temporary files of an interrupted run end in .nii.gz too: nnU-Net would take them for cases."""
    for sub in CASE_FOLDERS:
        for path in (folder / sub).glob(f"{TMP_PREFIX}*") if (folder / sub).is_dir() else []:
            path.unlink(missing_ok=True)


def _refuse_foreign_files(folder: Path, known: set[str]) -> None:
    """Refuse to mix our cases with image files the export did not write (nnU-Net would train on them)."""
    foreign = []
    for sub in CASE_FOLDERS:
        for path in sorted((folder / sub).glob(f"*{FILE_ENDING}")) if (folder / sub).is_dir() else []:
            stem = path.name[: -len(FILE_ENDING)]
            case_id = stem if sub == "labelsTr" else stem.rsplit("_", 1)[0]
            if case_id not in known:
                foreign.append(path)
    if foreign:
        raise InputError(foreign[0], f"was not written by drasclr export-nnunet ({len(foreign)} such file(s) in {folder}); "
                                     "export into a new --dataset-id or remove them")


def _missing_class_warnings(record: dict[str, Any], labels: LabelSet) -> list[str]:
    totals = {name: 0 for name in labels.names}
    for entry in record["cases"].values():
        for value, count in entry.get("voxels", {}).items():
            totals[labels.names[int(value) - 1]] += count
    return [f"no training case has a '{name}' voxel: nnU-Net cannot learn that class" for name, count in totals.items() if count == 0]

