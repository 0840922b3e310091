"""Triangulation of matched image points by the midpoint of the common perpendicular.

For two projection lines (focal spot through image point) the shortest
segment between them is found in closed form (e.g. Hartley & Sturm, "Triangulation",
CVIU 1997, sec. 5.3, the midpoint method); its midpoint is the 3D estimate and
its length the crossing-line distance of ISO 16087, the station's sync check.
"""

from __future__ import annotations

import numpy as np

from reconstruction.geometry import ViewGeometry


def closest_points(
    fa: np.ndarray, da: np.ndarray, fb: np.ndarray, db: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closest points of lines ``fa + s da`` and ``fb + t db`` (unit directions, broadcast).

    Returns the two points (..., 3) and the line parameters s, t (...).
    """
    w0 = fa - fb
    b = np.sum(da * db, axis=-1)
    d = np.sum(da * w0, axis=-1)
    e = np.sum(db * w0, axis=-1)
    denom = np.maximum(1.0 - b * b, 1e-15)
    s = (b * e - d) / denom
    t = (e - b * d) / denom
    return fa + s[..., None] * da, fb + t[..., None] * db, s, t


def midpoint(
    view_a: ViewGeometry, rc_a: np.ndarray, view_b: ViewGeometry, rc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """3D points (n, 3) and crossing distances (n,) in mm for matched image points."""
    fa, da = view_a.ray_through(np.asarray(rc_a, float))
    fb, db = view_b.ray_through(np.asarray(rc_b, float))
    pa, pb, _, _ = closest_points(fa, da, fb, db)
    return 0.5 * (pa + pb), np.linalg.norm(pa - pb, axis=-1)
