"""MONAI Label infer tasks: lung mask, LAA-950 pseudo-label and the fine-tuned emphysema model.

Each task reads the scan with :func:`~drasclr_monailabel.io.read_ct` (the same checks as every
other entry point), computes a label map on the scan's own grid, writes it as a NIfTI file with
the scan's exact geometry (what 3D Slicer overlays), and returns the quantification (%LAA-950,
Perc15, volumes per lung and zone) in the JSON result next to ``label_names``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.tasks.http import BAD_REQUEST, NOT_FOUND, as_http_errors, refuse
from drasclr_monailabel.tasks.labels import Grid, write_label
from drasclr_monailabel.tasks.model_store import ModelStore
from drasclr_monailabel.tasks.scoring import mc_dropout_score
from drasclr_monailabel.utils.fingerprint import file_fingerprint
from drasclr_monailabel.utils.torch_thread import run_on_torch_thread

if TYPE_CHECKING:
    from drasclr_monailabel.anatomy.scan_store import ScanStore

logger = logging.getLogger(__name__)

LUNG_LABELS = {"right_lung": 1, "left_lung": 2}
SUBTYPE_LABELS = {"centrilobular": 1, "panlobular": 2, "paraseptal": 3}


@dataclass
class Segmentation:
    """What an infer task computed for one scan.

    Attributes:
        labels: uint8 (Z, Y, X) on the scan's grid.
        report: JSON-ready quantification.
        details: further JSON-ready facts for the result (model version, warnings, ...).
    """

    labels: np.ndarray
    report: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


class LungMaskCache:
    """The last few lung masks by scan path and content, so lung, LAA and emphysema infers on the
    scan an annotator has open compute the lung mask once."""

    def __init__(self, size: int = 4) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def lungs(self, volume: CTVolume) -> np.ndarray:
        from drasclr_monailabel.anatomy.lung_mask import segment_lungs

        key = (volume.source, file_fingerprint(volume.source) or "")
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        lungs = segment_lungs(volume)
        with self._lock:
            self._items[key] = lungs
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return lungs


class VolumeInferTask(InferTask):
    """Read a CT, segment it, write the label on the CT's grid, answer with the quantification."""

    gives_emphysema_labels = True
    """Whether the result is an emphysema label map that MONAI Label may store (``save_label``)."""

    def __init__(self, labels: dict[str, int], description: str, lung_cache: LungMaskCache,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__(type=InferType.SEGMENTATION, labels=labels, dimension=3, description=description, config=config)
        self.lung_cache = lung_cache

    def is_valid(self) -> bool:
        return True

    def check_ready(self) -> None:
        """Refuse (HTTP 4xx) before any work when the task cannot run yet."""

    def segment(self, volume: CTVolume, request: dict[str, Any]) -> Segmentation:
        raise NotImplementedError

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        start = time.perf_counter()
        if request.get("save_label") and not self.gives_emphysema_labels:
            raise refuse(BAD_REQUEST, f"save_label: this model's result ({', '.join(self.labels)}) is not an emphysema "
                                      "label and cannot be stored in the datastore; infer without save_label")
        self.check_ready()
        suffix = result_suffix(request)
        image = request.get("image")
        if not isinstance(image, str) or not os.path.isfile(image):
            raise refuse(NOT_FOUND, "no readable image file for this request")
        with as_http_errors():
            volume = read_ct(image)
            read_s = time.perf_counter() - start
            segmentation = self.segment(volume, request)
        infer_s = time.perf_counter() - start - read_s
        result = _temporary_result_file(suffix)
        write_label(result, segmentation.labels, Grid(volume.shape_xyz, volume.spacing, volume.origin, volume.direction),
                    compress=str(request.get("result_compress", True)).lower() != "false")
        total_s = time.perf_counter() - start
        result_json = {
            "label_names": dict(self.labels),
            "quantification": segmentation.report,
            **segmentation.details,
            "latencies": {"read": round(read_s, 3), "infer": round(infer_s, 3),
                          "write": round(total_s - read_s - infer_s, 3), "total": round(total_s, 3)},
        }
        logger.info("%s: %s in %.1f s", type(self).__name__, Path(image).name, total_s)
        return str(result), result_json


class LungInferTask(VolumeInferTask):
    """Right and left lung mask (classical, no weights), with the lung densitometry."""

    gives_emphysema_labels = False

    def __init__(self, lung_cache: LungMaskCache) -> None:
        super().__init__(LUNG_LABELS, "Lung mask (right 1, left 2) with lung volumes and densitometry", lung_cache)

    def segment(self, volume: CTVolume, request: dict[str, Any]) -> Segmentation:
        from drasclr_monailabel.emphysema import quantify

        lungs = self.lung_cache.lungs(volume)
        return Segmentation(lungs, quantify(volume, lungs).to_dict())


class LaaInferTask(VolumeInferTask):
    """LAA-950 pseudo-label: low-attenuation clusters without noise and airways (round-zero start)."""

    def __init__(self, label_names: list[str], lung_cache: LungMaskCache) -> None:
        self.binary = len(label_names) == 1
        labels = {label_names[0]: 1} if self.binary else SUBTYPE_LABELS
        super().__init__(labels, "Emphysema pseudo-label from LAA-950 clusters (no model needed)", lung_cache)

    def segment(self, volume: CTVolume, request: dict[str, Any]) -> Segmentation:
        from drasclr_monailabel.emphysema import PseudoLabelOptions, laa_pseudo_labels, quantify

        lungs = self.lung_cache.lungs(volume)
        labels = laa_pseudo_labels(volume, lungs, PseudoLabelOptions(binary=self.binary))
        return Segmentation(labels, quantify(volume, lungs, labels).to_dict())


class EmphysemaInferTask(VolumeInferTask):
    """The fine-tuned emphysema model; offered once a first training round has published it.

    The network is loaded once per published version: when training publishes a new checkpoint
    (atomic rename), the next request loads it. ``threshold``: the emphysema probability cut-off,
    None for the one the checkpoint's training round chose on the labelled scans (0.5 for a
    checkpoint without one).
    """

    def __init__(self, label_names: list[str], store: ModelStore, device: str, lung_cache: LungMaskCache,
                 scans: ScanStore | None = None, epistemic_windows: int = 8, overlap: float = 0.25,
                 precision: str = "float32", threshold: float | None = None) -> None:
        labels = {name: value for value, name in enumerate(label_names, start=1)}
        super().__init__(labels, "Emphysema segmentation on the DrasCLR encoder, fine-tuned on your labels", lung_cache)
        self.store = store
        self.scans = scans
        self.device = device
        self.windows = epistemic_windows
        self.overlap = overlap
        self.precision = precision
        self.threshold = threshold
        self._model: Any = None
        self._meta: dict[str, Any] = {}
        self._version: str | None = None
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return self.store.exists()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.store.checkpoint) if self.store.exists() or not validate else None

    def check_ready(self) -> None:
        if not self.store.exists():
            raise refuse(NOT_FOUND, "model 'emphysema' has no trained weights yet: save a 'final' label and "
                                    "train it, or run 'emphysema_laa' for a starting segmentation")

    def model(self) -> tuple[Any, dict[str, Any], str]:
        """``(network, meta, version)`` of the published checkpoint, reloaded when it changed."""
        with self._lock:
            self.check_ready()
            version = self.store.version()
            if version != self._version:
                from drasclr_monailabel.segmentation.checkpoint import load_checkpoint

                self._model, self._meta = load_checkpoint(self.store.checkpoint, self.device)
                self._version = version
                logger.info("Loaded emphysema model %s (round %s)", version, self._meta.get("round"))
            return self._model, self._meta, version

    def segment(self, volume: CTVolume, request: dict[str, Any]) -> Segmentation:
        return run_on_torch_thread(self._segment, volume)  # one OpenMP pool per process (utils.torch_thread)

    def _segment(self, volume: CTVolume) -> Segmentation:
        """The package's MONAI transforms (the bundle's too), with the app's lung-window inference."""
        from monai.transforms import Compose

        from drasclr_monailabel.segmentation.checkpoint import network_name
        from drasclr_monailabel.segmentation.inference import EMPHYSEMA_THRESHOLD
        from drasclr_monailabel.segmentation.precision import DTYPES
        from drasclr_monailabel.segmentation.transforms import LungAtlasd, LungWindowInferd, Quantifyd, ToInputGridd

        model, meta, version = self.model()
        threshold = self.threshold if self.threshold is not None else float(meta.get("emphysema_threshold", EMPHYSEMA_THRESHOLD))
        pipeline = Compose([LungAtlasd(scans=self.scans),
                            LungWindowInferd(model, self.device, overlap=self.overlap, precision=DTYPES[self.precision]),
                            ToInputGridd(threshold=threshold), Quantifyd()])
        result = pipeline({"image": volume})
        details = {"model": {"version": version, "round": meta.get("round"), "trained_on": meta.get("trained_on"),
                             "network": network_name(meta), "pretrained": meta.get("pretrained"),
                             "precision": self.precision, "threshold": threshold}}
        return Segmentation(result["pred"], result["quantification"], details)

    def epistemic_score(self, volume: CTVolume, passes: int) -> float:
        """Mean MC-dropout mutual information in lung windows over ``passes`` stochastic passes.

        A whole-scan prediction costs minutes per pass on a CPU, so the lung average is
        estimated on :attr:`windows` windows centred on lung voxels (a fixed random draw per scan,
        so scores of one scan are comparable across models); all windows go through the
        network together, once per pass, with the decoder's dropout active. Runs on the
        process's PyTorch thread (a ``run_sync`` scoring runs inside the server).
        """
        return run_on_torch_thread(self._epistemic_score, volume, passes)

    def _epistemic_score(self, volume: CTVolume, passes: int) -> float:
        import torch

        from drasclr_monailabel.segmentation.case import prepare_case
        from drasclr_monailabel.segmentation.inference import WINDOW
        from drasclr_monailabel.segmentation.lung_windows import lung_windows, stable_seed
        from drasclr_monailabel.segmentation.precision import DTYPES, network_precision

        model, _, _ = self.model()
        case = prepare_case(volume, scans=self.scans)
        windows = lung_windows(case, self.windows, model.divisor, seed=stable_seed(volume.source), edge=WINDOW)
        batch = torch.from_numpy(windows.inputs).to(self.device)

        def sample() -> np.ndarray:
            with torch.no_grad(), mc_dropout(model), network_precision(DTYPES[self.precision], self.device):
                return torch.softmax(model(batch).float(), dim=1).cpu().numpy().swapaxes(0, 1)

        return mc_dropout_score(sample, passes, windows.lung)


@contextlib.contextmanager
def mc_dropout(model: Any) -> Iterator[None]:
    """The model in eval mode with only its dropout layers sampling (MC dropout); restored after."""
    import torch

    was_training = model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout3d)):
            module.train()
    try:
        yield
    finally:
        model.train(was_training)


RESULT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha")
"""Label file formats a client may ask for with ``result_extension`` (3D Slicer: .nii.gz or
.nrrd; OHIF: .nrrd, uncompressed, which its reader needs)."""


def result_suffix(request: dict[str, Any]) -> str:
    """The requested ``result_extension`` (default ``.nii.gz``); an unknown one is a 400."""
    suffix = request.get("result_extension") or ".nii.gz"
    if suffix not in RESULT_SUFFIXES:
        raise refuse(BAD_REQUEST, f"result_extension {suffix!r} is not one of {', '.join(RESULT_SUFFIXES)}")
    return suffix


def _temporary_result_file(suffix: str) -> Path:
    """A fresh file in the system temporary folder; MONAI Label deletes it after answering."""
    fd, name = tempfile.mkstemp(prefix="drasclr-infer-", suffix=suffix)
    os.close(fd)
    return Path(name)
