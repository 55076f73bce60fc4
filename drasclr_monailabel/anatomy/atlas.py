"""The lung atlas: a 1 mm lung label map, its landmark grid, and an id that names its content.

Folder format (docs/formats.md): ``atlas.json`` (written last), ``lungs.nii.gz`` (uint8, 0 / 1
right / 2 left, LPS, 1 mm), ``landmarks.csv`` and, optionally, ``lobes.nii.gz`` (uint8 lobe codes
0-5 on the same grid, :mod:`~drasclr_monailabel.anatomy.lobes`). The package ships a default atlas
built from real chest CT by ``drasclr build-atlas`` (docs/anatomy.md); ``drasclr build-atlas
INPUT`` builds one from a cohort.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.anatomy.landmarks import LandmarkGrid, landmark_grid
from drasclr_monailabel.anatomy.lobes import LOBE_NAMES
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.utils.atomic import write_json, write_text, write_with

ATLAS_FORMAT = "drasclr-atlas/1"
LOBES_FILE = "lobes.nii.gz"
DEFAULT_ATLAS_DIR = Path(__file__).with_name("atlas")
LANDMARK_COLUMNS = ("index", "z", "y", "x", "wx", "wy", "wz", "cx", "cy", "cz", "lung_fraction", "neighbour_1", "neighbour_2")


@dataclass(frozen=True)
class Atlas:
    """A loaded atlas.

    Attributes:
        atlas_id: ``<name>-<12 hex digits>``; the digits hash the mask and the landmark table, so
            two atlases share an id only if their content is identical.
        lungs: uint8 label image at 1 mm (LPS).
        landmarks: the landmark grid (atlas voxels, world mm, normalised coordinates, neighbours).
        meta: the content of ``atlas.json``.
        lobes: uint8 lobe codes (0-5) on the grid of ``lungs``, or None for an atlas without lobes.
    """

    atlas_id: str
    lungs: sitk.Image
    landmarks: LandmarkGrid
    meta: dict[str, Any]
    lobes: sitk.Image | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_landmarks(self) -> int:
        return len(self.landmarks)

    def coordinate_normalisation(self) -> dict[str, list[float]]:
        """``{"centre": [x, y, z], "half_extent": [x, y, z]}`` in mm, as recorded for encoders."""
        return {"centre": [float(v) for v in self.landmarks.centre], "half_extent": [float(v) for v in self.landmarks.half_extent]}

    def cached(self, key: str, make: Any) -> Any:
        """A value derived from the atlas (e.g. its registration image), computed once per process."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@functools.lru_cache(maxsize=1)
def load_default_atlas() -> Atlas:
    """The atlas shipped with the package (read once per process)."""
    return load_atlas(DEFAULT_ATLAS_DIR)


def load_atlas(folder: str | Path | None = None) -> Atlas:
    """Read an atlas folder (default: the one shipped with the package).

    Raises:
        InputError: a missing file, another format, or an id that does not match the content.
    """
    folder = Path(folder) if folder is not None else DEFAULT_ATLAS_DIR
    meta_path = folder / "atlas.json"
    if not meta_path.is_file():
        raise InputError(folder, "is not an atlas folder (no atlas.json; build one with drasclr build-atlas)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(meta_path, f"cannot be read as JSON ({exc})") from None
    if meta.get("format") != ATLAS_FORMAT:
        raise InputError(meta_path, f"has format {meta.get('format')!r}; this version reads {ATLAS_FORMAT!r}")
    try:
        lungs = sitk.ReadImage(str(folder / "lungs.nii.gz"))
        table = (folder / "landmarks.csv").read_text()
        lobes = sitk.ReadImage(str(folder / LOBES_FILE)) if meta.get("lobes") else None
    except (RuntimeError, OSError) as exc:
        raise InputError(folder, f"atlas files cannot be read ({str(exc).strip().splitlines()[-1]})") from None
    lungs = sitk.Cast(lungs, sitk.sitkUInt8)
    lobes = sitk.Cast(lobes, sitk.sitkUInt8) if lobes is not None else None
    landmarks = _parse_landmarks(table, meta, folder / "landmarks.csv")
    expected = content_id(meta.get("name", "atlas"), lungs, table, lobes)
    if meta.get("id") != expected:
        raise InputError(meta_path, f"id {meta.get('id')!r} does not match the atlas files (expected {expected!r}); the folder was edited or half-copied")
    return Atlas(atlas_id=expected, lungs=lungs, landmarks=landmarks, meta=meta, lobes=lobes)


def save_atlas(folder: str | Path, lungs: sitk.Image, name: str, provenance: dict[str, Any] | None = None,
               lobes: sitk.Image | None = None) -> Atlas:
    """Compute the landmark grid of ``lungs`` and write the atlas folder (atlas.json last).

    Args:
        lungs: uint8 labels (0 / 1 / 2) at 1 mm isotropic spacing with identity direction.
        name: a short name that starts the atlas id (letters, digits, ``-``, ``_``).
        provenance: how the atlas was built (subjects, command, ...), stored in atlas.json.
        lobes: optional lobe codes (0-5) on the grid of ``lungs``.
    """
    if tuple(lungs.GetSpacing()) != (1.0, 1.0, 1.0):
        raise ValueError(f"atlas lungs must be at 1 mm, got spacing {lungs.GetSpacing()}")
    if lobes is not None and lobes.GetSize() != lungs.GetSize():
        raise ValueError(f"atlas lobes must share the lungs' grid, got size {lobes.GetSize()} for {lungs.GetSize()}")
    folder = Path(folder)
    lungs = sitk.Cast(lungs, sitk.sitkUInt8)
    if lobes is not None:
        lobes = sitk.Cast(lobes, sitk.sitkUInt8)
        lobes.CopyInformation(lungs)
    grid = landmark_grid(lungs)
    table = _landmark_table(grid)
    identifier = content_id(name, lungs, table, lobes)
    array = sitk.GetArrayFromImage(lungs)
    litres = {side: float(np.count_nonzero(array == label)) / 1e6 for side, label in (("right", 1), ("left", 2))}
    meta = {
        "format": ATLAS_FORMAT,
        "id": identifier,
        "name": name,
        "spacing": [1.0, 1.0, 1.0],
        "origin": [float(v) for v in lungs.GetOrigin()],
        "size": [int(v) for v in lungs.GetSize()],
        "patch_size": 32,
        "step": 26,
        "min_lung_fraction": grid.min_lung_fraction,
        "n_landmarks": len(grid),
        "n_neighbours": int(grid.neighbours.shape[1]),
        "coordinate_normalisation": {"centre": grid.centre.tolist(), "half_extent": grid.half_extent.tolist()},
        "lung_volume_litres": litres,
        "provenance": provenance or {},
    }
    if lobes is not None:
        lobe_array = sitk.GetArrayViewFromImage(lobes)
        meta["lobes"] = {"file": LOBES_FILE, "codes": {str(code): lobe for code, lobe in LOBE_NAMES.items()},
                         "litres": {LOBE_NAMES[code]: float(np.count_nonzero(lobe_array == code)) / 1e6 for code in LOBE_NAMES}}
    folder.mkdir(parents=True, exist_ok=True)
    write_with(folder / "lungs.nii.gz", lambda tmp: sitk.WriteImage(lungs, str(tmp), useCompression=True))
    if lobes is not None:
        write_with(folder / LOBES_FILE, lambda tmp: sitk.WriteImage(lobes, str(tmp), useCompression=True))
    write_text(folder / "landmarks.csv", table)
    write_json(folder / "atlas.json", meta)
    return Atlas(atlas_id=identifier, lungs=lungs, landmarks=grid, meta=meta, lobes=lobes)


def content_id(name: str, lungs: sitk.Image, landmarks_csv: str, lobes: sitk.Image | None = None) -> str:
    """``<name>-<hash>``: sha256 over the mask's voxels and geometry, the landmark table and the lobes (if any)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(lungs), dtype=np.uint8).tobytes())
    digest.update(repr((lungs.GetSize(), lungs.GetSpacing(), lungs.GetOrigin(), lungs.GetDirection())).encode())
    digest.update(landmarks_csv.encode())
    if lobes is not None:
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(lobes), dtype=np.uint8).tobytes())
    return f"{name}-{digest.hexdigest()[:12]}"


def _landmark_table(grid: LandmarkGrid) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LANDMARK_COLUMNS)
    for i in range(len(grid)):
        z, y, x = (int(v) for v in grid.voxel[i])
        wx, wy, wz = (f"{v:.3f}" for v in grid.world[i])
        cx, cy, cz = (f"{v:.6f}" for v in grid.normalised[i])
        writer.writerow([i, z, y, x, wx, wy, wz, cx, cy, cz, f"{grid.lung_fraction[i]:.6f}", *(int(n) for n in grid.neighbours[i])])
    return out.getvalue()


def _parse_landmarks(table: str, meta: dict[str, Any], path: Path) -> LandmarkGrid:
    rows = list(csv.DictReader(io.StringIO(table)))
    if not rows or tuple(rows[0].keys()) != LANDMARK_COLUMNS:
        raise InputError(path, f"must have the columns {', '.join(LANDMARK_COLUMNS)}")
    if len(rows) != meta.get("n_landmarks"):
        raise InputError(path, f"has {len(rows)} landmarks but atlas.json says {meta.get('n_landmarks')}")
    values = np.array([[float(row[c]) for c in LANDMARK_COLUMNS] for row in rows])
    norm = meta["coordinate_normalisation"]
    return LandmarkGrid(
        voxel=values[:, 1:4].astype(np.int64),
        world=values[:, 4:7],
        lung_fraction=values[:, 10],
        neighbours=values[:, 11:13].astype(np.int64),
        centre=np.array(norm["centre"], dtype=np.float64),
        half_extent=np.array(norm["half_extent"], dtype=np.float64),
        min_lung_fraction=float(meta["min_lung_fraction"]),
    )
