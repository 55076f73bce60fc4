"""Whole-CT emphysema prediction: prepare, sliding windows on the 1 mm lung grid, map back.

The scan is brought to the anatomy pipeline's 1 mm lung-cropped grid (the resolution the encoder
was pretrained at) with atlas-coordinate channels, windows are run with MONAI's sliding-window
inferer (Gaussian blending), probabilities outside the lung are set to background, and the
probabilities are resampled (linear) onto the input's own grid before the arg-max, so the label
map has exactly the input's geometry. No array of the whole grid holds the network input: each
window is built from the int16 image and the atlas coordinate map when it runs.

Only windows that contain lung run the network (:class:`LungWindowPredictor`): the others could
only change voxels outside the lung, which become background anyway, so skipping them is exact
and saves the corners of the lung's bounding box (a fifth of the windows on a real chest CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from drasclr_monailabel.anatomy.grid import make_grid
from drasclr_monailabel.emphysema import quantify
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.segmentation.case import PreparedCase, network_window, prepare_case
from drasclr_monailabel.segmentation.network import EmphysemaUNet
from drasclr_monailabel.segmentation.precision import network_precision

BLEND_DTYPE = torch.float16
"""dtype of MONAI's sliding-window input, and so of its blended logits and count map, and of the
probabilities on the 1 mm grid: half the memory of float32 (on a full chest CT 0.28 GB less at the
window stage's peak). The network runs in float32 or, where asked, bfloat16 (:mod:`.precision`);
probabilities keep three significant digits."""

WINDOW = 64
"""Default inference window edge (1 mm voxels): eight 32^3 routing blocks, each routed as a 32^3
fine-tuning patch there is. On held-out real-CT scans (benchmarks/window_condition.py) the larger
window's context scored 0.042 (scratch) and 0.019 (pretrained) Dice above 32^3 windows, which
take half the time; per-block routing scored the same as one location per 64^3 window (within
0.001) at 1.1x its time."""

EMPHYSEMA_THRESHOLD = 0.5
"""Emphysema probability above which a voxel is labelled emphysema: the arg-max with one
foreground class."""


@dataclass(frozen=True)
class Prediction:
    """Result of :func:`predict_volume`, every array in the input volume's grid.

    Attributes:
        labels: uint8 (Z, Y, X) class indices (0 background).
        lungs: uint8 (Z, Y, X) lung mask used (0 / 1 right / 2 left).
        report: quantification (%LAA, Perc15, volumes per region) inside the lungs and the
            predicted emphysema, JSON-ready.
    """

    labels: np.ndarray
    lungs: np.ndarray
    report: dict[str, Any]


def predict_volume(
    model: EmphysemaUNet,
    volume: CTVolume,
    device: str | torch.device = "cpu",
    mc_dropout: bool = False,
    window: int = WINDOW,
    overlap: float = 0.25,
    batch_size: int | None = None,
    case: PreparedCase | None = None,
    precision: torch.dtype = torch.float32,
) -> Prediction:
    """Segment emphysema in one CT.

    Args:
        model: the segmentation network (its mode is restored afterwards).
        volume: the scan, any orientation and spacing.
        device: where the windows run.
        mc_dropout: keep the decoder's dropout active (one stochastic sample, for uncertainty).
        window: cubic window edge in voxels (1 mm); a multiple of the model's routing block
            (recorded in its checkpoint), so every block is routed as in fine-tuning.
        overlap: fraction of overlap between neighbouring windows.
        batch_size: windows per forward pass; default :func:`windows_per_pass`.
        case: an already prepared case (skips lung mask and registration).
        precision: the network's dtype (float32, or bfloat16 by autocast; see :mod:`.precision`).

    Raises:
        NoLungsError / InputError: from the anatomy pipeline.
    """
    case = case or prepare_case(volume)
    probabilities = window_probabilities(model, case, device, mc_dropout, window, overlap, batch_size, precision)
    labels = native_labels(probabilities, case, volume)
    del probabilities
    report = quantify(volume, case.lungs_native, emphysema_mask=labels > 0).to_dict()
    return Prediction(labels=labels, lungs=case.lungs_native, report=report)


def native_labels(probabilities: np.ndarray, case: PreparedCase, volume: CTVolume,
                  threshold: float = EMPHYSEMA_THRESHOLD) -> np.ndarray:
    """uint8 (Z, Y, X) class labels on ``volume``'s own grid from (C, z, y, x) probabilities on the
    case's 1 mm grid (:func:`labels_on_grid` at ``threshold``), background outside the case's lung
    mask on that grid."""
    labels = labels_on_grid(probabilities, case.grid, volume, threshold=threshold)
    labels[case.lungs_native == 0] = 0
    return labels


def window_probabilities(
    model: EmphysemaUNet,
    case: PreparedCase,
    device: str | torch.device,
    mc_dropout: bool,
    window: int,
    overlap: float,
    batch_size: int | None,
    precision: torch.dtype = torch.float32,
) -> np.ndarray:
    """Softmax probabilities (C, Z, Y, X) on the case's 1 mm grid, :data:`BLEND_DTYPE`; background
    outside the lung.

    ``window``, ``batch_size`` and ``precision`` as in :func:`predict_volume` (batch None:
    :func:`windows_per_pass`).

    Raises:
        ValueError: a window that is not made of whole routing blocks of the model.
    """
    if window % model.divisor:
        raise ValueError(f"window {window} must be a multiple of {model.divisor}, the model's routing block "
                         "(recorded in its checkpoint)")
    batch_size = batch_size or windows_per_pass(window)
    was_training = model.training
    model.eval()
    if mc_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout3d):
                module.train()
    try:
        predictor = LungWindowPredictor(model, case, window, precision)
        logits = lung_window_logits(predictor, case, window, overlap, batch_size, device)
    finally:
        model.train(was_training)
    probabilities = _softmax_in_place(logits[0]).cpu().numpy()
    background_outside_lungs(probabilities, case.lungs)
    return probabilities


def background_outside_lungs(probabilities: np.ndarray, lungs: np.ndarray) -> None:
    """Make (C, Z, Y, X) class probabilities background (class 0) where ``lungs`` is 0, in place.

    Masked copies rather than boolean indexing, which builds int64 index arrays of every voxel
    outside the lungs (about 0.3 GB on a full chest CT's 1 mm grid).
    """
    outside = lungs == 0
    for index, channel in enumerate(probabilities):
        np.copyto(channel, 1.0 if index == 0 else 0.0, where=outside)


def _softmax_in_place(logits: torch.Tensor, slab: int = 16) -> torch.Tensor:
    """Softmax over the class axis of (C, Z, Y, X) logits, overwriting them ``slab`` z-slices at a
    time (computed in float32, stored in the logits' dtype): no second array of the whole grid."""
    with torch.inference_mode():  # MONAI's output is an inference tensor
        for start in range(0, logits.shape[1], slab):
            part = logits[:, start:start + slab]
            part.copy_(torch.softmax(part.float(), dim=0))
    return logits


def class_labels(probabilities: np.ndarray, threshold: float = EMPHYSEMA_THRESHOLD) -> np.ndarray:
    """uint8 (Z, Y, X) labels from (C, Z, Y, X) class probabilities (class 0 background), emphysema
    first: a voxel is emphysema where its emphysema probability (one minus the background's) is
    above ``threshold``, and then gets its most probable foreground class (the first on ties).

    Why not the arg-max over all classes: a model that finds a lesion but is unsure of its subtype
    splits the lesion's probability between subtypes, and background then wins the arg-max (a
    scratch model on realistic subtype cohorts had P(background) < 0.5 on 15 % of the lung and an
    arg-max of background everywhere: docs/segmentation.md). With one foreground class this is the
    arg-max. No int64 index array is made (0.28 GB on a 512^2 x 133 scan).
    """
    labels = np.ones(probabilities.shape[1:], dtype=np.uint8)
    best = probabilities[1].copy()
    for index in range(2, len(probabilities)):
        higher = probabilities[index] > best
        labels[higher] = index
        np.copyto(best, probabilities[index], where=higher)
    labels[probabilities[0] >= 1.0 - threshold] = 0
    return labels


def windows_per_pass(window: int) -> int:
    """Windows per forward pass: two 64^3 windows' worth of voxels (2 at 64^3, 16 at 32^3).

    On a CPU a pass of one 64^3 window is slow (PyTorch runs small 3D convolutions of a batch of
    one with its reference kernel instead of oneDNN); 32^3 windows took 26, 17, 15 and 14 s per
    real CT at 2, 4, 8 and 16 per pass, 1 thread (docs/segmentation.md).
    """
    return max(1, 2 * 64**3 // window**3)


def lung_window_logits(
    predictor: LungWindowPredictor,
    case: PreparedCase,
    window: int,
    overlap: float,
    batch_size: int,
    device: str | torch.device,
) -> torch.Tensor:
    """MONAI's sliding-window inference (Gaussian blending, replicate padding) over the case's
    1 mm grid: (1, C, Z, Y, X) logits.

    MONAI slides over the lung mask alone (0/1 in :data:`BLEND_DTYPE`), the one whole-grid input array; the
    predictor builds each window's network input from the case (``with_coord``).
    """
    lungs = torch.from_numpy(case.lungs > 0).to(BLEND_DTYPE)[None, None].to(device)
    with torch.inference_mode():
        return sliding_window_inference(lungs, roi_size=(window,) * 3, sw_batch_size=batch_size, predictor=predictor,
                                        overlap=overlap, mode="gaussian", padding_mode="replicate", with_coord=True)


class LungWindowPredictor:
    """Sliding-window predictor that runs ``model`` only on windows with lung in them.

    Called by MONAI with the lung mask's windows ``(B, 1, D, H, W)`` and their slices of the
    padded grid (``with_coord``). For windows with lung it builds the network input, CT and atlas
    coordinates (:func:`~drasclr_monailabel.segmentation.case.network_window`), from the case's
    int16 image and coordinate map, padding as MONAI pads (centred, replicate) where the grid is
    smaller than the window. Windows without lung get zero logits; they cover no lung voxel, so
    blending never mixes them into a voxel whose class is kept. The network runs in ``precision``.
    """

    def __init__(self, model: EmphysemaUNet, case: PreparedCase, window: int,
                 precision: torch.dtype = torch.float32) -> None:
        self.model = model
        self.case = case
        self.precision = precision
        self.pad_before = [max(window - n, 0) // 2 for n in case.lungs.shape]
        self.windows = 0
        self.skipped = 0

    def __call__(self, lung_windows: torch.Tensor, slices: list[list[slice]]) -> torch.Tensor:
        has_lung = lung_windows.flatten(1).amax(dim=1) > 0
        self.windows += len(lung_windows)
        self.skipped += int((~has_lung).sum())
        logits = lung_windows.new_zeros((len(lung_windows), self.model.num_classes, *lung_windows.shape[2:]))
        if has_lung.any():
            inputs = np.stack([network_window(self.case, *self._indices(spatial[2:]))
                               for spatial, keep in zip(slices, has_lung.tolist()) if keep])
            with network_precision(self.precision, lung_windows.device):
                logits[has_lung] = self.model(torch.from_numpy(inputs).to(lung_windows.device)).to(logits.dtype)
        return logits

    def _indices(self, spatial: list[slice]) -> list[np.ndarray]:
        """Index vectors (z, y, x) into the case's grid of one window's slices of MONAI's padded grid."""
        return [np.arange(s.start, s.stop) - pad for s, pad in zip(spatial, self.pad_before)]


def labels_on_grid(probabilities: np.ndarray, grid: sitk.Image, volume: CTVolume, slab: int = 16,
                   threshold: float = EMPHYSEMA_THRESHOLD) -> np.ndarray:
    """uint8 (Z, Y, X) class labels on the volume's own grid: :func:`class_labels` (at ``threshold``)
    of the class maps (C, z, y, x) on ``grid`` resampled linearly; outside ``grid`` background.

    Only the foreground classes are resampled; background is one minus their sum, exactly what
    resampling it would give (the interpolation weights are the same for every channel and the
    channels sum to one), at 1/C less of the slowest step after the windows. The volume's grid is
    filled ``slab`` slices at a time, so its float32 class maps (0.28 GB for two classes on a
    512^2 x 133 scan) never exist at once. Only the box of the grid where a foreground class has
    probability above 0 (plus two voxels) is resampled: outside it every interpolation reads
    zeros, so the labels are the same, from float32 copies of about half the grid (the grid keeps
    a margin around the lungs, where the probabilities are background).
    """
    box = _foreground_box(probabilities, margin=2)
    if box is None:
        return np.zeros(volume.hu.shape, dtype=np.uint8)
    corner = grid.TransformIndexToPhysicalPoint(tuple(int(axis.start) for axis in box[::-1]))
    foreground = []
    for index in range(1, len(probabilities)):
        image = sitk.GetImageFromArray(probabilities[index][box].astype(np.float32))
        image.SetSpacing(grid.GetSpacing())
        image.SetDirection(grid.GetDirection())
        image.SetOrigin(corner)
        foreground.append(image)
    nz = volume.hu.shape[0]
    labels = np.empty(volume.hu.shape, dtype=np.uint8)
    native = make_grid(volume.origin, volume.shape_xyz, volume.spacing, volume.direction)
    for start in range(0, nz, slab):
        depth = min(slab, nz - start)
        reference = make_grid(native.TransformIndexToPhysicalPoint((0, 0, start)), (*volume.shape_xyz[:2], depth),
                              volume.spacing, volume.direction)
        slab_probabilities = np.empty((len(probabilities), depth, *volume.hu.shape[1:]), dtype=np.float32)
        for index, image in enumerate(foreground, start=1):
            channel = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            slab_probabilities[index] = sitk.GetArrayViewFromImage(channel)
        np.subtract(1.0, slab_probabilities[1:].sum(axis=0), out=slab_probabilities[0])
        np.clip(slab_probabilities[0], 0.0, 1.0, out=slab_probabilities[0])  # float rounding of the sum
        labels[start:start + depth] = class_labels(slab_probabilities, threshold)
    return labels


def _foreground_box(probabilities: np.ndarray, margin: int) -> tuple[slice, slice, slice] | None:
    """(z, y, x) slices of the smallest box holding every voxel where a foreground class of the
    (C, Z, Y, X) probabilities is above 0, widened by ``margin`` voxels within the grid; None if none."""
    support = np.zeros(probabilities.shape[1:], dtype=bool)
    for channel in probabilities[1:]:
        support |= channel > 0
    box = []
    for axis in range(3):
        present = np.flatnonzero(support.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(present) == 0:
            return None
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + 1 + margin, support.shape[axis])))
    return tuple(box)
