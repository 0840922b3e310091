"""Stored pixel data and its meaning, as a detector or a DICOM file gives it.

The reconstruction receives the stored values untouched plus the few
attributes that say how to read them (DICOM PS3.3 C.7.6.3 Image Pixel and
C.11.1 Modality LUT), so that the intensity handling is part of the timed,
pure pipeline and is the same for a simulated frame and a DICOM file.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
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
    intensity_relationship : str
        DICOM Pixel Intensity Relationship (0028,1040): ``"LOG"`` (values
        logarithmic in the X-ray intensity, as processed radiographs are; also
        assumed when a file does not say) or ``"LIN"`` (proportional to it, as a
        detector's raw "for processing" images are).
    intensity_sign : int
        Pixel Intensity Relationship Sign (0028,1041): ``+1`` if a higher value
        means more intensity, ``-1`` if less; 0 when not given, then taken from
        the photometric interpretation (markers displayed bright: -1 for
        MONOCHROME2, +1 for MONOCHROME1).
    """

    pixels: np.ndarray
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    intensity_relationship: str = "LOG"
    intensity_sign: int = 0

    def __post_init__(self) -> None:
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise InputError(f"image: unsupported PhotometricInterpretation {self.photometric!r}")
        if self.pixels.ndim != 2:
            raise InputError(f"image: expected a 2D pixel array, got shape {self.pixels.shape}")
        if not 1 <= self.bits_stored <= 16:
            raise InputError(f"image: BitsStored must be 1..16, got {self.bits_stored}")
        if self.intensity_sign not in (-1, 0, 1):
            raise InputError(
                f"image: PixelIntensityRelationshipSign must be +1 or -1, got {self.intensity_sign}"
            )

    @property
    def linear(self) -> bool:
        """Stored values proportional to the X-ray intensity (DICOM ``LIN``)."""
        return self.intensity_relationship.strip().upper() == "LIN"


#: Display units per natural-log unit of intensity for linear images (values of the
#: order of a 14-bit log image's, so that float32 keeps the noise's digits).
LOG_GAIN = 1000.0
#: Smallest intensity (stored levels) of a linear image, so that a zero does not
#: go to infinity. Flattening photon-starved areas instead (2, 4, 8 levels) was
#: measured on 12-bit linear exams (fifth session): 2 and 4 kept a false marker,
#: 8 removed it but lost cage markers (two retakes) and beads (recall 0.40).
LINEAR_FLOOR_LEVELS = 0.5


def display_values(values: np.ndarray, image: RawImage) -> np.ndarray:
    """Stored values (float32, bits above BitsStored cleared) to display values, in place.

    The Modality LUT (``slope * stored + intercept``), then markers made bright:
    MONOCHROME1 is negated. A linear image (``image.linear``) is taken to the
    logarithm instead, ``-LOG_GAIN * ln(intensity)``: an attenuation image like
    the processed radiographs the detection was measured on, where an
    anatomical edge is a step of the same height wherever the exposure is, not
    one in proportion to it. The relationship and its sign describe the stored
    values (DICOM PS3.3 C.8.11.3.1.2), so the intensity is the stored value
    (sign +1) or the largest stored value minus it (sign -1; the photometric
    interpretation's convention when the sign is not given), floored at
    :data:`LINEAR_FLOOR_LEVELS`; the Modality LUT, a linear map, would only add
    a constant or, with an intercept, bend the logarithm. For a LOG image the
    photometric interpretation orients the values, as it always did.
    """
    if image.linear:
        sign = image.intensity_sign or (1 if image.photometric == "MONOCHROME1" else -1)
        if sign < 0:
            signed = np.issubdtype(image.pixels.dtype, np.signedinteger)
            top = (1 << (image.bits_stored - 1 if signed else image.bits_stored)) - 1
            np.subtract(np.float32(top), values, out=values)
        np.maximum(values, np.float32(LINEAR_FLOOR_LEVELS), out=values)
        if values.flags.c_contiguous:
            cv2.log(values, dst=values)
        else:
            np.log(values, out=values)
        values *= np.float32(-LOG_GAIN)
        return values
    if image.rescale_slope != 1.0 or image.rescale_intercept != 0.0:
        values *= np.float32(image.rescale_slope)
        values += np.float32(image.rescale_intercept)
    if image.photometric == "MONOCHROME1":
        np.negative(values, out=values)
    return values


def clear_high_bits(px: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored values with the bits above ``bits_stored`` cleared (a copy only when
    any is set: most detectors leave them 0)."""
    if np.issubdtype(px.dtype, np.unsignedinteger) and bits_stored < px.dtype.itemsize * 8:
        limit = (1 << bits_stored) - 1
        if px.size and int(px.max()) > limit:
            px = px & np.array(limit, dtype=px.dtype)
    return px


def to_display(image: RawImage) -> np.ndarray:
    """Return float32 values in which radio-opaque markers are bright.

    Masks the stored values to ``bits_stored`` and applies :func:`display_values`:
    the Modality LUT, the logarithm of a linear image, and the inversion of
    MONOCHROME1, so that a larger value means more attenuation.
    """
    px = clear_high_bits(image.pixels, image.bits_stored)
    return display_values(px.astype(np.float32), image)
