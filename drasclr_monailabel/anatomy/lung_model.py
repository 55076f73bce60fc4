"""An optional lung segmentation model supplied by the user as a TorchScript file (never downloaded).

Contract of the model file (``torch.jit.save`` of a module):
- input: float32 tensor (1, 1, Z, Y, X) of HU clipped to [-1024, 600] on the lung mask's working
  grid (about 2 mm, LPS: array x towards the patient's left, y posterior, z superior);
- output: float tensor (1, C, Z, Y, X) of class scores with C = 2 (background, lung) or
  C = 3 (background, right lung, left lung); the arg-max is taken.
With C = 2 the package splits the lungs into right and left itself. Wrap a model trained on other
inputs (e.g. 2D slices at 512 x 512) in a module that does its own resizing.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from drasclr_monailabel.errors import InputError

INPUT_HU_RANGE = (-1024.0, 600.0)


def predict_labels(model_path: str | Path, hu: np.ndarray) -> tuple[np.ndarray, bool]:
    """Arg-max labels (uint8, shape of ``hu``) and whether they already name the sides (C = 3).

    Raises:
        InputError: the file is not a loadable TorchScript model, or its output has the wrong shape.
    """
    import torch

    model = load_model(model_path)
    inputs = torch.from_numpy(np.clip(hu, *INPUT_HU_RANGE).astype(np.float32))[None, None]
    try:
        with torch.inference_mode():
            scores = model(inputs)
    except Exception as exc:  # the user's model may fail in any way; name it and stop
        raise InputError(model_path, f"lung model failed on a {tuple(hu.shape)} input ({type(exc).__name__}: {exc})") from None
    if not isinstance(scores, torch.Tensor) or scores.ndim != 5 or tuple(scores.shape[2:]) != hu.shape or scores.shape[1] not in (2, 3):
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise InputError(model_path, f"lung model returned {shape}; expected (1, 2 or 3, {', '.join(map(str, hu.shape))})")
    labels = scores[0].argmax(dim=0).to(torch.uint8).numpy()
    return labels, scores.shape[1] == 3


def load_model(path: str | Path):  # type: ignore[no-untyped-def]
    """The TorchScript module in ``path`` (loaded once per process), in eval mode.

    Raises:
        InputError: missing file or not a TorchScript model.
    """
    return _load(str(path))


@functools.lru_cache(maxsize=2)
def _load(path: str):  # type: ignore[no-untyped-def]
    import torch

    if not Path(path).is_file():
        raise InputError(path, "lung model file does not exist")
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript in favour of torch.export; still loads
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(path, map_location="cpu").eval()
    except Exception as exc:  # torch raises RuntimeError, ValueError or pickle errors for non-models
        raise InputError(path, f"cannot be loaded as a TorchScript model ({type(exc).__name__})") from None
