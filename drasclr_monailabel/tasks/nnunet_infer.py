"""MONAI Label infer task that serves a trained nnU-Net model folder (``--conf backend nnunet``).

The answer has the same shape as the native emphysema model's (:class:`EmphysemaInferTask`): a
label map on the scan's exact grid and ``label_names``, ``quantification`` (%LAA-950, Perc15,
volumes per lung and zone inside the lungs and the predicted emphysema), ``model`` and
``latencies`` in the JSON result. nnU-Net runs in-process through ``nnUNetPredictor``; the model
is loaded on the first request and reloaded when a checkpoint in the folder changes (a new
training run of the same folder).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.nnunet.dataset import dataset_label_names
from drasclr_monailabel.tasks.http import NOT_FOUND, refuse
from drasclr_monailabel.tasks.infer import LungMaskCache, Segmentation, VolumeInferTask
from drasclr_monailabel.utils.torch_thread import run_on_torch_thread

if TYPE_CHECKING:
    from drasclr_monailabel.anatomy.scan_store import ScanStore

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"


class NnunetInferTask(VolumeInferTask):
    """Emphysema segmentation by an nnU-Net model trained on a ``drasclr export-nnunet`` dataset.

    Args:
        model_folder: ``nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>``.
        device: ``cpu`` or ``cuda[:N]``.
        lung_cache: the app's shared lung-mask cache.
        scans: the app's store of preprocessed scans (lung mask, registration, 1 mm grid).
        folds: folds to ensemble (None: every fold with a final checkpoint).

    Raises:
        InputError: the folder has no readable dataset.json (checked at start-up, so a wrong
            ``--conf nnunet_model`` stops the server with one line).
    """

    def __init__(self, model_folder: str | Path, device: str, lung_cache: LungMaskCache,
                 scans: ScanStore | None = None, folds: list[int] | None = None) -> None:
        self.model_folder = Path(model_folder)
        dataset_json = self.model_folder / "dataset.json"
        try:
            labels = dataset_label_names(json.loads(dataset_json.read_text()))
        except (OSError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
            raise InputError(dataset_json, f"cannot be read as an nnU-Net model's dataset.json ({exc})") from None
        super().__init__(labels, f"Emphysema segmentation by the nnU-Net model in {self.model_folder.name}", lung_cache)
        self.device = device
        self.scans = scans
        self.folds = folds
        self._model: Any = None
        self._version: tuple[tuple[str, int], ...] | None = None
        self._lock = threading.Lock()

    def checkpoints(self) -> list[Path]:
        return sorted(self.model_folder.glob(f"fold_*/{CHECKPOINT}"))

    def is_valid(self) -> bool:
        return bool(self.checkpoints())

    def get_path(self, validate: bool = True) -> str | None:
        found = self.checkpoints()
        return str(found[0]) if found else None

    def model(self) -> Any:
        """The loaded :class:`~drasclr_monailabel.nnunet.predictor.NnunetEmphysemaModel`, reloaded when a checkpoint changed."""
        from drasclr_monailabel.nnunet.predictor import NnunetEmphysemaModel

        with self._lock:
            version = tuple((str(p), p.stat().st_mtime_ns) for p in self.checkpoints())
            if not version:
                raise refuse(NOT_FOUND, f"nnU-Net model folder {self.model_folder} has no fold_*/{CHECKPOINT} yet")
            if version != self._version:
                self._model = NnunetEmphysemaModel(self.model_folder, self.device, folds=self.folds)
                self._version = version
                logger.info("Loaded nnU-Net model %s (%s)", self.model_folder, ", ".join(self._model.describe()["folds"]))
            return self._model

    def segment(self, volume: CTVolume, request: dict[str, Any]) -> Segmentation:
        return run_on_torch_thread(self._segment, volume)  # one OpenMP pool per process (utils.torch_thread)

    def _segment(self, volume: CTVolume) -> Segmentation:
        model = self.model()
        prediction = model.predict(volume, scans=self.scans)
        return Segmentation(prediction.labels, prediction.report, {"model": model.describe()})
