"""Patient-level DrasCLR embedding: the mean of the encoder's landmark embeddings over the lung.

A scan goes through the anatomy pipeline (lung mask, affine registration to the atlas, 1 mm grid,
landmarks). Each valid landmark's 32^3 patch (docs/formats.md: centre at index 16, padded with
-1024 HU) is put in network units and encoded with that landmark's normalised atlas coordinate as
its location, exactly as in pretraining. The patient embedding is the mean over valid landmarks
(mean pooling, as in the DrasCLR predecessor work). Because every patient has the same landmarks,
two embeddings compare the same anatomical places; a partial scan averages the landmarks it
covers.

On a CPU each patch costs tens of milliseconds, so ``max_landmarks`` caps how many are encoded:
the landmarks are ranked once by farthest-point order in atlas coordinates (the same ranking for
every patient), and the first ``max_landmarks`` valid ones in that order are used. Scans that
cover the whole lung therefore use the same, evenly spread landmarks.

:func:`landmark_embeddings` works on arrays (an in-memory scan or a preprocessing cache entry), so
a cohort-level ``drasclr embed`` can reuse it on the cache; :func:`patient_embedding` runs the
whole chain on one CT (the MONAI Label app's ``embedding`` scoring method).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from drasclr_monailabel.anatomy.atlas import Atlas, load_default_atlas
from drasclr_monailabel.anatomy.landmarks import PATCH_SIZE
from drasclr_monailabel.anatomy.pipeline import preprocess_volume
from drasclr_monailabel.anatomy.scan_store import ScanStore
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.export import load_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.patches import read_crop

BATCH_SIZE = 32


@dataclass
class PatientEncoder:
    """An exported encoder ready for embedding, with the atlas its locations refer to.

    Attributes:
        encoder: the DrasCLR encoder in eval mode.
        atlas: the atlas the encoder was pretrained with (its id is checked on load).
        metadata: ``encoder.json``.
    """

    encoder: nn.Module
    atlas: Atlas
    metadata: dict[str, Any]

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    @cached_property
    def landmark_order(self) -> np.ndarray:
        """Atlas landmarks in farthest-point order of their normalised coordinates."""
        return farthest_point_order(self.atlas.landmarks.normalised)


def load_patient_encoder(path: str | Path, device: str | torch.device = "cpu", atlas: Atlas | None = None) -> PatientEncoder:
    """Load an exported encoder for ``atlas`` (default: the package's) and the lung intensity window.

    Raises:
        InputError: missing or malformed export, or one made for another atlas or window.
    """
    atlas = atlas or load_default_atlas()
    encoder, metadata = load_encoder(path, expected_atlas_id=atlas.atlas_id, expected_intensity=LUNG_WINDOW, map_location=device)
    return PatientEncoder(encoder.to(device).eval(), atlas, metadata)


def landmark_embeddings(image: np.ndarray, landmarks: np.ndarray, valid: np.ndarray, coordinates: np.ndarray,
                        encoder: nn.Module, device: str | torch.device = "cpu", batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Encoder output ``h`` of every valid landmark patch.

    Args:
        image: int16 (Z, Y, X) HU on the 1 mm grid.
        landmarks: int (L, 3) patch centres (z, y, x) into ``image``.
        valid: bool (L,) landmarks to encode.
        coordinates: float (L, 3) normalised atlas coordinates (x, y, z), the encoder's locations.
        encoder: a DrasCLR encoder (``forward(x, location)``, one location per sample).
        batch_size: patches per forward pass.

    Returns:
        float32 (V, D), one row per valid landmark in landmark order.
    """
    rows = np.flatnonzero(valid)
    outputs = []
    buffer = np.empty((min(batch_size, max(len(rows), 1)), PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), dtype=image.dtype)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            for slot, row in enumerate(batch):
                read_crop(image, landmarks[row], PATCH_SIZE, out=buffer[slot])
            patches = LUNG_WINDOW(torch.from_numpy(buffer[: len(batch)])).unsqueeze(1).to(device)
            location = torch.as_tensor(coordinates[batch], dtype=torch.float32, device=device)
            outputs.append(encoder(patches, location).float().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def farthest_point_order(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` (N, 3) in farthest-point order, starting from the first point.

    Every prefix of the order is spread evenly over the point set (each next point is the one
    farthest from all earlier ones).
    """
    order = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    for _ in range(len(points) - 1):
        pick = int(np.argmax(distance))
        order.append(pick)
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
    return np.asarray(order)


def select_landmarks(valid: np.ndarray, order: np.ndarray, max_landmarks: int | None) -> np.ndarray:
    """bool (L,): the first ``max_landmarks`` valid landmarks in ``order`` (all valid ones if None or 0)."""
    if not max_landmarks:
        return valid.copy()
    chosen = order[valid[order]][:max_landmarks]
    selected = np.zeros_like(valid)
    selected[chosen] = True
    return selected


def patient_embedding(volume: CTVolume, patient_encoder: PatientEncoder, device: str | torch.device = "cpu",
                      max_landmarks: int | None = None, batch_size: int = BATCH_SIZE,
                      scans: ScanStore | None = None) -> np.ndarray:
    """The patient-level embedding (D,) float32 of one CT.

    Args:
        max_landmarks: encode at most this many valid landmarks (evenly spread); None = all.
        scans: where the anatomy pipeline's result is looked up and kept; None preprocesses.

    Raises:
        NoLungsError / InputError: from the anatomy pipeline, or no atlas landmark in the scanned lung.
    """
    scan = scans.preprocess(volume, patient_encoder.atlas) if scans is not None else preprocess_volume(volume, patient_encoder.atlas)
    if not scan.valid.any():
        raise InputError(volume.source or "<volume>", "no atlas landmark lies in the scanned lung; it cannot be embedded")
    coordinates = patient_encoder.atlas.landmarks.normalised.astype(np.float32)
    selected = select_landmarks(scan.valid, patient_encoder.landmark_order, max_landmarks)
    embeddings = landmark_embeddings(scan.image, scan.landmarks, selected, coordinates, patient_encoder.encoder, device, batch_size)
    return embeddings.mean(axis=0).astype(np.float32)
