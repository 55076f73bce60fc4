"""The MONAI dictionary transforms build exactly the network input and labels of the functions they
wrap, and refuse what they cannot use with one line naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Activationsd, Compose, LoadImage

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import EncoderArchitecture
from drasclr_monailabel.segmentation.case import network_input
from drasclr_monailabel.segmentation.checkpoint import build_model
from drasclr_monailabel.segmentation.inference import predict_volume
from drasclr_monailabel.segmentation.transforms import (
    AtlasCoordinatesd,
    IntensityWindowd,
    LungAtlasd,
    LungBackgroundd,
    LungWindowInferd,
    Quantifyd,
    ReadCTd,
    SaveLabeld,
    ToInputGridd,
    ToMonaiLayoutd,
)


def test_intensity_window_and_coordinates_make_the_network_input(prepared_phantom) -> None:
    data = Compose([IntensityWindowd(), AtlasCoordinatesd()])({"case": prepared_phantom})
    assert data["input"].shape == (4, *prepared_phantom.lungs.shape) and data["input"].dtype == torch.float32
    np.testing.assert_array_equal(data["input"].numpy(), network_input(prepared_phantom))


def test_the_app_transforms_give_predict_volumes_labels_and_report(labelled_phantom, prepared_phantom, tmp_path: Path) -> None:
    torch.manual_seed(0)
    # a narrow network (the transforms, not the network, are under test) at overlap 0, not
    # predict_volume's default 0.25: the transform must pass its own on (and both run faster)
    narrow = EncoderArchitecture(stem_channels=4, block_channels=(8, 8, 16), top_channels=16, embedding_dim=16, num_experts=2)
    model, _ = build_model(["emphysema"], architecture=narrow)
    data = Compose([LungWindowInferd(model, overlap=0.0), ToInputGridd(), Quantifyd()])(
        {"image": labelled_phantom.volume, "case": prepared_phantom})
    expected = predict_volume(model, labelled_phantom.volume, case=prepared_phantom, overlap=0.0)
    np.testing.assert_array_equal(data["pred"], expected.labels)
    assert data["quantification"] == expected.report == data["pred_meta_dict"]["quantification"]

    # MONAI's layout, read back by MONAI's own loader from the file SaveLabeld writes: same array, same affine.
    data = Compose([ToMonaiLayoutd(), SaveLabeld(tmp_path)])(data)
    assert data["pred"].shape == (1, *expected.labels.shape[::-1])
    assert data["result"] == {"quantification": expected.report}
    assert tuple(data["image_meta_dict"]["spatial_shape"]) == expected.labels.shape[::-1]
    saved = LoadImage(image_only=True)(data["pred_meta_dict"]["saved_to"])
    np.testing.assert_array_equal(saved.numpy(), data["pred"][0].numpy())
    np.testing.assert_allclose(saved.affine.numpy(), data["image_meta_dict"]["affine"].numpy(), atol=1e-4)
    np.testing.assert_allclose(data["pred"].affine.numpy(), data["image_meta_dict"]["affine"].numpy())


def test_the_bundles_postprocessing_makes_probabilities_background_outside_the_lungs(prepared_phantom) -> None:
    logits = torch.randn(2, *prepared_phantom.lungs.shape, generator=torch.Generator().manual_seed(0))
    post = Compose([Activationsd(keys="pred", softmax=True), LungBackgroundd()])({"pred": logits, "case": prepared_phantom})
    assert isinstance(post["pred"], np.ndarray)
    assert np.all(post["pred"][0][prepared_phantom.lungs == 0] == 1.0)
    inside = prepared_phantom.lungs > 0
    np.testing.assert_allclose(post["pred"][1][inside], torch.softmax(logits, dim=0)[1].numpy()[inside], rtol=1e-6)


def test_a_bad_file_and_another_atlas_are_refused_by_name(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"broken\.nii\.gz: "):
        ReadCTd(volume_key="ct")({"image": str(broken)})
    with pytest.raises(InputError, match=r"but the model was made for realct-000000000000"):
        LungAtlasd(atlas_id="realct-000000000000")
