"""Triangulation of matched image points on the common perpendicular of their lines.

For two projection lines (focal spot through image point) the shortest
segment between them is found in closed form (e.g. Hartley & Sturm, "Triangulation",
CVIU 1997, sec. 5.3, the midpoint method); its length is the crossing-line
distance of ISO 16087, the station's sync check. The 3D estimate is the point
on it weighted by the two lines' precision (:func:`point_between`; the
midpoint when they are equal or unknown).
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


def common_perpendicular(
    view_a: ViewGeometry, rc_a: np.ndarray, view_b: ViewGeometry, rc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ends (n, 3) on line A and line B of the shortest segment between the two
    projection lines (focal spot through image point) of matched image points."""
    fa, da = view_a.ray_through(np.asarray(rc_a, float))
    fb, db = view_b.ray_through(np.asarray(rc_b, float))
    pa, pb, _, _ = closest_points(fa, da, fb, db)
    return pa, pb


def point_between(
    pa: np.ndarray,
    pb: np.ndarray,
    sigma_a_mm: np.ndarray | None = None,
    sigma_b_mm: np.ndarray | None = None,
) -> np.ndarray:
    """The 3D estimate on the common perpendicular from ``pa`` (line A) to ``pb``.

    Without the lines' lateral standard errors at the point (``sigma_a_mm``,
    ``sigma_b_mm``: each image centre's standard error scaled to the object),
    the midpoint. With them the weighted least-squares point, minimising
    ``d_a^2 / sigma_a^2 + d_b^2 / sigma_b^2`` over the distances to the two
    lines: setting the gradient to zero on the perpendicular ``p_a + lam (p_b
    - p_a)`` gives ``lam = sigma_a^2 / (sigma_a^2 + sigma_b^2)``, nearer the
    more precise line. Within the epipolar plane two lines meet in one point
    and nothing can be weighted; across it this is the maximum-likelihood
    point for independent Gaussian errors, and equal errors give the midpoint.
    """
    if sigma_a_mm is None or sigma_b_mm is None:
        lam = np.full(pa.shape[:-1], 0.5)
    else:
        va = np.asarray(sigma_a_mm, float) ** 2
        vb = np.asarray(sigma_b_mm, float) ** 2
        with np.errstate(invalid="ignore"):
            lam = np.where(va + vb > 0, va / np.maximum(va + vb, 1e-300), 0.5)
        # an unknown (NaN) or infinite sigma says nothing about the weights
        lam = np.where(np.isfinite(lam), lam, 0.5)
    return pa + lam[..., None] * (pb - pa)


def midpoint(
    view_a: ViewGeometry, rc_a: np.ndarray, view_b: ViewGeometry, rc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints (n, 3) of the common perpendicular and its lengths, the crossing
    distances (n,), in mm, for matched image points (the product weights the
    point by the lines' precision: :func:`reconstruction.pipeline.triangulate_pairs`)."""
    pa, pb = common_perpendicular(view_a, rc_a, view_b, rc_b)
    return point_between(pa, pb), np.linalg.norm(pa - pb, axis=-1)
