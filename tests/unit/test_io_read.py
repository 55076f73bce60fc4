"""CT input: every supported format reads to the same HU and geometry; every bad input is refused
with one line that names the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io import CTVolume, read_ct
from drasclr_monailabel.io.dicom_writer import SeriesIdentity, write_dicom_series


@pytest.fixture(scope="module")
def small_ct(phantom_factory) -> CTVolume:
    """A 3 x 3 x 4 mm phantom: small enough to write in every format in milliseconds."""
    return phantom_factory(spacing=(3.0, 3.0, 4.0), seed=1).volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_volume_formats_round_trip(small_ct: CTVolume, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(small_ct.to_sitk(), str(path))
    volume = read_ct(path)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, small_ct.hu)
    np.testing.assert_allclose(volume.spacing, small_ct.spacing, rtol=1e-6)
    np.testing.assert_allclose(volume.origin, small_ct.origin, atol=1e-4)


@pytest.mark.parametrize("compression", ["none", "jpeg2000"])
def test_dicom_series_round_trip(small_ct: CTVolume, tmp_path: Path, compression: str) -> None:
    write_dicom_series(small_ct, tmp_path / "series", SeriesIdentity(series_description="phantom"), compression=compression)
    volume = read_ct(tmp_path / "series")
    np.testing.assert_array_equal(volume.hu, np.maximum(small_ct.hu, -1024))
    np.testing.assert_allclose(volume.spacing, small_ct.spacing, atol=1e-4)
    np.testing.assert_allclose(volume.origin, small_ct.origin, atol=1e-3)
    assert volume.description == "phantom"
    expected_syntax = "1.2.840.10008.1.2.4.90" if compression == "jpeg2000" else "1.2.840.10008.1.2.1"
    assert volume.metadata["transfer_syntax"] == expected_syntax


def test_dicom_series_sorted_by_position_not_file_name(small_ct: CTVolume, tmp_path: Path) -> None:
    paths = write_dicom_series(small_ct, tmp_path / "series")
    for i, path in enumerate(reversed(paths)):
        path.rename(path.with_name(f"x{i:04d}.dcm"))
    np.testing.assert_array_equal(read_ct(tmp_path / "series").hu, np.maximum(small_ct.hu, -1024))


def test_canonical_orientation_keeps_world_positions(small_ct: CTVolume) -> None:
    flipped = sitk.DICOMOrient(small_ct.to_sitk(), "RAI")
    volume = CTVolume.from_sitk(flipped, source="flipped")
    assert volume.orientation == "RAI"
    canonical = volume.canonical()
    assert canonical.orientation == "LPS"
    np.testing.assert_array_equal(canonical.hu, small_ct.hu)
    np.testing.assert_allclose(canonical.origin, small_ct.origin, atol=1e-4)


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as info:
        read_ct(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_path_refused(tmp_path: Path) -> None:
    assert "does not exist" in _refusal(tmp_path / "nope.nii.gz")


def test_garbage_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    message = _refusal(path)
    assert message.startswith(str(path)) and "cannot be read" in message


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file_refused(small_ct: CTVolume, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(small_ct.to_sitk(), str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    message = _refusal(path)
    assert message.startswith(str(path)) and "truncated or corrupt" in message


def test_compressed_nifti_with_damaged_data_but_an_intact_end_is_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    # ITK inflates such a file without complaint (the damaged voxels come out wrong); the check
    # inflates it whole, so its CRC catches the damage (the gzip length field alone would not)
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(small_ct.to_sitk(), str(path), useCompression=True)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in _refusal(path)


def test_nifti_cut_by_less_than_its_header_is_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    path = tmp_path / "scan.nii"
    sitk.WriteImage(small_ct.to_sitk(), str(path))
    path.write_bytes(path.read_bytes()[:-300])  # fewer bytes missing than the 352-byte header holds
    assert "truncated or corrupt" in _refusal(path)


def test_2d_image_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(small_ct.to_sitk()[:, :, 10], str(path))
    assert "2D image" in _refusal(path)


def test_png_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.png"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkUInt8), str(path))
    assert "2D PNG image" in _refusal(path)


def test_single_real_dicom_slice_refused() -> None:
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file("CT_small.dcm"))
    assert "single 2D DICOM slice" in _refusal(path)


def test_4d_image_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    path = tmp_path / "series4d.nii.gz"
    frames = [small_ct.to_sitk()[:20, :20, :5] for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    assert "4D image" in _refusal(path)


def test_8bit_stack_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    path = tmp_path / "stack.mha"
    stack = np.clip((small_ct.hu.astype(np.int32) + 1024) // 16, 0, 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(stack), str(path))
    assert "8-bit voxels" in _refusal(path)


def test_ct_without_rescale_intercept_refused_with_hint(small_ct: CTVolume, tmp_path: Path) -> None:
    path = tmp_path / "raw_ct.nii.gz"
    mr = (small_ct.hu.astype(np.int32) + 1024).astype(np.int16)
    image = sitk.GetImageFromArray(mr)
    sitk.WriteImage(image, str(path))
    message = _refusal(path)
    assert "do not look like CT Hounsfield units" in message and "subtract 1024" in message


@pytest.mark.parametrize("spacing", [(0.01, 0.01, 1.0), (1.0, 1.0, 50.0), (12.0, 12.0, 2.0)])
def test_absurd_spacing_refused(small_ct: CTVolume, tmp_path: Path, spacing) -> None:
    image = small_ct.to_sitk()
    image.SetSpacing(spacing)
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))
    assert "spacing" in _refusal(path)


def test_empty_folder_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "empty folder" in _refusal(tmp_path / "empty")


def test_png_stack_folder_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        sitk.WriteImage(sitk.Image(16, 16, sitk.sitkUInt8), str(folder / f"{i}.png"))
    assert "no DICOM image files" in _refusal(folder)


def test_mixed_series_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(small_ct, folder / "a", SeriesIdentity(series_description="lung"))
    write_dicom_series(small_ct, folder / "b", SeriesIdentity(series_description="soft tissue"))
    message = _refusal(folder)
    assert "holds 2 DICOM series" in message and "'lung'" in message and "'soft tissue'" in message


def test_truncated_series_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    paths = write_dicom_series(small_ct, tmp_path / "series")
    paths[30].unlink()
    paths[31].unlink()
    message = _refusal(tmp_path / "series")
    assert "truncated" in message and "2 slice(s) missing" in message


def test_mr_dicom_series_refused(small_ct: CTVolume, tmp_path: Path) -> None:
    import pydicom

    paths = write_dicom_series(small_ct, tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    assert "modality is MR, not CT" in _refusal(tmp_path / "series")


def test_truncated_pixel_data_names_the_file(small_ct: CTVolume, tmp_path: Path) -> None:
    paths = write_dicom_series(small_ct, tmp_path / "series")
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 5000])
    message = _refusal(tmp_path / "series")
    assert message.startswith(str(paths[5]))


def test_cli_info_prints_and_refuses(small_ct: CTVolume, tmp_path: Path) -> None:
    good = tmp_path / "good.nrrd"
    sitk.WriteImage(small_ct.to_sitk(), str(good))
    drasclr = [sys.executable, "-m", "drasclr_monailabel.cli.main"]
    ok = subprocess.run([*drasclr, "info", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "133x133x80" in ok.stdout and "LPS" in ok.stdout
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x00" * 100)
    before = sorted(p.name for p in tmp_path.iterdir())
    refused = subprocess.run([*drasclr, "info", str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("pixel_type", [sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkInt32, sitk.sitkInt16])
def test_from_sitk_rounds_and_clips_to_int16_for_every_pixel_type(pixel_type):
    values = np.array([[[-1.0e6, -1000.4, -999.6, 0.5, 1.5, 40.0, 32767.4, 1.0e6]]])
    image = sitk.Cast(sitk.GetImageFromArray(values), pixel_type) if pixel_type != sitk.sitkInt16 else \
        sitk.GetImageFromArray(np.clip(np.rint(values), -32768, 32767).astype(np.int16))
    hu = CTVolume.from_sitk(image).hu
    assert hu.dtype == np.int16
    expected = np.clip(np.rint(sitk.GetArrayFromImage(image).astype(np.float64)), -32768, 32767)
    assert np.array_equal(hu, expected)
    assert hu[0, 0, 0] == -32768 and hu[0, 0, -1] == 32767
