"""Data of the joint image-volume method: finding volumes, slice stacks (orientation, body crop,
atlas z), reproducible batches, the resumable sampler, and device augmentation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.readers import read_ct
from drasclr_monailabel.models.volume_transformer import POSITION_ATLAS, POSITION_RELATIVE
from drasclr_monailabel.ssl.joint2d3d.augment import SliceAugmenter
from drasclr_monailabel.ssl.joint2d3d.config import CropConfig
from drasclr_monailabel.ssl.joint2d3d.data import JointBatchSampler, JointDataset
from drasclr_monailabel.ssl.joint2d3d.sources import find_volumes
from drasclr_monailabel.ssl.joint2d3d.stacks import AtlasZ, StackSettings, StackStore, image_to_square, load_stack, stack_from_volume

SETTINGS = StackSettings(store_size=40, slice_spacing_mm=10.0, body_threshold_hu=-500.0)


def test_find_volumes_in_folders_manifests_and_caches(tmp_path: Path, phantom_volume_dir: Path, synthetic_cache: Path) -> None:
    entries = find_volumes(phantom_volume_dir)
    assert [e.volume_id for e in entries] == ["phantom0", "phantom1", "phantom2"] and not any(e.cached for e in entries)
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"id,image,severity\ncase-a,{phantom_volume_dir / 'phantom1.nii.gz'},3\ncase-b,../b.nii.gz,1\n")
    with pytest.raises(InputError, match="names a volume that does not exist: .*b.nii.gz"):
        find_volumes(manifest.parent)
    (tmp_path / "b.nii.gz").write_bytes(b"")
    assert [e.volume_id for e in find_volumes(manifest)] == ["case-a", "case-b"]
    cached = find_volumes(synthetic_cache)
    assert len(cached) == 6 and all(e.cached for e in cached) and cached[0].path == synthetic_cache / "synth000"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no CT scans"):
        find_volumes(tmp_path / "empty")


def test_stack_is_lps_windowed_and_cropped_to_the_body(phantom_volume_dir: Path) -> None:
    volume = read_ct(phantom_volume_dir / "phantom0.nii.gz")
    stack = stack_from_volume(volume, SETTINGS)
    z_extent = (volume.hu.shape[0] - 1) * volume.spacing[2]
    assert stack.pixels.shape == (int(z_extent // 10) + 1, 40, 40) and stack.pixels.dtype == np.float16
    assert stack.kind == POSITION_RELATIVE and stack.positions[0] == -1 and stack.positions[-1] == 1
    assert 0.0 <= float(stack.pixels.min()) and float(stack.pixels.max()) <= 1.0
    middle = stack.pixels[len(stack.pixels) // 2].astype(np.float32)
    # the square holds the body: tissue reaches (nearly) the left and right edges, air stays small
    assert (middle[20, :3] > 0.5).any() or (middle[20, -3:] > 0.5).any()
    flipped = sitk.Flip(volume.to_sitk(), [False, False, True])  # same anatomy stored head-first (z reversed)
    again = stack_from_volume(replace(volume, hu=sitk.GetArrayFromImage(flipped), origin=flipped.GetOrigin(),
                                      direction=flipped.GetDirection()), SETTINGS)
    np.testing.assert_allclose(again.pixels.astype(np.float32), stack.pixels.astype(np.float32), atol=2e-3)


def test_cache_scans_get_atlas_z_positions(synthetic_cache: Path, synthetic_atlas: Path) -> None:
    atlas = AtlasZ.from_atlas_dir(synthetic_atlas)
    entry = find_volumes(synthetic_cache)[0]
    stack = load_stack(entry, SETTINGS, atlas)
    assert stack.kind == POSITION_ATLAS
    # identity transform, 1 mm grid from origin 0: slice k of the stack lies at z = 10 k mm
    expected = (10.0 * np.arange(len(stack.positions)) - atlas.centre_z) / atlas.half_extent_z
    np.testing.assert_allclose(stack.positions, expected, rtol=1e-5)
    with pytest.raises(InputError, match="registered to atlas 'synthetic-grid'"):
        load_stack(entry, SETTINGS, replace(atlas, atlas_id="another"))
    with pytest.raises(InputError, match="an atlas is needed"):
        load_stack(entry, SETTINGS, None)


def test_stack_store_builds_once_and_rebuilds_for_changed_scans_or_settings(tmp_path: Path, phantom_volume_dir: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes((phantom_volume_dir / "phantom0.nii.gz").read_bytes())
    entry = find_volumes(scan)[0]
    store = StackStore(tmp_path / "stacks", SETTINGS)
    built = store.get(entry)
    stored = sorted(p.name for p in (tmp_path / "stacks").iterdir())
    assert len(stored) == 2 and stored[0].startswith("scan-") and stored[0].endswith(".pixels.npy")
    read = store.get(entry)
    assert isinstance(read.pixels, np.memmap)
    np.testing.assert_array_equal(read.pixels, built.pixels)
    np.testing.assert_array_equal(read.positions, built.positions)
    assert StackStore(tmp_path / "stacks", replace(SETTINGS, store_size=32)).key(entry) != store.key(entry)
    key = store.key(entry)
    scan.write_bytes((phantom_volume_dir / "phantom1.nii.gz").read_bytes())
    assert store.key(entry) != key


def test_image_to_square_pads_with_black_and_keeps_aspect() -> None:
    square = image_to_square(np.ones((20, 40), dtype=np.float32), 16)
    assert square.shape == (16, 16) and square.dtype == np.float16
    assert float(square[0, 8]) == 0.0 and float(square[8, 8]) == 1.0


def _dataset(phantom_volume_dir: Path, images: list[Path], stack_dir: Path) -> JointDataset:
    return JointDataset(images, find_volumes(phantom_volume_dir), StackStore(stack_dir, SETTINGS), slices_per_volume=4, num_slices=6,
                        min_coverage=0.6, seed=3)


def test_same_key_gives_the_same_batch_and_epochs_move_the_slices(tmp_path: Path, phantom_volume_dir: Path,
                                                                   small_png_images: list[Path]) -> None:
    dataset = _dataset(phantom_volume_dir, small_png_images, tmp_path)
    assert dataset.n_items == 2 + 3 * 4
    sampler = JointBatchSampler(dataset.n_items, 3, batch_size=5, volumes_per_batch=2, uses_volumes=lambda step: True)
    key = sampler.rank_keys(0)[0]
    first, again = dataset[key], _dataset(phantom_volume_dir, small_png_images, tmp_path)[key]  # built, then read back
    for name in first:
        torch.testing.assert_close(first[name], again[name])
    assert first["items"].shape == (len(key.items), 1, 40, 40) and first["views"].shape == (2, 2, 6, 40, 40)
    assert first["positions"].shape == (2, 2, 6) and (first["positions"].diff(dim=2) > 0).all()  # views run upwards
    volume_item = 2 + 4 + 1  # volume 1, bin 1
    assert not np.array_equal(dataset.read_item(volume_item, epoch=0), dataset.read_item(volume_item, epoch=1))
    np.testing.assert_array_equal(dataset.read_item(0, epoch=0), dataset.read_item(0, epoch=1))  # an image stays itself


def test_sampler_covers_every_item_once_per_epoch_and_resumes_mid_epoch() -> None:
    sampler = JointBatchSampler(23, 4, batch_size=5, volumes_per_batch=3, uses_volumes=lambda step: step >= 3)
    keys = sampler.rank_keys(0)
    assert sorted(i for key in keys for i in key.items) == list(range(23))
    assert all(2 <= len(key.items) <= 5 for key in keys) and sampler.batches_per_epoch == 5
    assert [len(key.volumes) for key in keys] == [0, 0, 0, 3, 3] and all(len(set(k.volumes)) == 3 for k in keys[3:])
    sampler.set_epoch(1, start=2)
    assert list(sampler) == sampler.rank_keys(1)[2:] and len(sampler) == 3
    assert sampler.rank_keys(1) != keys
    ranks = [JointBatchSampler(23, 4, 5, 3, lambda step: False, rank=r, world_size=2) for r in range(2)]
    batches = [key.items for r in ranks for key in r.rank_keys(0)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and set(i for b in batches for i in b) == set(range(23))


def test_multi_crop_shapes_ranges_and_reproducibility() -> None:
    config = CropConfig(global_size=32, local_size=32, local_crops=3, noise_std=0.0)
    images = torch.rand(4, 1, 40, 40)
    jitter = torch.tensor([True, False, True, False])
    glob, local = SliceAugmenter(config).multi_crop(images, jitter, torch.Generator().manual_seed(0))
    assert glob.shape == (8, 1, 32, 32) and local.shape == (12, 1, 32, 32)
    assert float(glob.min()) >= -1.0 and float(glob.max()) <= 1.0
    again, _ = SliceAugmenter(config).multi_crop(images, jitter, torch.Generator().manual_seed(0))
    torch.testing.assert_close(glob, again)
    assert not torch.allclose(glob[:4], glob[4:])  # the two global crops of a sample differ


def test_intensity_jitter_only_where_asked() -> None:
    config = CropConfig(global_size=32, local_crops=0, noise_std=0.0, blur_p=0.0, global_scale=(0.3, 0.5))
    flat = torch.full((2, 1, 40, 40), 0.3)  # a uniform CT-like patch: a crop inside it keeps its value
    glob, _ = SliceAugmenter(config).multi_crop(flat, torch.tensor([False, True]), torch.Generator().manual_seed(2))
    kept, jittered = glob.view(2, 2, 32, 32)[:, 0], glob.view(2, 2, 32, 32)[:, 1]
    torch.testing.assert_close(kept, torch.full_like(kept, 2 * 0.3 - 1))  # density preserved
    assert (jittered - (2 * 0.3 - 1)).abs().min() > 1e-4


def test_slices_of_a_volume_view_share_their_crop() -> None:
    config = CropConfig(global_size=32, noise_std=0.0, blur_p=0.5)
    pattern = torch.rand(1, 1, 1, 1, 40, 40)
    views = pattern.expand(2, 2, 5, 1, 40, 40).reshape(2, 2, 5, 40, 40).contiguous()  # every slice identical
    out = SliceAugmenter(config).volume_views(views, True, torch.Generator().manual_seed(1)).view(4, 5, 32, 32)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))  # same crop and intensity along a view
    assert not torch.allclose(out[0, 0], out[1, 0])  # the two views differ
