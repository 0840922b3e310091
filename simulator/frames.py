"""A detector frame: stored pixel values plus what a detector SDK reports with them.

The same object comes from the virtual detectors and, through an adapter, from
a real detector; the DX writer (``acquisition.dicom_writer``) and the
reconstruction (through :meth:`Frame.to_raw_image`) take it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from reconstruction.geometry import ViewGeometry
from reconstruction.image import RawImage


@dataclass(frozen=True)
class FrameMeta:
    """What a detector and the exposure report say about one frame.

    Attributes
    ----------
    view : str
        ``"A"`` or ``"B"``.
    photometric : str
        ``"MONOCHROME1"`` (high value displayed dark) or ``"MONOCHROME2"``.
    bits_stored : int
        Significant bits of each stored value (12..16).
    rescale_slope, rescale_intercept : float
        Modality LUT of the stored values (identity for the virtual detectors).
    imager_pixel_spacing_mm : tuple of float
        ``[row spacing, column spacing]`` at the detector front plane.
    rows, columns : int
        Frame size.
    geometry : ViewGeometry or None
        The actual geometry of the exposure. A real detector does not know it;
        the simulator fills it for the ground truth. Writers must not rely on
        it beyond nominal-like distances (see ``nominal_sid_mm``).
    technique : dict
        Actual technique of this tube from the exposure report:
        ``{"kv", "ma", "ms", "mas"}``.
    exposure_id : int
        Exposure number from the sync controller (shared by the pair).
    acquisition_datetime : datetime
        Start of the exposure (shared by the pair).
    detector_id : str
        Serial number or name of the detector.
    pixel_intensity_relationship : str
        ``"LOG"`` or ``"LIN"`` (DICOM (0028,1040)).
    pixel_intensity_sign : int
        ``+1`` if a higher stored value means more X-ray intensity, else ``-1``.
    nominal_sid_mm, nominal_sod_mm : float or None
        Source-to-detector and source-to-patient (isocentre) distances of the
        station's nominal set-up, as a console would fill them.
    collimation_px : tuple of int or None
        Irradiated field ``(row_min, row_max, col_min, col_max)`` if collimated.
    patient_orientation : (str, str) or None
        Patient directions along a row and down a column (DICOM (0020,0020),
        e.g. ``("L", "F")``), as the positioning protocol sets them.
    view_position : str or None
        DICOM ViewPosition (``"AP"``, ``"LL"``...).
    extra : dict
        Anything else a detector reports (temperature, gain, dose indicators).
    """

    view: str
    photometric: str
    bits_stored: int
    rescale_slope: float
    rescale_intercept: float
    imager_pixel_spacing_mm: tuple[float, float]
    rows: int
    columns: int
    geometry: ViewGeometry | None
    technique: dict
    exposure_id: int
    acquisition_datetime: datetime
    detector_id: str
    pixel_intensity_relationship: str = "LOG"
    pixel_intensity_sign: int = -1
    nominal_sid_mm: float | None = None
    nominal_sod_mm: float | None = None
    collimation_px: tuple[int, int, int, int] | None = None
    patient_orientation: tuple[str, str] | None = None
    view_position: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """Stored pixel values (uint16, row 0 at the top) and their metadata."""

    pixels: np.ndarray
    meta: FrameMeta

    def to_raw_image(self) -> RawImage:
        """The frame as the reconstruction's input type."""
        m = self.meta
        return RawImage(
            pixels=self.pixels,
            photometric=m.photometric,
            bits_stored=m.bits_stored,
            rescale_slope=m.rescale_slope,
            rescale_intercept=m.rescale_intercept,
            intensity_relationship=m.pixel_intensity_relationship,
            intensity_sign=m.pixel_intensity_sign,
        )
