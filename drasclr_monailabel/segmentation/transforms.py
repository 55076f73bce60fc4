"""The emphysema model's preprocessing and postprocessing as MONAI dictionary transforms.

Each transform wraps the package function that does the work, so the MONAI Label app's infer task
(:class:`~drasclr_monailabel.tasks.infer.EmphysemaInferTask`), the MONAI Bundle's
``configs/inference.json`` (``drasclr export-bundle``) and plain Python give the same result.
Keys of the data dictionary (defaults):

- ``image``: a CT file path, then the :class:`~drasclr_monailabel.io.volume.CTVolume` read from it
  (int16 HU on the scan's own grid);
- ``case``: the :class:`~drasclr_monailabel.segmentation.case.PreparedCase` (1 mm LPS grid
  cropped to the lungs, lung labels there and on the scan's grid, atlas registration);
- ``input``: float32 tensor (4, Z, Y, X) on the 1 mm grid, the network input (CT in network
  units, then normalised atlas x, y, z);
- ``pred``: class scores or probabilities (C, Z, Y, X) on the 1 mm grid, then uint8 class labels
  (Z, Y, X) on the scan's own grid (:class:`ToMonaiLayoutd`: (1, X, Y, Z), MONAI's layout);
- ``quantification``: %LAA-950, Perc15 and volumes per lung and zone (JSON-ready), also under
  ``pred_meta_dict``.

The MONAI Bundle renames two keys for MONAI Label's ``BundleInferTask``, which runs the network
on ``image`` and writes ``pred``: the CT goes to ``ct`` and the network input to ``image``.

Lung mask and atlas registration are one transform (:class:`LungAtlasd`): the registration is
fitted to the lung mask on the anatomy pipeline's working grid, and the app's scan store keeps
both as one entry per scan.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from drasclr_monailabel.anatomy.atlas import Atlas, load_atlas, load_default_atlas
from drasclr_monailabel.anatomy.scan_store import ScanStore
from drasclr_monailabel.emphysema import quantify
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.segmentation.case import PreparedCase, prepare_case
from drasclr_monailabel.segmentation.inference import (EMPHYSEMA_THRESHOLD, WINDOW, background_outside_lungs, native_labels,
                                                       window_probabilities)
from drasclr_monailabel.utils.atomic import write_with


class ReadCTd(MapTransform):
    """CT file path (NIfTI, NRRD, MHA, DICOM series folder) under ``keys`` -> :class:`CTVolume`
    under ``volume_key`` (default: the same key), through the package's validated reader (a bad
    file raises one clear error naming it)."""

    def __init__(self, keys: str = "image", volume_key: str | None = None) -> None:
        super().__init__(keys)
        self.volume_key = volume_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.volume_key or key] = read_ct(str(d[key]))
        return d


class LungAtlasd(MapTransform):
    """Lung mask and affine registration to the atlas: ``image`` (CTVolume) -> ``case``
    (PreparedCase on the 1 mm lung grid with the atlas coordinate map).

    Args:
        atlas: atlas folder (default: the shipped one; it must be the encoder's).
        scans: the app's scan store (prepared scans kept per file and content), or None.
        atlas_id: the atlas the model's coordinates refer to (a bundle records it); another
            atlas is refused, since its coordinates would route the encoder wrongly.

    Raises:
        InputError: the atlas is not ``atlas_id``.
    """

    def __init__(self, image_key: str = "image", case_key: str = "case", atlas: str | Path | None = None,
                 scans: ScanStore | None = None, atlas_id: str | None = None) -> None:
        super().__init__(image_key)
        self.image_key, self.case_key = image_key, case_key
        self.atlas: Atlas = load_atlas(atlas) if atlas is not None else load_default_atlas()
        if atlas_id is not None and self.atlas.atlas_id != atlas_id:
            raise InputError(atlas or "the shipped atlas", f"is atlas {self.atlas.atlas_id}, but the model was made for "
                                                           f"{atlas_id}; install the package version the model came from")
        self.scans = scans

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.case_key] = prepare_case(d[self.image_key], atlas=self.atlas, scans=self.scans)
        return d


class IntensityWindowd(MapTransform):
    """``case`` -> ``input``: float32 tensor (1, Z, Y, X), the 1 mm grid's CT in network units
    (lung window [-1024, 240] HU onto [-1, 1], what the encoder was pretrained with)."""

    def __init__(self, case_key: str = "case", input_key: str = "input") -> None:
        super().__init__(case_key)
        self.case_key, self.input_key = case_key, input_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.input_key] = LUNG_WINDOW(torch.from_numpy(d[self.case_key].scan.image))[None]
        return d


class AtlasCoordinatesd(MapTransform):
    """Append the three normalised atlas coordinates (x, y, z) of every voxel of the 1 mm grid to
    ``input``: (1, Z, Y, X) -> (4, Z, Y, X), the network's input (they route its encoder)."""

    def __init__(self, case_key: str = "case", input_key: str = "input") -> None:
        super().__init__(case_key)
        self.case_key, self.input_key = case_key, input_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        coordinates = torch.from_numpy(d[self.case_key].coordinates)
        d[self.input_key] = torch.cat([d[self.input_key], coordinates.to(d[self.input_key].dtype)])
        return d


class LungWindowInferd(MapTransform):
    """The app's inference step: ``case`` -> ``pred``, softmax probabilities (C, Z, Y, X) on the
    1 mm grid from sliding 64^3 windows that run only where there is lung (no whole-grid network
    input is built; :func:`~drasclr_monailabel.segmentation.inference.window_probabilities`).
    A bundle uses MONAI's ``SlidingWindowInferer`` on ``input`` instead (same windows, blending
    and padding)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", overlap: float = 0.25,
                 precision: torch.dtype = torch.float32, case_key: str = "case", pred_key: str = "pred") -> None:
        super().__init__(case_key)
        self.model, self.device, self.overlap, self.precision = model, device, overlap, precision
        self.case_key, self.pred_key = case_key, pred_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.pred_key] = window_probabilities(self.model, d[self.case_key], self.device, mc_dropout=False, window=WINDOW,
                                                overlap=self.overlap, batch_size=None, precision=self.precision)
        return d


class LungBackgroundd(MapTransform):
    """``pred`` probabilities (C, Z, Y, X) on the 1 mm grid become background outside the case's
    lungs (numpy float array; a tensor is moved to the CPU first)."""

    def __init__(self, pred_key: str = "pred", case_key: str = "case") -> None:
        super().__init__(pred_key)
        self.pred_key, self.case_key = pred_key, case_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        probabilities = d[self.pred_key]
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.detach().float().cpu().numpy()
        probabilities = np.array(probabilities[0] if probabilities.ndim == 5 else probabilities)  # batch of one
        background_outside_lungs(probabilities, d[self.case_key].lungs)
        d[self.pred_key] = probabilities
        return d


class ToInputGridd(MapTransform):
    """``pred`` probabilities (C, Z, Y, X) on the 1 mm grid -> uint8 class labels (Z, Y, X) on the
    scan's own grid (linear resampling of the probabilities, then emphysema where its probability
    is above ``threshold``; background outside the lung mask), what 3D Slicer overlays on the scan."""

    def __init__(self, pred_key: str = "pred", case_key: str = "case", image_key: str = "image",
                 threshold: float = EMPHYSEMA_THRESHOLD) -> None:
        super().__init__(pred_key)
        self.pred_key, self.case_key, self.image_key, self.threshold = pred_key, case_key, image_key, threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[self.pred_key] = native_labels(np.asarray(d[self.pred_key]), d[self.case_key], d[self.image_key], self.threshold)
        return d


class Quantifyd(MapTransform):
    """``quantification`` from the scan (``image``), its lung mask (``case``) and the predicted
    labels on its grid (``pred``): %LAA-950, Perc15 and volumes per lung and zone, inside the lungs
    and inside the predicted emphysema; also written to ``pred_meta_dict``."""

    def __init__(self, pred_key: str = "pred", case_key: str = "case", image_key: str = "image",
                 output_key: str = "quantification") -> None:
        super().__init__(pred_key)
        self.pred_key, self.case_key, self.image_key, self.output_key = pred_key, case_key, image_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        case: PreparedCase = d[self.case_key]
        report = quantify(d[self.image_key], case.lungs_native, emphysema_mask=d[self.pred_key] > 0).to_dict()
        d[self.output_key] = report
        d.setdefault(f"{self.pred_key}_meta_dict", {})[self.output_key] = report
        return d


class ToMonaiLayoutd(MapTransform):
    """``pred`` uint8 labels (Z, Y, X) on the scan's grid -> MetaTensor (1, X, Y, Z) with the scan's
    RAS affine (MONAI's layout, what ``SaveImaged`` and MONAI Label's ``Restored`` and writer read).

    MONAI Label's bundle task restores ``pred`` to the shape in ``image_meta_dict`` and writes it
    with the affine there, and answers with ``result``: both are set here (the scan's affine and
    (X, Y, Z) shape; ``{"quantification": ...}`` as the app answers).
    """

    def __init__(self, pred_key: str = "pred", image_key: str = "image", quantification_key: str = "quantification",
                 meta_key: str = "image_meta_dict", result_key: str = "result") -> None:
        super().__init__(pred_key)
        self.pred_key, self.image_key, self.quantification_key = pred_key, image_key, quantification_key
        self.meta_key, self.result_key = meta_key, result_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volume: CTVolume = d[self.image_key]
        affine = ras_affine(volume)
        labels = np.ascontiguousarray(np.asarray(d[self.pred_key], dtype=np.uint8).transpose(2, 1, 0))[None]
        d[self.pred_key] = MetaTensor(torch.from_numpy(labels), affine=affine, meta={"filename_or_obj": volume.source})
        d[self.meta_key] = {"affine": affine, "original_affine": affine, "spatial_shape": np.array(labels.shape[1:]),
                            "filename_or_obj": volume.source}
        d[self.result_key] = {"quantification": d[self.quantification_key]}
        return d


def ras_affine(volume: CTVolume) -> torch.Tensor:
    """float64 (4, 4): voxel index (x, y, z) -> RAS world mm, MONAI's convention (ITK's LPS with x
    and y negated)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3) * np.asarray(volume.spacing, dtype=np.float64)
    lps[:3, 3] = volume.origin
    return torch.from_numpy(np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)


class SaveLabeld(MapTransform):
    """Write ``pred`` (labels on the scan's grid in MONAI's layout, (1, X, Y, Z), from
    :class:`ToMonaiLayoutd`) as ``<output_dir>/<scan name>_seg.nii.gz``
    with the scan's exact geometry, whole (temporary file, then rename); the path goes to
    ``pred_meta_dict["saved_to"]``."""

    def __init__(self, output_dir: str | Path, pred_key: str = "pred", image_key: str = "image",
                 suffix: str = "_seg.nii.gz") -> None:
        super().__init__(pred_key)
        self.output_dir, self.pred_key, self.image_key, self.suffix = Path(output_dir), pred_key, image_key, suffix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volume: CTVolume = d[self.image_key]
        name = Path(volume.source.rstrip("/")).name.split(".")[0] or "scan"
        target = self.output_dir / f"{name}{self.suffix}"
        labels = np.asarray(d[self.pred_key], dtype=np.uint8)[0].transpose(2, 1, 0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(labels))
        image.SetSpacing(volume.spacing)
        image.SetOrigin(volume.origin)
        image.SetDirection(volume.direction)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_with(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))
        d.setdefault(f"{self.pred_key}_meta_dict", {})["saved_to"] = str(target)
        return d
