"""Case preparation, fine-tuning, whole-CT inference and checkpoints of the emphysema model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drasclr_monailabel.anatomy.atlas import load_default_atlas
from drasclr_monailabel.errors import InputError
from drasclr_monailabel.models.encoder import DrasclrEncoder, EncoderArchitecture
from drasclr_monailabel.models.export import save_encoder
from drasclr_monailabel.models.intensity import LUNG_WINDOW
from drasclr_monailabel.segmentation.case import network_input
from drasclr_monailabel.segmentation.checkpoint import build_model, load_checkpoint, save_checkpoint
from drasclr_monailabel.segmentation.inference import predict_volume, window_probabilities
from drasclr_monailabel.segmentation.segresnet import MonaiSegResNet
from drasclr_monailabel.segmentation.training import FinetuneConfig, finetune, segmentation_loss

def test_coordinates_at_landmarks_equal_the_atlas_locations(prepared_phantom) -> None:
    atlas = load_default_atlas()
    scan = prepared_phantom.scan
    centres = scan.landmarks[scan.valid]
    assert len(centres) > 0.8 * atlas.n_landmarks
    found = prepared_phantom.coordinates[:, centres[:, 0], centres[:, 1], centres[:, 2]].T
    # Landmark centres are rounded to whole voxels: 0.5 mm over a half extent of >= 100 mm.
    np.testing.assert_allclose(found, np.asarray(atlas.landmarks.normalised)[scan.valid], atol=0.01)


def test_labels_follow_the_painted_spheres(prepared_phantom, labelled_phantom) -> None:
    voxel_ml_native = np.prod(labelled_phantom.volume.spacing) / 1000
    painted_ml = labelled_phantom.label.sum() * voxel_ml_native
    prepared_ml = prepared_phantom.labels.sum() / 1000
    assert prepared_ml == pytest.approx(painted_ml, rel=0.1)
    assert not np.any(prepared_phantom.labels[prepared_phantom.lungs == 0])
    inputs = network_input(prepared_phantom)
    assert inputs.shape == (4, *prepared_phantom.scan.image.shape) and inputs.dtype == np.float32
    lesion_units = inputs[0][prepared_phantom.labels > 0].mean()
    assert lesion_units == pytest.approx(float(LUNG_WINDOW(torch.tensor(-980.0))), abs=0.05)


def _lesion_batch(case) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of four 32^3 patches centred on labelled lesions."""
    inputs = torch.from_numpy(network_input(case))
    centres = np.argwhere(case.labels > 0)
    shape = np.array(case.labels.shape)
    centres = centres[np.all((centres >= 16) & (centres <= shape - 16), axis=1)]
    chosen = centres[np.linspace(0, len(centres) - 1, 4).astype(int)]
    crops = [tuple(slice(int(c) - 16, int(c) + 16) for c in centre) for centre in chosen]
    x = torch.stack([inputs[(slice(None), *crop)] for crop in crops])
    y = torch.stack([torch.from_numpy(case.labels[crop].astype(np.int64)) for crop in crops])
    return x, y


def test_finetune_lowers_the_loss_and_predicts_in_input_geometry(prepared_phantom, labelled_phantom) -> None:
    torch.manual_seed(0)
    model, info = build_model(["emphysema"], pretrained=None)
    assert info["loaded"] == 0
    x, y = _lesion_batch(prepared_phantom)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(segmentation_loss(model(x), y, model.num_classes))

    before = held_out_loss()
    config = FinetuneConfig(max_epochs=2, steps_per_epoch=12, batch_size=2, patch_size=32, lr=3e-3)
    stats = finetune(model, [prepared_phantom], config, pretrained=False)
    assert stats["steps"] == 24 and len(stats["loss"]) == 2
    assert held_out_loss() < 0.9 * before
    prediction = predict_volume(model, labelled_phantom.volume, window=32, overlap=0.0, batch_size=4, case=prepared_phantom)
    assert prediction.labels.shape == labelled_phantom.volume.hu.shape
    assert not np.any(prediction.labels[prediction.lungs == 0])
    assert prediction.report["regions"]

    # the same trained network under bfloat16 autocast: nearly the same probabilities, not identical ones
    # (on a 32-slice slab through the lungs: CPUs without native bfloat16 emulate it slowly)
    z = np.flatnonzero(prepared_phantom.lungs.any(axis=(1, 2)))
    start = int((z[0] + z[-1]) // 2 - 16)
    slab = prepared_phantom.cropped((slice(start, start + 32), slice(None), slice(None)))
    lung = slab.lungs > 0
    exact, half = (window_probabilities(model, slab, "cpu", False, 32, 0.0, 4, dtype)[:, lung].astype(np.float32)
                   for dtype in (torch.float32, torch.bfloat16))
    difference = np.abs(exact - half)
    assert 0 < difference.max() < 0.1 and difference.mean() < 0.01
    assert (exact.argmax(axis=0) == half.argmax(axis=0)).mean() > 0.99


def _saved_random_encoder(folder: Path) -> DrasclrEncoder:
    """A seeded random DrasCLR encoder exported to ``folder`` for the shipped atlas."""
    atlas = load_default_atlas()
    torch.manual_seed(1)
    encoder = DrasclrEncoder()
    metadata = {"method": "drasclr", "architecture": encoder.architecture.to_dict(),
                "atlas": {"id": atlas.atlas_id, "n_landmarks": atlas.n_landmarks, "coordinate_normalisation": atlas.coordinate_normalisation()},
                "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": 128}
    save_encoder(folder, encoder.state_dict(), metadata)
    return encoder


def test_pretrained_encoder_is_loaded_and_frozen_first_keeping_its_pretraining_statistics(tmp_path: Path, prepared_phantom) -> None:
    encoder = _saved_random_encoder(tmp_path / "enc")
    model, info = build_model(["emphysema"], pretrained=tmp_path / "enc")
    assert info["loaded"] == len(encoder.state_dict())
    first = next(iter(encoder.state_dict()))
    torch.testing.assert_close(model.encoder.state_dict()[first], encoder.state_dict()[first])
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    config = FinetuneConfig(max_epochs=1, steps_per_epoch=2, batch_size=2, encoder_batchnorm="pretraining")
    finetune(model, [prepared_phantom], config, pretrained=True)
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, before[name], msg=f"{name} changed while the encoder was frozen")


def test_by_default_encoder_batchnorm_re_estimates_statistics_while_the_weights_stay_frozen(tmp_path: Path, prepared_phantom) -> None:
    _saved_random_encoder(tmp_path / "enc")
    model, _ = build_model(["emphysema"], pretrained=tmp_path / "enc")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    finetune(model, [prepared_phantom], FinetuneConfig(max_epochs=1, steps_per_epoch=2, batch_size=2), pretrained=True)  # the default
    after = model.encoder.state_dict()
    moved = [name for name in after if name.endswith("running_mean") and not torch.equal(after[name], before[name])]
    assert moved, "no encoder BatchNorm statistic was updated from the fine-tuning batches"
    for name in after:
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(after[name], before[name], msg=f"{name} changed while the encoder was frozen")
    with pytest.raises(ValueError, match="encoder_batchnorm must be one of pretraining, finetuning, got 'batch'"):
        FinetuneConfig(encoder_batchnorm="batch")


def test_encoder_of_another_atlas_is_refused(tmp_path: Path) -> None:
    encoder = DrasclrEncoder()
    metadata = {"method": "drasclr", "architecture": encoder.architecture.to_dict(), "atlas": {"id": "other-atlas"},
                "intensity": LUNG_WINDOW.to_dict(), "patch_size": 32, "embedding_dim": 128}
    save_encoder(tmp_path / "enc", encoder.state_dict(), metadata)
    with pytest.raises(InputError, match="atlas 'other-atlas'"):
        build_model(["emphysema"], pretrained=tmp_path / "enc")


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    model, info = build_model(["centrilobular", "panlobular", "paraseptal"], pretrained=None)
    path = save_checkpoint(model, tmp_path / "model.pt", info["meta"])
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "meta"}
    loaded, meta = load_checkpoint(path)
    assert meta["labels"] == ["centrilobular", "panlobular", "paraseptal"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    (tmp_path / "broken.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="cannot be loaded"):
        load_checkpoint(tmp_path / "broken.pt")


def test_a_fresh_encoder_of_another_architecture_is_built_and_reloaded_from_its_checkpoint(tmp_path: Path) -> None:
    architecture = EncoderArchitecture(block_channels=(16,), top_channels=32, embedding_dim=64, norm="group")
    model, info = build_model(["emphysema"], architecture=architecture)
    assert model.encoder.feature_strides[-1] == 8 and model.encoder.architecture == architecture
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt", info["meta"]))
    assert loaded.encoder.architecture == architecture
    x = torch.randn(1, 4, 32, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="not both"):
        build_model(["emphysema"], pretrained=tmp_path / "enc", architecture=architecture)


def test_a_segresnet_is_built_saved_and_reloaded_as_the_same_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, info = build_model(["centrilobular", "panlobular", "paraseptal"], network="segresnet")
    assert isinstance(model, MonaiSegResNet) and info["meta"]["network"] == "segresnet" and info["meta"]["pretrained"] is None
    loaded, meta = load_checkpoint(save_checkpoint(model, tmp_path / "model.pt", info["meta"]))
    assert isinstance(loaded, MonaiSegResNet) and "routing_block" not in meta
    x = torch.randn(1, 4, 32, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    assert loaded(x).shape == (1, 4, 32, 32, 32)  # background + three subtypes


def test_segresnet_refuses_what_only_the_drasclr_u_net_takes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="from scratch"):
        build_model(["emphysema"], pretrained=tmp_path / "enc", network="segresnet")
    with pytest.raises(ValueError, match="from scratch"):
        build_model(["emphysema"], architecture=EncoderArchitecture(norm="group"), network="segresnet")
    with pytest.raises(ValueError, match="network must be one of drasclr_unet, segresnet"):
        build_model(["emphysema"], network="unet")


def test_a_checkpoint_without_a_network_holds_the_drasclr_u_net_and_an_unknown_one_is_named(tmp_path: Path) -> None:
    model, info = build_model(["emphysema"])
    old_meta = {key: value for key, value in info["meta"].items() if key != "network"}  # written before networks were named
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "old.pt", old_meta))
    assert type(loaded) is type(model)
    path = save_checkpoint(model, tmp_path / "future.pt", {**info["meta"], "network": "swin_unetr"})
    with pytest.raises(InputError, match="future.pt.*unknown network 'swin_unetr'"):
        load_checkpoint(path)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_a_stride_8_encoder_fine_tunes_on_one_patch_per_step(prepared_phantom, norm: str) -> None:
    """Its one-patch bottleneck is 4^3 voxels, so even BatchNorm has values to normalise with (the
    default encoder's 1^3 one does not: the app refuses ``batch_size`` 1 only for that)."""
    torch.manual_seed(0)
    architecture = EncoderArchitecture(block_channels=(16,), top_channels=32, embedding_dim=64, norm=norm)
    model, _ = build_model(["emphysema"], architecture=architecture)
    assert not model.encoder.needs_batches(32) and build_model(["emphysema"])[0].encoder.needs_batches(32)
    stats = finetune(model, [prepared_phantom], FinetuneConfig(max_epochs=1, steps_per_epoch=2, batch_size=1), pretrained=False)
    assert stats["steps"] == 2 and np.isfinite(stats["loss"]).all()


@pytest.mark.slow
# a 64-voxel slab of the right lung (its box keeps empty corners; the whole grid would take four
# times as long), and 20 voxels < the 32^3 window: MONAI pads the grid
@pytest.mark.parametrize("x_extent", [64, 20])
def test_windows_without_lung_are_skipped_and_change_nothing_in_the_lung(prepared_phantom, x_extent: int) -> None:
    from monai.inferers import sliding_window_inference

    from drasclr_monailabel.models.encoder import EncoderArchitecture
    from drasclr_monailabel.segmentation.inference import LungWindowPredictor, lung_window_logits, window_probabilities
    from drasclr_monailabel.segmentation.network import EmphysemaUNet

    torch.manual_seed(0)
    narrow = EncoderArchitecture(stem_channels=4, block_channels=[8, 8, 16], top_channels=16, embedding_dim=16, num_experts=2)
    model = EmphysemaUNet(DrasclrEncoder(narrow), num_classes=2, dropout=0.0).eval()
    centre = int(np.argwhere(prepared_phantom.lungs == 1)[:, 2].mean())  # inside the right lung
    case = prepared_phantom.cropped((slice(None), slice(None), slice(centre - x_extent // 2, centre + x_extent // 2)))
    counter = LungWindowPredictor(model, case, 32)
    lung_window_logits(counter, case, 32, overlap=0.25, batch_size=4, device="cpu")
    with torch.inference_mode():
        every_window = sliding_window_inference(torch.from_numpy(network_input(case))[None], (32,) * 3, 4, model,
                                                overlap=0.25, mode="gaussian", padding_mode="replicate")
    assert 0 < counter.skipped < counter.windows  # the lung box has empty corners
    ours = window_probabilities(model, case, "cpu", mc_dropout=False, window=32, overlap=0.25, batch_size=4)
    reference = torch.softmax(every_window[0], dim=0).numpy()
    lung = case.lungs > 0
    assert ours.dtype == np.float16  # blended in half precision: three significant digits
    np.testing.assert_allclose(ours[:, lung], reference[:, lung], atol=2e-3)
    assert np.all(ours[0, ~lung] == 1.0)


def test_a_window_reaching_past_the_grid_replicates_its_edge_and_a_crop_keeps_its_coordinates(prepared_phantom) -> None:
    from drasclr_monailabel.segmentation.case import network_window

    case = prepared_phantom
    whole = network_input(case)
    nz, ny, nx = whole.shape[1:]
    window = network_window(case, np.arange(-3, 5), np.arange(ny - 4, ny + 2), np.arange(10, 16))
    expected = np.pad(whole[:, :5, ny - 4:, 10:16], [(0, 0), (3, 0), (0, 2), (0, 0)], mode="edge")
    np.testing.assert_array_equal(window, expected)
    box = (slice(5, nz - 7), slice(3, None), slice(None, nx // 2))
    cropped = case.cropped(box)
    np.testing.assert_allclose(network_input(cropped), whole[(slice(None), *box)], atol=1e-6)
    assert np.array_equal(cropped.labels, case.labels[box]) and np.array_equal(cropped.lungs, case.lungs[box])
    # The same world point: voxel (0, 0, 0) of the crop is voxel (5, 3, 0) of the case.
    np.testing.assert_allclose(cropped.grid.TransformIndexToPhysicalPoint((0, 0, 0)),
                               case.grid.TransformIndexToPhysicalPoint((0, 3, 5)))


def test_emphysema_first_decoding_keeps_a_lesion_whose_subtype_is_uncertain() -> None:
    from drasclr_monailabel.segmentation.inference import class_labels

    # voxels: unsure subtype (bg 0.4), tie of subtypes, background at exactly 0.5, a sure subtype, clear background
    probabilities = np.array([[0.4, 0.2, 0.5, 0.1, 0.9],
                              [0.3, 0.4, 0.3, 0.1, 0.05],
                              [0.3, 0.4, 0.1, 0.1, 0.05],
                              [0.0, 0.0, 0.1, 0.7, 0.0]], dtype=np.float32).reshape(4, 1, 1, 5)
    assert class_labels(probabilities).ravel().tolist() == [1, 1, 0, 3, 0]
    assert np.argmax(probabilities, axis=0).ravel()[0] == 0  # the arg-max would call the first lesion background
    binary = np.random.default_rng(1).uniform(size=(1, 6, 7, 8)).astype(np.float32)
    binary = np.concatenate([binary, 1 - binary])
    np.testing.assert_array_equal(class_labels(binary), np.argmax(binary, axis=0))  # one foreground class: the arg-max


def test_a_higher_emphysema_threshold_labels_only_the_more_certain_voxels() -> None:
    from drasclr_monailabel.segmentation.inference import class_labels

    # emphysema probabilities 0.55, 0.65, 0.75, 0.85 split between two subtypes (subtype 2 the likelier)
    emphysema = np.array([0.55, 0.65, 0.75, 0.85], dtype=np.float32)
    probabilities = np.stack([1 - emphysema, 0.4 * emphysema, 0.6 * emphysema]).reshape(3, 1, 1, 4)
    assert class_labels(probabilities, threshold=0.5).ravel().tolist() == [2, 2, 2, 2]
    assert class_labels(probabilities, threshold=0.7).ravel().tolist() == [0, 0, 2, 2]
    assert class_labels(probabilities, threshold=0.9).ravel().tolist() == [0, 0, 0, 0]
    assert class_labels(probabilities, threshold=0.3).ravel().tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("slab", [1, 4, 16])  # slabs of the scan's 6 slices: single, uneven, all at once
@pytest.mark.parametrize("background_margin", [False, True])  # foreground everywhere; or only in a box, as in a lung grid
def test_labels_on_grid_decode_every_resampled_class_map(slab: int, background_margin: bool) -> None:
    import SimpleITK as sitk

    from drasclr_monailabel.io.volume import CTVolume
    from drasclr_monailabel.segmentation.inference import labels_on_grid

    rng = np.random.default_rng(0)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(3, 12, 14, 16)) * 3), dim=0).numpy().astype(np.float32)
    if background_margin:  # background only outside z 4-7, y 3-10, x 5-11: the resampled box is smaller than the grid
        outside = np.ones((12, 14, 16), dtype=bool)
        outside[4:8, 3:11, 5:12] = False
        probabilities[:, outside] = np.array([1.0, 0.0, 0.0], dtype=np.float32)[:, None]
    grid = sitk.Image(16, 14, 12, sitk.sitkFloat32)
    grid.SetSpacing((1.0, 1.0, 1.0))
    grid.SetOrigin((2.0, -1.0, 3.0))
    # The scan's grid: finer in-plane, thicker slices, and reaching past the 1 mm grid on every side.
    volume = CTVolume(hu=np.zeros((6, 40, 36), np.int16), spacing=(0.6, 0.5, 2.5), origin=(-1.0, -3.0, 1.0),
                      direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    reference = []
    for channel, default in zip(probabilities, (1.0, 0.0, 0.0)):
        image = sitk.GetImageFromArray(channel)
        image.CopyInformation(grid)
        reference.append(sitk.GetArrayFromImage(sitk.Resample(image, volume.to_sitk(), sitk.Transform(), sitk.sitkLinear,
                                                              default, sitk.sitkFloat32)))
    reference = np.stack(reference)
    expected = np.where(reference[0] < 0.5, np.argmax(reference[1:], axis=0) + 1, 0)
    assert not np.array_equal(expected, np.argmax(reference, axis=0))  # the decoding below is not the plain arg-max
    ours = labels_on_grid(probabilities, grid, volume, slab=slab)
    assert ours.shape == (6, 40, 36) and ours.dtype == np.uint8
    assert np.array_equal(ours, expected)
    assert set(np.unique(ours)) == {0, 1, 2}  # outside the grid background, inside every class
