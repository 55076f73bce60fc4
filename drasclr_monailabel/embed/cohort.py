"""Embed a cohort with an exported encoder: what ``drasclr embed`` runs (docs/embeddings.md).

Inputs are a preprocessing cache (fast: scans are already on the atlas grid) or CT files /
DICOM folders (each goes through the anatomy pipeline first for DrasCLR, or is turned into a
slice stack for joint2d3d). Each scan's embeddings are written to ``OUT/scans/<id>.npz`` as soon as
they exist, so an interrupted run resumes where it stopped; the cohort files are assembled at the
end from the per-scan files.

- DrasCLR: every valid landmark's 32^3 patch is encoded at its atlas location
  (:func:`~drasclr_monailabel.embed.patient.landmark_embeddings`), giving (L, 128) with NaN rows
  for landmarks that were not embedded; the patient vector pools them (:mod:`.pooling`).
- joint2d3d: slice embeddings (S, d) and the volume embedding (d,), which is the patient vector.

A scan that cannot be embedded (unreadable, no lungs, another atlas) is listed as a failure and
the others go on; when no scan could be embedded the first failure is raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import drasclr_monailabel
from drasclr_monailabel.anatomy.atlas import DEFAULT_ATLAS_DIR, Atlas, load_atlas
from drasclr_monailabel.anatomy.inputs import list_scans
from drasclr_monailabel.anatomy.landmarks import PATCH_SIZE
from drasclr_monailabel.embed.patient import (
    farthest_point_order,
    landmark_embeddings,
    load_patient_encoder,
    select_landmarks,
)
from drasclr_monailabel.embed.pooling import (
    ATTENTION_TEMPERATURE,
    attention_pool,
    attention_weights,
    landmark_reference,
    mean_pool,
)
from drasclr_monailabel.embed.random_init import export_random_init
from drasclr_monailabel.embed.store import (
    METADATA_NAME,
    ScanEmbedding,
    encoder_id,
    is_done,
    read_scan,
    scan_path,
    write_cohort,
    write_scan,
)
from drasclr_monailabel.errors import ConfigError, DrasclrError, InputError
from drasclr_monailabel.models.export import encoder_paths, load_encoder, read_metadata
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.ssl.cache import (
    AtlasLandmarks,
    complete_scans,
    default_atlas_dir,
    read_atlas_landmarks,
    read_cache_scan,
)

log = logging.getLogger(__name__)

METHODS = ("drasclr", "joint2d3d")
POOLINGS = ("mean", "attention")
RANDOM_INIT_DIR = "random_init_encoder"


@dataclass(frozen=True)
class ScanInput:
    """One scan to embed: a cache scan folder ``CACHE/<id>`` (``cached``) or a CT file / DICOM folder."""

    scan_id: str
    path: Path
    cached: bool


@dataclass(frozen=True)
class EmbedSettings:
    """Options of ``drasclr embed``.

    Attributes:
        method: ``drasclr`` or ``joint2d3d``; None = the encoder's (``encoder.json``).
        pooling: ``mean`` or ``attention`` (DrasCLR landmarks only).
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (a GPU when there is one).
        max_landmarks: encode at most this many valid landmarks per scan, evenly spread (0 = all).
        batch_size: patches (or slices) per forward pass.
        atlas_dir: the atlas the cache was registered to (default: the package atlas).
        random_init: embed with a copy of the encoder's architecture with random weights of
            this seed (the probe baseline; written to ``OUT/random_init_encoder/``) instead.
        progress: show a progress bar.
    """

    method: str | None = None
    pooling: str = "mean"
    device: str = "cpu"
    max_landmarks: int = 0
    batch_size: int = 32
    atlas_dir: Path | None = None
    random_init: int | None = None
    progress: bool = True


@dataclass
class EmbedReport:
    """What a run did: ``done`` (embedded now), ``skipped`` (already embedded), ``failures``."""

    done: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


def cache_inputs(cache_dir: str | Path) -> list[ScanInput]:
    """The complete scans of a preprocessing cache (those with ``<id>/<id>_qa.json``), sorted by id."""
    return [ScanInput(qa_path.parent.name, qa_path.parent, cached=True) for qa_path in complete_scans(cache_dir)]


def scan_inputs(sources: list[str | Path]) -> list[ScanInput]:
    """Scans named by CT files, DICOM folders, folders of scans or CSV manifests (column ``image``)."""
    inputs: dict[str, ScanInput] = {}
    for source in sources:
        for entry in list_scans(source):
            if entry.scan_id in inputs:
                raise InputError(entry.path, f"id {entry.scan_id!r} is also {inputs[entry.scan_id].path}; give the scans distinct ids")
            inputs[entry.scan_id] = ScanInput(entry.scan_id, entry.path, cached=False)
    return list(inputs.values())


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the GPU when there is one, else the CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("--device", f"unknown device {name!r} (cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", f"{name} was asked for but no CUDA GPU is available")
    return device


class DrasclrScanEmbedder:
    """Landmark embeddings (L, D) of one scan with a DrasCLR encoder.

    Cache scans use the atlas's landmark table, as pretraining does; CT files need the whole atlas
    (lung mask image) for the anatomy pipeline. Either way the encoder must have been trained with
    that atlas and the lung intensity window.
    """

    def __init__(self, encoder_dir: Path, settings: EmbedSettings, device: torch.device, raw_scans: bool) -> None:
        self.pipeline_atlas: Atlas | None = None
        self.landmarks: AtlasLandmarks | None = None
        if raw_scans:
            patient_encoder = load_patient_encoder(encoder_dir, device, load_atlas(settings.atlas_dir) if settings.atlas_dir else None)
            self.pipeline_atlas, self.encoder = patient_encoder.atlas, patient_encoder.encoder
            self.atlas_id = patient_encoder.atlas.atlas_id
            self.coordinates = patient_encoder.atlas.landmarks.normalised.astype(np.float32)
        else:
            self.landmarks = read_atlas_landmarks(settings.atlas_dir or default_atlas_dir())
            self.encoder, _ = load_encoder(encoder_dir, expected_atlas_id=self.landmarks.atlas_id, expected_intensity=LUNG_WINDOW,
                                           map_location=device)
            self.atlas_id = self.landmarks.atlas_id
            self.coordinates = self.landmarks.coordinates
        self.order = farthest_point_order(self.coordinates)
        self.settings, self.device = settings, device

    def __call__(self, scan: ScanInput) -> dict[str, np.ndarray]:
        image, centres, valid = self._read_cached(scan) if scan.cached else self._preprocess(scan)
        if not valid.any():
            raise InputError(scan.path, "no atlas landmark lies in the scanned lung; it cannot be embedded")
        selected = select_landmarks(valid, self.order, self.settings.max_landmarks)
        rows = landmark_embeddings(image, centres, selected, self.coordinates, self.encoder, self.device, self.settings.batch_size)
        landmarks = np.full((len(valid), rows.shape[1]), np.nan, dtype=np.float32)
        landmarks[selected] = rows
        return {"landmarks": landmarks, "valid": selected}

    def _read_cached(self, scan: ScanInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.landmarks is None:
            raise ValueError("a cache scan needs the embedder built with raw_scans=False")
        entry = read_cache_scan(scan.path / f"{scan.scan_id}_qa.json", self.landmarks)
        try:
            image = np.load(entry.image_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(entry.image_path, f"cannot be read as .npy ({exc})") from None
        return image, entry.centres, entry.valid

    def _preprocess(self, scan: ScanInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from drasclr_monailabel.anatomy.pipeline import preprocess_volume
        from drasclr_monailabel.io.readers import read_ct

        if self.pipeline_atlas is None:
            raise ValueError("a CT file needs the embedder built with raw_scans=True")
        result = preprocess_volume(read_ct(scan.path), self.pipeline_atlas)
        return result.image, result.landmarks, result.valid


class JointScanEmbedder:
    """Slice embeddings (S, d) and the volume embedding (d,) of one scan with a joint2d3d encoder."""

    def __init__(self, encoder_dir: Path, settings: EmbedSettings, device: torch.device) -> None:
        from drasclr_monailabel.ssl.joint2d3d.embed import JointEmbedder

        self.embedder = JointEmbedder.from_dir(encoder_dir, device=device, batch_size=settings.batch_size)
        self.atlas_dir = settings.atlas_dir or DEFAULT_ATLAS_DIR

    @property
    def atlas_id(self) -> str | None:
        return self.embedder.metadata["atlas"].get("id")

    def __call__(self, scan: ScanInput) -> dict[str, np.ndarray]:
        from drasclr_monailabel.io.readers import read_ct
        from drasclr_monailabel.ssl.joint2d3d.embed import embed_volume

        volume = scan.path if scan.cached else read_ct(scan.path)
        slices, pooled = embed_volume(self.embedder, volume, self.atlas_dir)
        return {"slices": slices.astype(np.float32), "volume": pooled.astype(np.float32)}


def embed_cohort(encoder_dir: str | Path, inputs: list[ScanInput], out_dir: str | Path, settings: EmbedSettings) -> EmbedReport:
    """Embed ``inputs`` into ``out_dir`` (resuming), then write the cohort files.

    Raises:
        InputError / ConfigError: a bad encoder or option, or no scan could be embedded.
    """
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    if settings.random_init is not None:
        encoder_dir = export_random_init(encoder_dir, out_dir / RANDOM_INIT_DIR, settings.random_init)
    weights, _ = encoder_paths(encoder_dir)
    metadata = read_metadata(encoder_dir)
    method = _check_method(settings, metadata, encoder_dir)
    device = resolve_device(settings.device)
    if method == "drasclr":
        embedder: DrasclrScanEmbedder | JointScanEmbedder = DrasclrScanEmbedder(encoder_dir, settings, device,
                                                                                raw_scans=not all(s.cached for s in inputs))
    else:
        embedder = JointScanEmbedder(encoder_dir, settings, device)
    fingerprint = encoder_id(weights)
    cap = settings.max_landmarks if method == "drasclr" else 0
    (out_dir / METADATA_NAME).unlink(missing_ok=True)  # the folder is incomplete until the end
    report = EmbedReport()
    embedded: list[ScanInput] = []
    first_error: DrasclrError | None = None
    for scan in tqdm(inputs, desc="embed", unit="scan", disable=not settings.progress):
        source = str(scan.path.resolve())
        if is_done(out_dir, scan.scan_id, source, fingerprint, cap):
            report.skipped += 1
            embedded.append(scan)
            continue
        try:
            arrays = embedder(scan)
        except DrasclrError as exc:
            log.warning("%s: not embedded: %s", scan.scan_id, exc)
            report.failures.append({"id": scan.scan_id, "source": source, "reason": str(exc)})
            first_error = first_error or exc
            continue
        write_scan(out_dir, ScanEmbedding(scan.scan_id, source, fingerprint, cap, arrays))
        report.done += 1
        embedded.append(scan)
    if not embedded:
        raise first_error or InputError(out_dir, "no scans to embed")
    ids, patient, n_valid, extra = pool_cohort(out_dir, [s.scan_id for s in embedded], method, settings.pooling)
    write_cohort(out_dir, ids, patient, n_valid, [str(s.path.resolve()) for s in embedded],
                 _metadata(metadata, encoder_dir, fingerprint, method, settings, embedder.atlas_id, len(ids), patient.shape[1], report),
                 extra)
    return report


def pool_cohort(out_dir: Path, ids: list[str], method: str, pooling: str) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Patient vectors (N, D), counts (N,) and extra cohort arrays from the per-scan files of ``ids``."""

    def records() -> Iterator[ScanEmbedding]:
        return (read_scan(scan_path(out_dir, scan_id)) for scan_id in ids)

    if method == "joint2d3d":
        rows = [(r.arrays["volume"], r.n_valid) for r in records()]
        return ids, np.stack([v for v, _ in rows]), np.array([n for _, n in rows]), {}
    if pooling == "mean":
        rows = [(mean_pool(r.arrays["landmarks"], r.arrays["valid"]), r.n_valid) for r in records()]
        return ids, np.stack([v for v, _ in rows]), np.array([n for _, n in rows]), {}
    reference = landmark_reference(lambda: ((r.arrays["landmarks"], r.arrays["valid"]) for r in records()))
    vectors, counts, weights = [], [], []
    for record in records():
        w = attention_weights(record.arrays["landmarks"], record.arrays["valid"], reference)
        vectors.append(attention_pool(record.arrays["landmarks"], w))
        counts.append(record.n_valid)
        weights.append(w)
    extra = {"attention_weights": np.stack(weights), "reference_mean": reference.mean, "reference_rms": reference.rms}
    return ids, np.stack(vectors), np.array(counts), extra


def _check_method(settings: EmbedSettings, metadata: dict[str, Any], encoder_dir: Path) -> str:
    method = metadata.get("method")
    if method not in METHODS:
        raise InputError(encoder_dir / "encoder.json", f"method is {method!r}; drasclr embed reads {' or '.join(METHODS)}")
    if settings.method is not None and settings.method != method:
        raise ConfigError("--method", f"{settings.method} was asked for, but {encoder_dir} holds a {method} encoder")
    if settings.pooling not in POOLINGS:
        raise ConfigError("--pooling", f"unknown pooling {settings.pooling!r} ({', '.join(POOLINGS)})")
    if method == "drasclr" and metadata.get("patch_size") != PATCH_SIZE:
        raise InputError(encoder_dir / "encoder.json", f"patch_size is {metadata.get('patch_size')}; landmark patches are {PATCH_SIZE}^3")
    if method == "joint2d3d" and settings.pooling != "mean":
        raise ConfigError("--pooling", "applies to DrasCLR landmark embeddings; a joint2d3d volume embedding is pooled by its transformer")
    return method


def _metadata(encoder_meta: dict[str, Any], encoder_dir: Path, fingerprint: str, method: str, settings: EmbedSettings,
              atlas_id: str | None, n_scans: int, dim: int, report: EmbedReport) -> dict[str, Any]:
    pooling = {"name": "volume embedding (joint2d3d transformer mean)"} if method == "joint2d3d" else {"name": settings.pooling}
    if method == "drasclr" and settings.pooling == "attention":
        pooling["temperature"] = ATTENTION_TEMPERATURE
    return {
        "method": method,
        "pooling": pooling,
        "embedding_dim": dim,
        "n_scans": n_scans,
        "encoder": {"path": str(encoder_dir.resolve()), "id": fingerprint, "atlas_id": encoder_meta["atlas"].get("id"),
                    "training": encoder_meta.get("training", {})},
        "atlas": {"id": atlas_id, "n_landmarks": encoder_meta.get("n_landmarks", encoder_meta["atlas"].get("n_landmarks"))},
        "max_landmarks": settings.max_landmarks if method == "drasclr" else None,
        "failures": report.failures,
        "package_version": drasclr_monailabel.__version__,
    }

