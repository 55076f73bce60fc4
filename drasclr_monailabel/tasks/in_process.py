"""The emphysema app in-process (FastAPI TestClient on MONAI Label's app), driven as 3D Slicer drives it.

Used by the integration tests and by ``benchmarks/annotation_loop.py``: the real app and its real
endpoints, without a server process. Needs ``httpx`` (FastAPI's TestClient), a test extra.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_monailabel.packaged import APP_DIR


@contextlib.contextmanager
def in_process_app(studies: Path, conf: dict[str, str]) -> Iterator[Any]:
    """A TestClient on MONAI Label's app with the emphysema app on ``studies`` and ``--conf`` options
    ``conf``, built as MONAI Label's own tests build it: settings set, the app cache cleared, no
    server process. The settings are restored on exit.

    Raises:
        RuntimeError: the app did not start (``/info/`` answered with an error).
    """
    from fastapi.testclient import TestClient
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    saved = settings.model_dump()
    settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = dict(conf)
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    settings.MONAI_LABEL_SESSION_PATH = str(Path(studies).parent / "sessions")
    from monailabel.app import app

    clear_cache()
    try:
        client = TestClient(app)
        # MONAI Label builds the app on the first request and that is not thread-safe: build it now.
        started = client.get("/info/")
        if started.status_code != 200:
            raise RuntimeError(f"the emphysema app did not start: {started.status_code} {started.text[:300]}")
        yield client
    finally:
        clear_cache()
        for key, value in saved.items():
            setattr(settings, key, value)


def image_bytes(image: sitk.Image) -> bytes:
    """The bytes of ``image`` written as a compressed NIfTI file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()


def read_bytes(data: bytes) -> np.ndarray:
    """The voxels (Z, Y, X) of NIfTI file bytes."""
    return sitk.GetArrayFromImage(read_image_bytes(data))


def read_image_bytes(data: bytes) -> sitk.Image:
    """The image (voxels and geometry) of NIfTI file bytes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.nii.gz"
        path.write_bytes(data)
        return sitk.ReadImage(str(path))


def label_bytes(array: np.ndarray, like: sitk.Image) -> bytes:
    """``array`` (Z, Y, X) as a uint8 NIfTI file with the geometry of ``like``."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(like)
    return image_bytes(image)


def infer_all(client: Any, model: str, image: str, upload: Path | None = None,
              with_geometry: bool = False) -> tuple[dict, np.ndarray | sitk.Image]:
    """POST /infer as Slicer does; the multipart answer as (JSON params, label (Z, Y, X) on the scan's
    grid; with ``with_geometry`` the label image as written, voxels and geometry).

    ``upload``: send this scan file (as Slicer sends a volume the server does not have) instead of
    naming a datastore image; ``image`` is then only the request's image name.

    Raises:
        RuntimeError: the app answered with an error.
    """
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    files = {"file": (upload.name, upload.read_bytes())} if upload is not None else None
    response = client.post(f"/infer/{model}?image={image}", files=files)
    if response.status_code != 200:
        raise RuntimeError(f"/infer/{model} on {image}: {response.status_code} {response.text[:300]}")
    parts = {p.headers[b"Content-Disposition"].split(b'name="')[1].split(b'"')[0]: p
             for p in MultipartDecoder(response.content, response.headers["content-type"]).parts}
    label = read_image_bytes(parts[b"image"].content)
    return json.loads(parts[b"params"].text), label if with_geometry else sitk.GetArrayFromImage(label)


def save_label(client: Any, image: str, data: bytes, tag: str = "final") -> Any:
    """PUT /datastore/label as Slicer's Submit Label does (one segment named ``emphysema``); the response."""
    return client.put(f"/datastore/label?image={image}&tag={tag}", files={"label": ("label.nii.gz", data)},
                      data={"params": json.dumps({"label_info": [{"name": "emphysema", "idx": 1}]})})
