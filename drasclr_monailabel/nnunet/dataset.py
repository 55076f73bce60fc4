"""The nnU-Net raw dataset that ``drasclr export-nnunet`` writes: names, channels and dataset.json.

```
nnUNet_raw/Dataset501_Emphysema/
  imagesTr/<case>_0000.nii.gz      int16 HU on the lung-cropped grid, 1 mm by default (channel "CT")
  imagesTr/<case>_0001..3.nii.gz   float32 atlas x, y, z coordinate of every voxel ("noNorm"), with --coordinates
  labelsTr/<case>.nii.gz           uint8 class indices, same grid
  imagesTs/<case>_0000.nii.gz ...  images without a final label (to predict), with --unlabelled
  drasclr_export.json              what was exported from where (lets a re-run skip unchanged cases)
  dataset.json                     written last
```
``dataset.json`` carries nnU-Net's keys plus a ``drasclr`` block (format, grid spacing, atlas id,
whether coordinate channels are present) that the trainer and the predictor wrapper read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from drasclr_monailabel.segmentation.labels import LabelSet

FILE_ENDING = ".nii.gz"
DATASET_FORMAT = "drasclr-nnunet/1"
CT_CHANNEL = "CT"
COORDINATE_CHANNEL = "noNorm"
COORDINATE_AXES = ("x", "y", "z")
DRASCLR_KEY = "drasclr"
GRID_DESCRIPTION = "isotropic, cropped to the lungs plus a margin (drasclr anatomy pipeline), LPS"
_CASE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def dataset_name(dataset_id: int, name: str) -> str:
    """``Dataset501_Emphysema``; nnU-Net ids have three digits (1-999)."""
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_case_id(image_id: str) -> str:
    """A case identifier nnU-Net and file systems accept: runs of other characters become ``_``."""
    cleaned = _CASE_ID.sub("_", image_id).strip("._") or "case"
    return cleaned


def channel_names(coordinates: bool) -> dict[str, str]:
    """nnU-Net ``channel_names``: CT normalisation for the CT, none for the coordinate channels."""
    names = {"0": CT_CHANNEL}
    if coordinates:
        names.update({str(i + 1): COORDINATE_CHANNEL for i in range(len(COORDINATE_AXES))})
    return names


def image_files(folder: Path, case_id: str, coordinates: bool) -> list[Path]:
    """``<case>_0000.nii.gz`` (and ``_0001``-``_0003``) in ``folder``."""
    return [folder / f"{case_id}_{channel:04d}{FILE_ENDING}" for channel in range(len(channel_names(coordinates)))]


def label_names(labels: LabelSet) -> dict[str, int]:
    """nnU-Net ``labels``: consecutive values from 0 (background)."""
    return {"background": 0, **labels.as_dict()}


def build_dataset_json(name: str, labels: LabelSet, coordinates: bool, num_training: int, atlas_id: str,
                       spacing_mm: int, source: str) -> dict[str, Any]:
    """The ``dataset.json`` of an exported dataset."""
    return {
        "name": name,
        "description": f"Emphysema labels exported by drasclr export-nnunet from {source}",
        "channel_names": channel_names(coordinates),
        "labels": label_names(labels),
        "numTraining": num_training,
        "file_ending": FILE_ENDING,
        DRASCLR_KEY: {
            "format": DATASET_FORMAT,
            "grid": GRID_DESCRIPTION,
            "spacing_mm": spacing_mm,
            "atlas_id": atlas_id,
            "coordinates": coordinates,
            "coordinate_channels": {str(i + 1): f"normalised atlas {axis}" for i, axis in enumerate(COORDINATE_AXES)}
            if coordinates else {},
            "labels": list(labels.names),
        },
    }


def dataset_atlas_id(dataset_json: dict[str, Any]) -> str | None:
    """Atlas the dataset's coordinate channels refer to (None for a dataset we did not export)."""
    block = dataset_json.get(DRASCLR_KEY)
    return block.get("atlas_id") if isinstance(block, dict) else None


def dataset_label_names(dataset_json: dict[str, Any]) -> dict[str, int]:
    """Foreground ``{name: value}`` of a dataset.json (background left out)."""
    return {name: int(value) for name, value in dataset_json.get("labels", {}).items() if int(value) != 0}
