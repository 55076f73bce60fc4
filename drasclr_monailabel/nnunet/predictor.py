"""Segment a CT in-process with a trained nnU-Net model folder (nnU-Net's own ``nnUNetPredictor``).

The scan goes through the same preparation as ``drasclr export-nnunet`` (lung mask, atlas
registration, the lung-cropped grid of the dataset, coordinate channels when the dataset has
them); nnU-Net preprocesses, predicts with sliding windows and returns class probabilities on that
grid; they are resampled (linear) onto the scan's own grid, arg-maxed, limited to the lungs and
quantified exactly like the native emphysema model's prediction
(:func:`~drasclr_monailabel.segmentation.inference.predict_volume`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.anatomy.scan_store import ScanStore
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.nnunet.dataset import DRASCLR_KEY, dataset_label_names
from drasclr_monailabel.nnunet.environment import use_drasclr_trainers
from drasclr_monailabel.nnunet.lung_grid import lung_grid_case
from drasclr_monailabel.segmentation.inference import Prediction, background_outside_lungs

CHECKPOINT = "checkpoint_final.pth"


class NnunetEmphysemaModel:
    """A trained nnU-Net model folder (``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<config>``).

    Args:
        folder: the model folder (holds dataset.json, plans.json and fold_N/ checkpoints).
        device: ``"cpu"`` or ``"cuda"``.
        folds: folds to ensemble; None takes every fold that has the checkpoint.
        checkpoint: checkpoint file name in each fold folder.
        tile_step_size: sliding-window step as a fraction of the patch (nnU-Net's 0.5 default).
        atlas: the atlas of the dataset's coordinate channels (default: the shipped one).

    Raises:
        InputError: not a model folder, no checkpoint, a dataset not exported by drasclr, or
            coordinates of another atlas than ``atlas``.
    """

    def __init__(self, folder: str | Path, device: str = "cpu", folds: Sequence[int | str] | None = None,
                 checkpoint: str = CHECKPOINT, tile_step_size: float = 0.5, atlas: Atlas | None = None) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = Path(folder)
        self.dataset_json = _read_json(self.folder / "dataset.json")
        _read_json(self.folder / "plans.json")
        block = self.dataset_json.get(DRASCLR_KEY)
        if not isinstance(block, dict):
            raise InputError(self.folder / "dataset.json", "has no 'drasclr' block: the model was not trained on a "
                                                           "dataset written by drasclr export-nnunet")
        self.coordinates = bool(block.get("coordinates"))
        self.spacing_mm = int(block.get("spacing_mm", 1))
        self.atlas = atlas or load_default_atlas()
        if self.coordinates and block.get("atlas_id") != self.atlas.atlas_id:
            raise InputError(self.folder / "dataset.json", f"the model's coordinate channels refer to atlas "
                                                           f"{block.get('atlas_id')!r}, not to {self.atlas.atlas_id!r} in use")
        self.checkpoint = checkpoint
        if not any(self.folder.glob(f"fold_*/{checkpoint}")):
            raise InputError(self.folder, f"has no fold_*/{checkpoint}: train the model first")
        use_drasclr_trainers()
        self.device = torch.device(device)
        self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=True,
                                         perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                         verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(self.folder), use_folds=None if folds is None else tuple(folds),
                                                            checkpoint_name=checkpoint)
        self.trainer = self.predictor.trainer_name
        self._predicting = threading.Lock()

    @property
    def label_names(self) -> dict[str, int]:
        """Foreground ``{name: value}`` of the model's dataset (what its label maps hold)."""
        return dataset_label_names(self.dataset_json)

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the model for results and logs."""
        return {"backend": "nnunet", "folder": str(self.folder), "trainer": self.trainer,
                "folds": [p.parent.name for p in sorted(self.folder.glob(f"fold_*/{self.checkpoint}"))],
                "coordinates": self.coordinates}

    def predict(self, volume: CTVolume, scans: ScanStore | None = None) -> Prediction:
        """Segment emphysema in ``volume`` (any orientation and spacing); arrays on its grid.
        ``scans``: the app's store of preprocessed scans (None: preprocess every time)."""
        from drasclr_monailabel.emphysema import quantify

        case = lung_grid_case(volume, self.spacing_mm, self.atlas, scans=scans)
        channels = [case.hu.astype(np.float32)]
        if self.coordinates:
            channels.extend(case.coordinates.astype(np.float32))
        spacing_zyx = [float(s) for s in reversed(case.grid.GetSpacing())]
        with self._predicting:  # nnUNetPredictor loads each fold's weights into one network per call
            _, probabilities_grid = self.predictor.predict_single_npy_array(np.stack(channels), {"spacing": spacing_zyx},
                                                                            None, None, True)
        probabilities_grid = np.asarray(probabilities_grid, dtype=np.float32)
        background_outside_lungs(probabilities_grid, case.lungs)
        labels = case.native_labels(probabilities_grid, volume)
        labels[case.lungs_native == 0] = 0
        report = quantify(volume, case.lungs_native, emphysema_mask=labels > 0).to_dict()
        return Prediction(labels=labels, lungs=case.lungs_native, report=report)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, "not found: expected a trained nnU-Net model folder "
                               "(nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(path, f"cannot be read as JSON ({exc})") from None
