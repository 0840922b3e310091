"""Real-time cage check of one view, run as each frame arrives.

Only what the verdict needs, within 10 ms on one core: the stored pixels are
reduced once by a power of two (area averaging by 2 x 2 block means, with the
Modality LUT and photometric inversion applied to the small image),
cage-marker-sized blobs are found on it with one band-pass octave at the cage
markers' scale (:func:`reconstruction.cage_detect.cage_candidates`, the rules
of :func:`reconstruction.detect.coarse_candidates`), re-centred at full
resolution by their intensity centroid on small windows of the stored pixels
(:func:`reconstruction.cage_detect.refine_centres`), and the cage markers are
identified around the nominal geometry (:func:`reconstruction.cage_id.identify`,
linearised). A marker is *expected* when its shadow under the fitted geometry
lies at least 10 px inside the image (CONTRACT.md); the check passes when
found / expected reaches the ``cage_visibility`` limit. Nothing is kept from
one call to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reconstruction.cage_detect import (
    cage_candidates,
    pow2_factor,
    reduced_display_pow2,
    refine_centres,
)
from reconstruction.cage_id import Identification, identify
from reconstruction.calibrate import PoseModel, casts_shadow, inside_image
from reconstruction.geometry import Cage, Station
from reconstruction.image import RawImage
from reconstruction.pipeline import EXPECTED_MARGIN_PX, check_image, marker_scale
from reconstruction.qc import DEFAULT_LIMITS, QCLimits, at_least

#: Standard error of a refined centre plus the linearisation of the projection
#: (px): the centroid is good to ~0.05 px on the simulator's frames, the
#: linearised projection (not re-linearised here) to a fraction of a pixel
#: within the station's tolerances.
CENTRE_SIGMA_PX = 1.0


@dataclass
class CageCheckResult:
    """The contract's cage-check result, with what the overlay needs.

    Attributes
    ----------
    view : str
    expected, found : int
    passed : bool
    value : float or None
        found / expected.
    limit : float
    message : str
    missing : list of str
        Ids of expected cage markers not found.
    detections_rc : ndarray (m, 2)
        Blob centres (full-resolution px).
    predicted_rc : ndarray (n, 2)
        Every cage marker's shadow under the fitted geometry.
    expected_mask : ndarray (n,) bool
    marker_idx, det_idx : ndarray
        Identified pairs.
    marker_ids : list of str
    """

    view: str
    expected: int
    found: int
    passed: bool
    value: float | None
    limit: float
    message: str
    missing: list[str]
    detections_rc: np.ndarray = field(repr=False)
    predicted_rc: np.ndarray = field(repr=False)
    expected_mask: np.ndarray = field(repr=False)
    marker_idx: np.ndarray = field(repr=False)
    det_idx: np.ndarray = field(repr=False)
    marker_ids: list[str] = field(repr=False, default_factory=list)
    identification: Identification | None = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {
            "view": self.view,
            "cage_markers_expected": self.expected,
            "cage_markers_found": self.found,
            "passed": self.passed,
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
            "missing": self.missing,
        }


def cage_check(
    station: Station,
    cage: Cage,
    view: str,
    image: RawImage,
    limits: QCLimits = DEFAULT_LIMITS,
) -> CageCheckResult:
    """Check that enough of the cage is visible in one view's image.

    Parameters
    ----------
    station : Station
        Nominal geometry and tolerances.
    cage : Cage
        The calibration cage.
    view : str
        ``"A"`` or ``"B"``.
    image : RawImage
        The frame, as stored.
    limits : QCLimits
        ``cage_visibility`` is used.
    """
    check_image(station, view, image)
    nominal = station.views[view]
    model = PoseModel(nominal, station.tolerance)
    scale = marker_scale(nominal, cage, include_beads=False)
    # Cage markers only, and a verdict to the marker, not to the micrometre:
    # blobs on the image reduced by a power of two (one read of the stored
    # pixels), band-passed at the cage markers' own scale, re-centred at full
    # resolution on small windows (reconstruction.cage_detect).
    k = pow2_factor(scale)
    small = reduced_display_pow2(image, k)
    rc, _ = cage_candidates(small, k, scale, overwrite=True)
    rc = refine_centres(image, rc, scale)
    xyz = cage.xyz_mm
    ident = identify(model, xyz, rc, sigma_px=CENTRE_SIGMA_PX, relinearise=False)
    if len(ident.marker_idx) >= 3:
        geometry = model.view(ident.theta)
        pred = ident.predicted_rc
    else:
        geometry = nominal
        pred = model.project(np.zeros(9), xyz)
    expected = casts_shadow(geometry, xyz) & inside_image(
        pred, geometry.detector, EXPECTED_MARGIN_PX
    )
    found_mask = np.zeros(len(xyz), bool)
    found_mask[ident.marker_idx] = True
    n_exp = int(expected.sum())
    n_found = int((found_mask & expected).sum())
    value = n_found / n_exp if n_exp else None
    message = (
        f"{n_found} of {n_exp} cage markers found"
        if n_exp
        else "no cage marker is expected in this image: check the view and the cage"
    )
    check = at_least("cage_visibility", view, value, limits.cage_visibility, message)
    ids = cage.ids
    missing = [ids[i] for i in np.flatnonzero(expected & ~found_mask)]
    return CageCheckResult(
        view=view,
        expected=n_exp,
        found=n_found,
        passed=check.passed,
        value=value,
        limit=limits.cage_visibility,
        message=message,
        missing=missing,
        detections_rc=rc,
        predicted_rc=pred,
        expected_mask=expected,
        marker_idx=ident.marker_idx,
        det_idx=ident.det_idx,
        marker_ids=ids,
        identification=ident,
    )
