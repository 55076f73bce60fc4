"""The bundle's ``network_def`` builds, through MONAI's own config parser, the network the app's
checkpoint holds, for both segmentation networks (the full bundle run is in tests/integration)."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from drasclr_monailabel.bundle import bundle_metadata, network_definition
from drasclr_monailabel.segmentation.checkpoint import NETWORKS, build_model


@pytest.mark.parametrize("network", NETWORKS)
def test_the_network_definition_takes_the_checkpoint_s_weights(network: str) -> None:
    torch.manual_seed(0)
    model, info = build_model(["centrilobular", "panlobular", "paraseptal"], network=network)
    built = ConfigParser({"network_def": network_definition(info["meta"])}).get_parsed_content("network_def")
    built.load_state_dict(model.state_dict())  # strict: same modules, same shapes
    x = torch.randn(1, 4, 32, 32, 32)
    torch.testing.assert_close(built.eval()(x), model.eval()(x))
    metadata = bundle_metadata(info["meta"])
    assert metadata["drasclr"]["network"] == network
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [f"{model.divisor}*n"] * 3
