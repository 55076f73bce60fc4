"""2D image reading: DICOM (MONOCHROME1/2, CT lung window), PNG/JPEG, folders, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from drasclr_monailabel.errors import InputError
from drasclr_monailabel.io.images2d import list_images2d, read_image2d


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "DX",
                 frames: int = 1, intercept: float | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    if intercept is not None:
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.save_as(path, write_like_original=False)
    return path


@pytest.fixture()
def ramp() -> np.ndarray:
    """A 40 x 50 ramp of raw detector values 1000 .. 4920."""
    return (1000 + 80 * np.arange(50)[None, :] + np.zeros((40, 1))).astype(np.uint16)


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path, ramp: np.ndarray) -> None:
    plain = read_image2d(_write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))
    inverted = read_image2d(_write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    assert plain.pixels.shape == (40, 50) and plain.pixels.dtype == np.float32
    assert not plain.inverted and inverted.inverted
    np.testing.assert_allclose(inverted.pixels, 1.0 - plain.pixels, atol=1e-6)
    assert plain.pixels[:, 0].max() == 0.0 and plain.pixels[:, -1].min() == 1.0  # percentiles span [0, 1]


def test_real_chest_radiograph_is_monochrome1_and_lungs_come_out_dark(sample_chest_radiograph: Path) -> None:
    image = read_image2d(sample_chest_radiograph)
    raw = pydicom.dcmread(sample_chest_radiograph).pixel_array.astype(np.float64)
    assert image.modality == "CR" and image.inverted
    assert image.pixels.shape == raw.shape and 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    # MONOCHROME1: high stored values are dark, so the output must fall where the raw value rises
    assert np.corrcoef(image.pixels[::8, ::8].ravel(), raw[::8, ::8].ravel())[0, 1] < -0.95
    h, w = image.pixels.shape
    lungs = image.pixels[h // 3 : h // 2, w // 5 : w // 3].mean()  # right lung field (image left)
    spine = image.pixels[h // 3 : h // 2, w // 2 - 20 : w // 2 + 20].mean()
    assert lungs < spine


def test_ct_slice_uses_the_lung_window(sample_ct_slice: Path) -> None:
    image = read_image2d(sample_ct_slice)
    ds = pydicom.dcmread(sample_ct_slice)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image.pixels, (np.clip(hu, -1024, 240) + 1024) / 1264, atol=1e-6)


def test_png_grey_colour_and_16_bit(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (20, 1))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(read_image2d(tmp_path / "grey.png").pixels, grey / 255.0, atol=1e-6)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "colour.jpg", quality=100)
    assert np.abs(read_image2d(tmp_path / "colour.jpg").pixels - grey / 255.0).max() < 0.05
    wide = (np.tile(np.arange(64), (20, 1)) * 500).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    pixels = read_image2d(tmp_path / "wide.png").pixels
    assert pixels.min() == 0.0 and pixels.max() == 1.0 and np.all(np.diff(pixels[0]) >= 0)


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("missing.png", None, "does not exist"),
    ("garbage.png", b"not an image at all", "cannot be read as an image"),
    ("garbage.dcm", b"\0" * 200, "cannot be read as DICOM"),
    ("notes.txt", b"hello", "unknown 2D image type"),
])
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as error:
        read_image2d(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_blank_tiny_and_multiframe_images_are_refused(tmp_path: Path, ramp: np.ndarray) -> None:
    Image.fromarray(np.full((30, 30), 7, dtype=np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(InputError, match="blank"):
        read_image2d(tmp_path / "blank.png")
    Image.fromarray(np.arange(80, dtype=np.uint8).reshape(8, 10)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match="at least 16"):
        read_image2d(tmp_path / "tiny.png")
    with pytest.raises(InputError, match="2 frames"):
        read_image2d(_write_dicom(tmp_path / "cine.dcm", np.stack([ramp, ramp]), frames=2))


def test_list_images2d_searches_folders_and_refuses_empty_ones(tmp_path: Path, ramp: np.ndarray) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20)).save(tmp_path / "a" / "x.png")
    _write_dicom(tmp_path / "a" / "b" / "IM0001", ramp)  # DICOM without a suffix
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    assert list_images2d([tmp_path / "a"]) == [tmp_path / "a" / "b" / "IM0001", tmp_path / "a" / "x.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no 2D image"):
        list_images2d([tmp_path / "empty"])
    with pytest.raises(InputError, match="does not exist"):
        list_images2d([tmp_path / "nowhere"])
