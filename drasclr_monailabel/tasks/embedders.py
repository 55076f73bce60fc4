"""Patient-level embedders behind the app's ``embedding`` scoring (and so ``diversity`` and ``hybrid``).

``--conf pretrained`` may name either kind of exported encoder; :func:`patient_embedder` reads its
``encoder.json`` and picks:

- DrasCLR (:class:`PatientEmbedder`): the scan is lung-masked and registered to the atlas, and the
  vector is the mean of the encoder's outputs at (a spread subset of) its landmarks;
- joint2d3d (:class:`VolumeEmbedder`): the scan becomes a slice stack (body crop, lung window),
  and the vector is the volume transformer's embedding of evenly spaced slices. No lung mask and
  no registration: scans that fail registration (partial coverage, other anatomy) still get one.

Both are loaded on first use (the server starts fast) and carry a ``key`` that names the encoder
and settings, so the embedding cache is invalidated when either changes.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from drasclr_monailabel.io.volume import CTVolume
from drasclr_monailabel.models.export import read_metadata
from drasclr_monailabel.tasks.conf import ResolvedConf
from drasclr_monailabel.utils.fingerprint import file_sha256
from drasclr_monailabel.utils.torch_thread import run_on_torch_thread

JOINT_METHOD = "joint2d3d"


def encoder_method(folder: Path) -> str:
    """The ``method`` of the exported encoder in ``folder`` (``drasclr`` when the file predates the key)."""
    return str(read_metadata(folder).get("method", "drasclr"))


class PatientEmbedder:
    """``volume -> (D,)``: mean of DrasCLR landmark embeddings (registration to the encoder's atlas).
    Encoder loading and embedding run on the process's PyTorch thread (utils.torch_thread)."""

    description = "DrasCLR patient embeddings (mean over atlas landmarks)"

    def __init__(self, resolved: ResolvedConf) -> None:
        assert resolved.pretrained is not None
        self.folder = resolved.pretrained
        self.device = resolved.device
        self.max_landmarks = resolved.conf.embedding_landmarks or None
        self.scans = resolved.scan_store()
        self.key = f"{file_sha256(self.folder / 'encoder.pt')}-{self.max_landmarks or 'all'}"

    @cached_property
    def _encoder(self):
        from drasclr_monailabel.embed.patient import load_patient_encoder

        return load_patient_encoder(self.folder, self.device)

    def __call__(self, volume: CTVolume) -> np.ndarray:
        from drasclr_monailabel.embed.patient import patient_embedding

        return run_on_torch_thread(
            lambda: patient_embedding(volume, self._encoder, self.device, self.max_landmarks, scans=self.scans))


class VolumeEmbedder:
    """``volume -> (d,)``: the joint2d3d volume embedding (slices prepared as in training, no registration)."""

    description = "joint2d3d volume embeddings (slice encoder + volume transformer, no registration)"

    def __init__(self, resolved: ResolvedConf) -> None:
        assert resolved.pretrained is not None
        self.folder = resolved.pretrained
        self.device = resolved.device
        self.key = f"{file_sha256(self.folder / 'encoder.pt')}-volume"

    @cached_property
    def _embedder(self):
        from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder

        return JointEmbedder.from_dir(self.folder, device=self.device)

    def __call__(self, volume: CTVolume) -> np.ndarray:
        from drasclr_monailabel.ssl.joint2d3d.embed import embed_volume

        return run_on_torch_thread(lambda: embed_volume(self._embedder, volume)[1])


def patient_embedder(resolved: ResolvedConf) -> PatientEmbedder | VolumeEmbedder:
    """The embedder for the pretrained encoder of ``resolved`` (which must be set)."""
    assert resolved.pretrained is not None
    return VolumeEmbedder(resolved) if encoder_method(resolved.pretrained) == JOINT_METHOD else PatientEmbedder(resolved)
