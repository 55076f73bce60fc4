"""The network's number format at inference: what ``auto`` picks and what autocast changes."""

from __future__ import annotations

import pytest
import torch

from drasclr_monailabel.segmentation.precision import native_bfloat16, network_precision, resolve_precision


def test_auto_picks_bfloat16_only_where_it_is_native():
    assert resolve_precision("auto", "cpu") == ("bfloat16" if native_bfloat16("cpu") else "float32")
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="half"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_network_precision_sets_the_convolutions_format_inside_the_block_only(dtype):
    conv = torch.nn.Conv3d(2, 3, 3)
    x = torch.randn(1, 2, 6, 6, 6)
    with torch.inference_mode(), network_precision(dtype, "cpu"):
        assert conv(x).dtype == dtype
    assert conv(x).dtype == torch.float32
