"""DICOM reading: pixel meaning, compressed transfer syntaxes, one-line errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from acquisition.dicom_reader import check_against_detector, read_dicom, read_raw_image
from reconstruction.errors import InputError
from reconstruction.geometry import Detector
from reconstruction.image import LINEAR_FLOOR_LEVELS, LOG_GAIN, to_display

ROWS, COLS = 64, 48
DET = Detector(
    np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0.15, 0.15]), ROWS, COLS
)


def make_ds(pixels=None, photometric="MONOCHROME2", bits=14, spacing=(0.15, 0.15), **extra):
    rng = np.random.default_rng(0)
    if pixels is None:
        pixels = rng.integers(0, 1 << bits, size=(ROWS, COLS)).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if spacing is not None:
        ds.ImagerPixelSpacing = list(spacing)
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.tobytes()
    return ds, pixels


def save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def test_reads_pixels_and_their_meaning(tmp_path):
    ds, px = make_ds(photometric="MONOCHROME1", RescaleSlope="2", RescaleIntercept="-5")
    raw = read_raw_image(save(ds, tmp_path / "a.dcm"), DET, "A")
    assert np.array_equal(raw.pixels, px)
    assert raw.photometric == "MONOCHROME1" and raw.bits_stored == 14
    assert raw.rescale_slope == 2.0 and raw.rescale_intercept == -5.0
    # markers bright: MONOCHROME1 inverts, after the modality LUT
    assert np.allclose(to_display(raw), -(2.0 * px - 5))


@pytest.mark.parametrize("sign", [1, -1])
def test_a_linear_image_is_taken_to_the_logarithm(tmp_path, sign):
    # Pixel Intensity Relationship LIN (0028,1040) and its sign (0028,1041)
    # describe the stored values (PS3.3 C.8.11.3.1.2): the display is an
    # attenuation image, -ln(intensity) scaled, markers bright; a rescale does
    # not enter it
    ds, px = make_ds(
        photometric="MONOCHROME2",
        PixelIntensityRelationship="LIN",
        PixelIntensityRelationshipSign=sign,
        RescaleSlope="2",
        RescaleIntercept="3",
    )
    raw = read_raw_image(save(ds, tmp_path / "lin.dcm"), DET, "A")
    assert raw.linear and raw.intensity_sign == sign
    intensity = px.astype(float) if sign > 0 else (2**14 - 1) - px.astype(float)
    want = -LOG_GAIN * np.log(np.maximum(intensity, LINEAR_FLOOR_LEVELS))
    assert np.allclose(to_display(raw), want, rtol=1e-5, atol=1e-2)


def test_a_linear_image_ignores_a_modality_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds, px = make_ds(PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=1)
    item = Dataset()
    item.LUTDescriptor = [2**14, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "OW", (np.arange(2**14) // 4).astype("<u2").tobytes())
    ds.ModalityLUTSequence = Sequence([item])
    raw = read_raw_image(save(ds, tmp_path / "lut.dcm"), DET, "A")
    assert np.array_equal(raw.pixels, px)
    want = -LOG_GAIN * np.log(np.maximum(px.astype(float), LINEAR_FLOOR_LEVELS))
    assert np.allclose(to_display(raw), want, rtol=1e-5, atol=1e-2)


def test_a_log_image_or_one_that_does_not_say_is_read_as_before(tmp_path):
    for extra in ({}, {"PixelIntensityRelationship": "LOG", "PixelIntensityRelationshipSign": -1}):
        ds, px = make_ds(photometric="MONOCHROME2", **extra)
        raw = read_raw_image(save(ds, tmp_path / "log.dcm"), DET, "A")
        assert not raw.linear
        assert np.array_equal(to_display(raw), px.astype(np.float32))


@pytest.mark.parametrize("sign", [3, -2])
def test_a_garbled_intensity_sign_is_a_one_line_error(tmp_path, sign):
    ds, _ = make_ds(PixelIntensityRelationship="LIN", PixelIntensityRelationshipSign=sign)
    with pytest.raises(InputError, match="PixelIntensityRelationshipSign") as e:
        read_raw_image(save(ds, tmp_path / "bad.dcm"), DET, "A")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("syntax", ["JPEGLosslessSV1", "JPEG2000Lossless", "RLELossless"])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    ds, px = make_ds(
        bits=12, pixels=np.arange(ROWS * COLS, dtype=np.uint16).reshape(ROWS, COLS) % 4096
    )
    if syntax == "JPEGLosslessSV1":
        # pydicom has no JPEG Lossless encoder: Debian dcmtk's dcmcjpeg (installed by
        # `make test`) writes Process 14 SV1 (+e1 = 1.2.840.10008.1.2.4.70)
        plain = save(ds, tmp_path / "plain.dcm")
        path = tmp_path / "c.dcm"
        subprocess.run(["dcmcjpeg", "+e1", str(plain), str(path)], check=True)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    else:
        ds.compress(getattr(pydicom.uid, syntax))
        path = save(ds, tmp_path / "c.dcm")
    raw = read_raw_image(path, DET, "A")
    assert np.array_equal(raw.pixels, px)


def test_unusable_files_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_dicom(tmp_path / "missing.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom(tmp_path / "text.dcm")
    ds, _ = make_ds()
    path = save(ds, tmp_path / "t.dcm")
    data = path.read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError, match="pixel data") as err:
        read_dicom(tmp_path / "trunc.dcm")
    assert "\n" not in str(err.value) and "trunc.dcm" in str(err.value)
    ds, _ = make_ds()
    del ds.PixelData
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom(save(ds, tmp_path / "nopix.dcm"))
    ds, _ = make_ds(photometric="RGB")
    with pytest.raises(InputError, match="PhotometricInterpretation"):
        read_dicom(save(ds, tmp_path / "rgb.dcm"))


def test_image_must_match_the_station_detector(tmp_path):
    ds, _ = make_ds(pixels=np.zeros((ROWS, COLS + 2), np.uint16))
    img = read_dicom(save(ds, tmp_path / "size.dcm"))
    with pytest.raises(InputError, match="64x50 pixels but the station's detector A is 64x48"):
        check_against_detector(img, DET, "A")
    ds, _ = make_ds(spacing=(0.152, 0.15))  # 1.3 % off
    img = read_dicom(save(ds, tmp_path / "sp.dcm"))
    with pytest.raises(InputError, match="more than 1%"):
        check_against_detector(img, DET, "A")
    ds, _ = make_ds(spacing=(0.1514, 0.1499))  # within 1 %
    check_against_detector(read_dicom(save(ds, tmp_path / "ok.dcm")), DET, "A")
    ds, _ = make_ds(spacing=None, PixelSpacing=[0.15, 0.15])  # falls back to PixelSpacing
    check_against_detector(read_dicom(save(ds, tmp_path / "ps.dcm")), DET, "A")
    ds, _ = make_ds(spacing=None)
    with pytest.raises(InputError, match="ImagerPixelSpacing missing"):
        check_against_detector(read_dicom(save(ds, tmp_path / "nosp.dcm")), DET, "A")


def test_jpeg_lossless_is_decoded_through_the_plugins():
    """No JPEG Lossless encoder here: pydicom's own sample (RGB) proves the decoder path."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg_gdcm.dcm")
    if path is None:
        pytest.skip("pydicom's sample files are not installed")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
    assert ds.pixel_array.shape[-1] == 3  # decoded
    with pytest.raises(InputError, match="greyscale"):
        read_dicom(path)


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless"])
def test_truncated_compressed_pixel_data_is_one_error_and_no_warning(tmp_path, syntax):
    """pydicom only warns ("End of file reached before delimiter") on cut encapsulated data."""
    import warnings

    ds, _ = make_ds(bits=12)
    try:
        ds.compress(getattr(pydicom.uid, syntax))
    except Exception as exc:
        pytest.skip(f"cannot encode {syntax} here: {exc}")
    data = save(ds, tmp_path / "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the reader fails the test
        with pytest.raises(InputError, match="truncated pixel data") as err:
            read_dicom(cut)
    assert "\n" not in str(err.value) and "cut.dcm" in str(err.value)
