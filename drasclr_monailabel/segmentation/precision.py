"""The floating-point format the segmentation network runs in at inference.

bfloat16 keeps float32's exponent range with 8 bits of mantissa. Where the hardware computes it
natively (CPUs with AVX512-BF16 or AMX, through oneDNN; CUDA GPUs of compute capability 8 and
above) autocast runs the convolutions in it and the network's forward pass is faster
(benchmarks/inference_precision.py); elsewhere it is emulated and slower, so ``auto`` keeps
float32 there. Blending, softmax and resampling stay as they are (:mod:`.inference`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("auto", "float32", "bfloat16")
"""What a user may ask for (``--conf infer_precision``)."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bfloat16(device: str | torch.device) -> bool:
    """True when ``device`` computes bfloat16 convolutions natively (not by emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # oneDNN's own check for AVX512-BF16 / AMX; private, so absent in some builds
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The concrete format (a key of :data:`DTYPES`): ``auto`` is bfloat16 where native on
    ``device``, else float32.

    Raises:
        ValueError: a name outside :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


@contextlib.contextmanager
def network_precision(dtype: torch.dtype, device: str | torch.device) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` for the block; nothing for float32."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield
