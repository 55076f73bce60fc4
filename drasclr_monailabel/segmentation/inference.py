"""Whole-CT emphysema prediction: prepare, sliding windows on the 1 mm lung grid, map back.

The scan is brought to the anatomy pipeline's 1 mm lung-cropped grid (the resolution the encoder
was pretrained at) with atlas-coordinate channels, windows are run with MONAI's sliding-window
inferer (Gaussian blending), probabilities outside the lung are set to background, and the
probabilities are resampled (linear) onto the input's own grid before the arg-max, so the label
map has exactly the input's geometry.

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

from drasclr_monailabel.emphysema import quantify
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.segmentation.case import PreparedCase, network_input, prepare_case
from drasclr_monailabel.segmentation.network import EmphysemaUNet

WINDOW = 64
"""Default inference window edge (1 mm voxels): eight 32^3 routing blocks, each routed as a 32^3
fine-tuning patch there is. On held-out real-CT scans (benchmarks/window_condition.py) the larger
window's context scored 0.042 (scratch) and 0.019 (pretrained) Dice above 32^3 windows, which
take half the time; per-block routing scored the same as one location per 64^3 window (within
0.001) at 1.1x its time."""


@dataclass(frozen=True)
class Prediction:
    """Result of :func:`predict_volume`, every array in the input volume's grid.

    Attributes:
        labels: uint8 (Z, Y, X) class indices (0 background).
        probabilities: float32 (C, Z, Y, X) class probabilities.
        lungs: uint8 (Z, Y, X) lung mask used (0 / 1 right / 2 left).
        report: quantification (%LAA, Perc15, volumes per region) inside the lungs and the
            predicted emphysema, JSON-ready.
    """

    labels: np.ndarray
    probabilities: np.ndarray
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

    Raises:
        NoLungsError / InputError: from the anatomy pipeline.
    """
    case = case or prepare_case(volume)
    probabilities_1mm = window_probabilities(model, case, device, mc_dropout, window, overlap, batch_size)
    probabilities = probabilities_on_grid(probabilities_1mm, case.grid, volume)
    labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    lungs = case.lungs_native
    labels[lungs == 0] = 0
    report = quantify(volume, lungs, emphysema_mask=labels > 0).to_dict()
    return Prediction(labels=labels, probabilities=probabilities, lungs=lungs, report=report)


def window_probabilities(
    model: EmphysemaUNet,
    case: PreparedCase,
    device: str | torch.device,
    mc_dropout: bool,
    window: int,
    overlap: float,
    batch_size: int | None,
) -> np.ndarray:
    """Softmax probabilities (C, Z, Y, X) on the case's 1 mm grid; background outside the lung.

    ``window`` and ``batch_size`` as in :func:`predict_volume` (None: :func:`windows_per_pass`).

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
    inputs = torch.from_numpy(network_input(case, lung_channel=True))[None].to(device)
    try:
        with torch.inference_mode():
            logits = sliding_window_inference(
                inputs, roi_size=(window,) * 3, sw_batch_size=batch_size, predictor=LungWindowPredictor(model),
                overlap=overlap, mode="gaussian", padding_mode="replicate",
            )
    finally:
        model.train(was_training)
    del inputs  # the whole-grid input is freed before the softmax allocates the probabilities
    probabilities = torch.softmax(logits[0].float(), dim=0).cpu().numpy()
    outside = case.lungs == 0
    probabilities[:, outside] = 0.0
    probabilities[0, outside] = 1.0
    return probabilities


def windows_per_pass(window: int) -> int:
    """Windows per forward pass: two 64^3 windows' worth of voxels (2 at 64^3, 16 at 32^3).

    On a CPU a pass of one 64^3 window is slow (PyTorch runs small 3D convolutions of a batch of
    one with its reference kernel instead of oneDNN); 32^3 windows took 26, 17, 15 and 14 s per
    real CT at 2, 4, 8 and 16 per pass, 1 thread (docs/segmentation.md).
    """
    return max(1, 2 * 64**3 // window**3)


class LungWindowPredictor:
    """Sliding-window predictor that runs ``model`` only on windows with lung in them.

    Windows are ``(B, 5, D, H, W)``: the network input (CT + atlas coordinates) and, last, the lung
    mask (0/1), carried as a channel so that MONAI's padding and cropping apply to it as well.
    Windows without lung get zero logits; they cover no lung voxel, so blending never mixes them
    into a voxel whose class is kept.
    """

    def __init__(self, model: EmphysemaUNet) -> None:
        self.model = model
        self.windows = 0
        self.skipped = 0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        has_lung = windows[:, -1].flatten(1).amax(dim=1) > 0
        self.windows += len(windows)
        self.skipped += int((~has_lung).sum())
        logits = windows.new_zeros((len(windows), self.model.num_classes, *windows.shape[2:]))
        if has_lung.any():
            logits[has_lung] = self.model(windows[has_lung, :-1]).to(logits.dtype)
        return logits


def probabilities_on_grid(probabilities: np.ndarray, grid: sitk.Image, volume: CTVolume) -> np.ndarray:
    """Linear resampling of class maps (C, Z, Y, X) from ``grid`` onto the volume's own grid;
    voxels outside ``grid`` become background (probability 1 for class 0).

    Only the foreground classes are resampled; background is one minus their sum. That is exactly
    what resampling it would give (the interpolation weights are the same for every channel and the
    channels sum to one), at 1/C less of the slowest step after the windows on a large scan.
    """
    reference = volume.to_sitk()
    resampled = np.empty((len(probabilities), *volume.hu.shape), dtype=np.float32)
    for index in range(1, len(probabilities)):
        image = sitk.GetImageFromArray(probabilities[index].astype(np.float32))
        image.CopyInformation(grid)
        channel = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        resampled[index] = sitk.GetArrayFromImage(channel)
    np.subtract(1.0, resampled[1:].sum(axis=0), out=resampled[0])
    np.clip(resampled[0], 0.0, 1.0, out=resampled[0])  # float rounding of the sum
    return resampled
