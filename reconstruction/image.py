"""Stored pixel data and its meaning, as a detector or a DICOM file gives it.

The reconstruction receives the stored values untouched plus the few
attributes that say how to read them (DICOM PS3.3 C.7.6.3 Image Pixel and
C.11.1 Modality LUT), so that the intensity handling is part of the timed,
pure pipeline and is the same for a simulated frame and a DICOM file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconstruction.errors import InputError


@dataclass(frozen=True)
class RawImage:
    """Stored pixel values of one view and how to interpret them.

    Attributes
    ----------
    pixels : ndarray, shape (rows, columns)
        Stored values (unsigned or signed integers), row 0 at the top.
    photometric : str
        ``"MONOCHROME1"`` (high value displayed dark) or ``"MONOCHROME2"``.
    bits_stored : int
        Significant bits of each stored value; higher bits are ignored.
    rescale_slope, rescale_intercept : float
        Modality LUT: output = slope * stored + intercept.
    """

    pixels: np.ndarray
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0

    def __post_init__(self) -> None:
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise InputError(f"image: unsupported PhotometricInterpretation {self.photometric!r}")
        if self.pixels.ndim != 2:
            raise InputError(f"image: expected a 2D pixel array, got shape {self.pixels.shape}")
        if not 1 <= self.bits_stored <= 16:
            raise InputError(f"image: BitsStored must be 1..16, got {self.bits_stored}")


def to_display(image: RawImage) -> np.ndarray:
    """Return float32 values in which radio-opaque markers are bright.

    Masks the stored values to ``bits_stored``, applies the Modality LUT, and
    inverts MONOCHROME1 so that, for both photometric interpretations, a larger
    value means more attenuation (displayed brighter).
    """
    px = image.pixels
    if np.issubdtype(px.dtype, np.unsignedinteger) and image.bits_stored < px.dtype.itemsize * 8:
        px = px & np.array((1 << image.bits_stored) - 1, dtype=px.dtype)
    out = px.astype(np.float32)
    if image.rescale_slope != 1.0 or image.rescale_intercept != 0.0:
        out *= np.float32(image.rescale_slope)
        out += np.float32(image.rescale_intercept)
    if image.photometric == "MONOCHROME1":
        np.negative(out, out=out)
    return out
