"""Read a DX/CR DICOM file into a :class:`reconstruction.image.RawImage`.

Only what the reconstruction needs is taken from the file: the stored pixel
values (decoded through pydicom's pixel-data handlers, so JPEG Lossless and
JPEG 2000 work through the pylibjpeg plugins), PhotometricInterpretation,
BitsStored, the Modality LUT (Rescale Slope/Intercept, or a Modality LUT
Sequence, PS3.3 C.11.1) and the attributes checked against the station:
Rows, Columns and ImagerPixelSpacing (PS3.3 C.8.11.4; PixelSpacing when it is
absent). Every failure is one :class:`InputError` line naming the file.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconstruction.errors import InputError
from reconstruction.geometry import Detector
from reconstruction.image import RawImage

SPACING_TOLERANCE = 0.01  # CONTRACT.md: ImagerPixelSpacing within 1 %


@dataclass(frozen=True)
class DicomImage:
    """A decoded image and the attributes checked against the station."""

    path: str
    raw: RawImage
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None
    spacing_attribute: str | None


def _spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    for name in ("ImagerPixelSpacing", "PixelSpacing"):
        v = ds.get(name)
        if v is not None:
            try:
                vals = [float(x) for x in v]
            except (TypeError, ValueError):
                return None, name
            if len(vals) == 2 and all(np.isfinite(vals)) and min(vals) > 0:
                return (vals[0], vals[1]), name
            return None, name
    return None, None


def read_dicom(path: str | os.PathLike) -> DicomImage:
    """Read and decode one DICOM image; raise :class:`InputError` on any problem."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: image file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a DICOM image file")
    # pydicom reports a file cut inside encapsulated (compressed) pixel data only by a
    # UserWarning ("End of file reached before delimiter") and then drops the element;
    # warnings are recorded, never printed, and that one becomes a one-line InputError.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dcmread(p)
    _raise_if_truncated(p, caught)
    return _decode(p, ds)


def _raise_if_truncated(p: Path, caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        text = str(w.message)
        low = text.lower()
        if "end of file" in low or "truncat" in low or "delimiter" in low:
            first = text.splitlines()[0] if text else "end of file"
            raise InputError(f"{p}: truncated pixel data ({first})")


def _dcmread(p: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(p)
    except InvalidDicomError:
        raise InputError(f"{p}: not a DICOM file") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{p}: cannot read DICOM file: {exc}") from None
    except Exception as exc:  # a corrupt header is the file's problem, not ours
        raise InputError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def _decode(p: Path, ds) -> DicomImage:
    if "PixelData" not in ds:
        raise InputError(f"{p}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InputError(f"{p}: DICOM file lacks Rows/Columns") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{p}: expected a greyscale image (SamplesPerPixel 1)")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError(f"{p}: expected a single-frame image")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(
            f"{p}: PhotometricInterpretation {photometric or 'missing'}, "
            "expected MONOCHROME1 or MONOCHROME2"
        )
    bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if not 1 <= bits_stored <= 16:
        raise InputError(f"{p}: BitsStored {bits_stored} is not supported (1..16)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pixels = ds.pixel_array
        _raise_if_truncated(p, caught)
    except InputError:
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if "length" in msg.lower() or "truncat" in msg.lower() or "expected" in msg.lower():
            raise InputError(f"{p}: truncated pixel data ({msg})") from None
        raise InputError(
            f"{p}: cannot decode pixel data"
            + (f" (transfer syntax {ts.name if hasattr(ts, 'name') else ts})" if ts else "")
            + f": {msg}"
        ) from None
    if pixels.shape != (rows, cols):
        raise InputError(f"{p}: pixel data is {pixels.shape}, expected {rows}x{cols}")
    slope, intercept = 1.0, 0.0
    relationship = ds.get("PixelIntensityRelationship", "") or "LOG"
    if not isinstance(relationship, str):  # a multi-valued element
        relationship = str(relationship[0]) if len(relationship) else "LOG"
    relationship = relationship.strip().upper()
    try:
        sign = float(ds.get("PixelIntensityRelationshipSign", 0) or 0)
    except (TypeError, ValueError):
        raise InputError(f"{p}: PixelIntensityRelationshipSign is not a number") from None
    if sign not in (-1.0, 0.0, 1.0):
        raise InputError(f"{p}: PixelIntensityRelationshipSign must be +1 or -1, got {sign:g}")
    # a linear image is read from its stored values (the relationship describes
    # them), so a Modality LUT Sequence is not applied to it
    if relationship != "LIN" and "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        from pydicom.pixels import apply_modality_lut

        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            pixels = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    else:
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except (TypeError, ValueError):
            raise InputError(f"{p}: RescaleSlope/RescaleIntercept are not numbers") from None
    spacing, attr = _spacing(ds)
    try:
        raw = RawImage(
            pixels,
            photometric=photometric,
            bits_stored=bits_stored,
            rescale_slope=slope,
            rescale_intercept=intercept,
            intensity_relationship=relationship,
            intensity_sign=int(sign),
        )
    except InputError as exc:
        raise InputError(f"{p}: {exc}") from None
    return DicomImage(str(p), raw, rows, cols, spacing, attr)


def check_against_detector(img: DicomImage, detector: Detector, view: str) -> None:
    """Raise :class:`InputError` if the image does not match the station's detector."""
    if (img.rows, img.columns) != (detector.rows, detector.columns):
        raise InputError(
            f"{img.path}: image is {img.rows}x{img.columns} pixels but the station's "
            f"detector {view} is {detector.rows}x{detector.columns}"
        )
    if img.pixel_spacing_mm is None:
        what = img.spacing_attribute or "ImagerPixelSpacing"
        raise InputError(f"{img.path}: {what} missing or invalid, cannot check the detector")
    want = np.asarray(detector.pixel_spacing_mm, float)
    got = np.asarray(img.pixel_spacing_mm, float)
    if np.any(np.abs(got - want) > SPACING_TOLERANCE * want):
        raise InputError(
            f"{img.path}: {img.spacing_attribute} {got.tolist()} mm differs from the station's "
            f"detector {view} ({want.tolist()} mm) by more than 1%"
        )


def read_raw_image(
    path: str | os.PathLike, detector: Detector | None = None, view: str = ""
) -> RawImage:
    """Read a DICOM image; when ``detector`` is given, check it matches (size, spacing)."""
    img = read_dicom(path)
    if detector is not None:
        check_against_detector(img, detector, view)
    return img.raw
