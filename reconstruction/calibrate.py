"""Calibration of one view from its identified cage markers.

Hartley-normalised direct linear transform (Hartley & Zisserman, *Multiple View
Geometry*, 2nd ed., 2004, alg. 7.1) for a first camera, whose centre is the
focal spot, then a non-linear least-squares refinement of a *physical* model:
the focal spot position and the rigid pose of the flat-panel detector (whose
pixel spacing the station states; a flat panel has no lens distortion), robust
to outliers (Huber loss, then rejection and refit). The focal spot is an
output; the residual of every marker is kept for QC and overlays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from reconstruction.geometry import Detector, Tolerance, ViewGeometry, projection_matrices

N_PARAMS = 9  # focus (3, mm), detector rotation vector (3, rad), detector shift (3, mm)


@dataclass(frozen=True)
class PoseModel:
    """Physical model of one view around its nominal geometry.

    ``theta`` holds the focus displacement (mm), the detector's rotation vector
    about its nominal centre (rad) and the detector centre's displacement (mm).
    ``scale`` converts tolerance units (the station's stated tolerances) to
    those physical units, so that ``|theta / scale| <= 1`` spans the tolerance.
    """

    nominal: ViewGeometry
    tolerance: Tolerance

    @cached_property
    def scale(self) -> np.ndarray:
        t = self.tolerance
        return np.r_[
            np.full(3, max(t.focus_mm, 1e-3)),
            np.full(3, np.radians(max(t.detector_deg, 1e-3))),
            np.full(3, max(t.detector_mm, 1e-3)),
        ]

    def view(self, theta: np.ndarray) -> ViewGeometry:
        """The view geometry for physical parameters ``theta``."""
        det0 = self.nominal.detector
        rot = _rodrigues(np.asarray(theta[3:6], float))
        centre0 = det0.center_mm
        rc = rot @ det0.row_cosines
        cc = rot @ det0.column_cosines
        origin = centre0 + theta[6:9] + rot @ (det0.origin_mm - centre0)
        det = Detector(origin, rc, cc, det0.pixel_spacing_mm, det0.rows, det0.columns)
        return ViewGeometry(self.nominal.focus_mm + theta[0:3], det)

    def projection_matrices(self, thetas: np.ndarray) -> np.ndarray:
        """Projection matrices (k, 3, 4) for k parameter sets at once (as :meth:`view`
        followed by ``projection_matrix``, batched)."""
        det0 = self.nominal.detector
        rot = _rodrigues_many(thetas[:, 3:6])
        centre0 = det0.center_mm
        rc = rot @ det0.row_cosines
        cc = rot @ det0.column_cosines
        n = _cross(rc, cc)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        origin = centre0 + thetas[:, 6:9] + rot @ (det0.origin_mm - centre0)
        focus = self.nominal.focus_mm + thetas[:, 0:3]
        return projection_matrices(focus, origin, rc, cc, n, det0.pixel_spacing_mm)

    def project(self, theta: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Image positions (n, 2) of ``xyz`` for parameters ``theta`` (NaN without a shadow)."""
        return self.project_many(np.asarray(theta, float)[None, :], xyz)[0]

    def project_many(self, thetas: np.ndarray, xyz: np.ndarray) -> np.ndarray:
        """Projections (k, n, 2) of ``xyz`` for k parameter sets at once.

        Written out (Rodrigues' rotation, ray-plane intersection) and batched
        rather than going through :meth:`view`, because calibration and the
        real-time cage check evaluate it many times.
        """
        det0 = self.nominal.detector
        rot = _rodrigues_many(thetas[:, 3:6])  # (k, 3, 3)
        centre0 = det0.center_mm
        rc = rot @ det0.row_cosines  # (k, 3)
        cc = rot @ det0.column_cosines
        n = _cross(rc, cc)
        origin = centre0 + thetas[:, 6:9] + rot @ (det0.origin_mm - centre0)
        f = self.nominal.focus_mm + thetas[:, 0:3]
        d = xyz[None, :, :] - f[:, None, :]  # (k, n, 3)
        h = np.sum((origin - f) * n, axis=1)  # (k,)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = h[:, None] / np.einsum("knj,kj->kn", d, n)
        s = np.where(s > 0, s, np.nan)
        hit = (f - origin)[:, None, :] + s[..., None] * d
        sp = det0.pixel_spacing_mm
        row = np.einsum("knj,kj->kn", hit, cc) / sp[0]
        col = np.einsum("knj,kj->kn", hit, rc) / sp[1]
        return np.stack([row, col], axis=-1)

    def jacobian(self, theta: np.ndarray, xyz: np.ndarray, scaled: bool = True) -> np.ndarray:
        """d(row, col)/d(theta) by central differences, shape (n, 2, 9).

        With ``scaled`` the derivative is per tolerance unit.
        """
        sc = self.scale
        steps = 1e-3 * sc
        thetas = np.concatenate([theta + np.diag(steps), theta - np.diag(steps)], axis=0)  # (18, 9)
        pr = self.project_many(thetas, xyz)
        jac = (pr[:N_PARAMS] - pr[N_PARAMS:]) / (2 * steps)[:, None, None]  # (9, n, 2)
        if scaled:
            jac = jac * sc[:, None, None]
        return jac.transpose(1, 2, 0)


def _rodrigues(v: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues' formula)."""
    th = float(np.sqrt(v @ v))
    k = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if th < 1e-12:
        return np.eye(3) + k
    k /= th
    return np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)


def _rodrigues_many(v: np.ndarray) -> np.ndarray:
    """Rotation matrices (k, 3, 3) of rotation vectors (k, 3) (Rodrigues' formula)."""
    th = np.linalg.norm(v, axis=1)
    safe = np.where(th < 1e-12, 1.0, th)
    k = np.zeros((len(v), 3, 3))
    u = v / safe[:, None]
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -u[:, 2], u[:, 1], -u[:, 0]
    k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = u[:, 2], -u[:, 1], u[:, 0]
    sin = np.where(th < 1e-12, th, np.sin(th))[:, None, None]
    cos1 = np.where(th < 1e-12, 0.5 * th**2, 1 - np.cos(th))[:, None, None]
    return np.eye(3) + sin * k + cos1 * (k @ k)


def project_fast(view: ViewGeometry, xyz: np.ndarray) -> np.ndarray:
    """Projection through the 3x4 matrix (NaN behind the focus)."""
    p = view.projection_matrix()
    h = xyz @ p[:, :3].T + p[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = h[:, :2] / h[:, 2:3]
    facing = (view.detector.origin_mm - view.focus_mm) @ view.detector.normal
    out[h[:, 2] * facing <= 0] = np.nan
    return out


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (..., 3) arrays (np.cross is slow for small arrays)."""
    return np.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def casts_shadow(view: ViewGeometry, xyz: np.ndarray) -> np.ndarray:
    """True for points strictly between the focal spot and the detector plane."""
    n = _cross(view.detector.row_cosines, view.detector.column_cosines)
    depth = (xyz - view.focus_mm) @ n
    total = (view.detector.origin_mm - view.focus_mm) @ n
    frac = depth / total
    return (frac > 0) & (frac < 1)


def inside_image(rc: np.ndarray, detector: Detector, margin_px: float) -> np.ndarray:
    """True for positions at least ``margin_px`` inside the image (NaN is outside)."""
    r, c = rc[:, 0], rc[:, 1]
    with np.errstate(invalid="ignore"):
        return (
            (r >= margin_px)
            & (c >= margin_px)
            & (r <= detector.rows - 1 - margin_px)
            & (c <= detector.columns - 1 - margin_px)
        )


# --------------------------------------------------------------------------- DLT


def _normaliser(pts: np.ndarray) -> np.ndarray:
    """Hartley's similarity: centroid to origin, mean distance sqrt(d)."""
    d = pts.shape[1]
    c = pts.mean(axis=0)
    s = np.sqrt(d) / max(np.mean(np.linalg.norm(pts - c, axis=1)), 1e-12)
    t = np.eye(d + 1)
    t[:d, :d] *= s
    t[:d, d] = -s * c
    return t


def dlt(xyz: np.ndarray, rc: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Normalised DLT camera ``P`` (3x4, ``[row, col, 1] ~ P X``) and its condition.

    Returns None with fewer than 6 points. The condition is the ratio of the two
    smallest singular values (small = well determined; near 1 = degenerate,
    e.g. coplanar points).
    """
    n = len(xyz)
    if n < 6:
        return None
    t3 = _normaliser(xyz)
    t2 = _normaliser(rc)
    xn = np.c_[xyz, np.ones(n)] @ t3.T
    un = np.c_[rc, np.ones(n)] @ t2.T
    a = np.zeros((2 * n, 12))
    a[0::2, 0:4] = xn
    a[0::2, 8:12] = -un[:, 0:1] * xn
    a[1::2, 4:8] = xn
    a[1::2, 8:12] = -un[:, 1:2] * xn
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    pn = vt[-1].reshape(3, 4)
    p = np.linalg.inv(t2) @ pn @ t3
    scale = np.linalg.norm(p[2, :3])
    # a degenerate configuration (e.g. a wrong identification putting the points on
    # a plane through the centre) gives a P with no finite camera: no DLT start
    if not (np.isfinite(scale) and scale > 1e-12 and np.all(np.isfinite(p))):
        return None
    return p / scale, float(s[-1] / max(s[-2], 1e-300))


def camera_centre(p: np.ndarray) -> np.ndarray:
    """Centre of a finite projective camera: the right null vector of P (H&Z 6.2.4)."""
    if not np.all(np.isfinite(p)):
        return np.full(3, np.nan)
    _, _, vt = np.linalg.svd(p)
    c = vt[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return c[:3] / c[3]


# --------------------------------------------------------------------------- refinement


@dataclass
class Calibration:
    """The calibrated geometry of one view.

    Attributes
    ----------
    view : ViewGeometry
        Focal spot and detector pose, cage frame.
    theta : ndarray (9,)
        Physical displacement from the nominal geometry.
    inliers : ndarray (n,) bool
        Markers kept after outlier rejection (same order as the input).
    residual_px : ndarray (n, 2)
        Reprojection error (measured - predicted) of every input marker.
    rms_px : float
        RMS reprojection error (norm) over the inliers.
    dlt_focus_mm : ndarray (3,) or None
        Focal spot of the linear (DLT) camera, before refinement.
    """

    view: ViewGeometry
    theta: np.ndarray
    inliers: np.ndarray
    residual_px: np.ndarray
    rms_px: float
    dlt_focus_mm: np.ndarray | None


def refine(
    model: PoseModel,
    xyz: np.ndarray,
    rc: np.ndarray,
    sigma_px: np.ndarray | None = None,
    theta0: np.ndarray | None = None,
    prior_weight: float = 0.05,
    huber: float | None = 3.0,
    iterations: int = 20,
) -> np.ndarray:
    """Least-squares physical parameters by damped Gauss-Newton (Levenberg-Marquardt).

    Residuals are reprojection errors in units of each marker's standard
    error, with Huber weights (iteratively reweighted; Huber 1964) when
    ``huber`` is given, plus a weak prior that keeps the solution near the
    nominal geometry when markers are few (``prior_weight`` per tolerance
    unit). The Jacobian is by central differences of the exact projection.
    """
    sc = model.scale
    w = 1.0 / (np.ones(len(xyz)) if sigma_px is None else np.asarray(sigma_px))
    x = np.zeros(N_PARAMS) if theta0 is None else np.asarray(theta0, float) / sc
    pw2 = prior_weight**2

    def cost_of(xv):
        r = (model.project(xv * sc, xyz) - rc) * w[:, None]
        r = np.nan_to_num(r, nan=1e6)
        a = np.linalg.norm(r, axis=1)
        rho = a**2 if huber is None else np.where(a <= huber, a**2, 2 * huber * a - huber**2)
        return float(rho.sum() + pw2 * xv @ xv), r, a

    cost, r, a = cost_of(x)
    lam = 1e-3
    for _ in range(iterations):
        jac = model.jacobian(x * sc, xyz, scaled=True) * w[:, None, None]
        jac = np.nan_to_num(jac)
        hw = np.ones_like(a) if huber is None else np.where(a <= huber, 1.0, huber / a)
        jw = jac * hw[:, None, None]
        jm = jac.reshape(-1, N_PARAMS)
        h = jw.reshape(-1, N_PARAMS).T @ jm + pw2 * np.eye(N_PARAMS)
        g = jw.reshape(-1, N_PARAMS).T @ (-r.reshape(-1)) - pw2 * x
        improved = False
        for _ in range(8):
            dx = np.linalg.solve(h + lam * np.diag(np.diag(h)), g)
            c2, r2, a2 = cost_of(x + dx)
            if c2 <= cost:
                x, cost, r, a = x + dx, c2, r2, a2
                lam = max(lam * 0.3, 1e-9)
                improved = True
                break
            lam *= 10
        if not improved or np.max(np.abs(dx)) < 1e-7:
            break
    return x * sc


def calibrate(
    model: PoseModel,
    xyz: np.ndarray,
    rc: np.ndarray,
    sigma_px: np.ndarray | None = None,
    theta0: np.ndarray | None = None,
    floor_px: float = 0.03,
    reject_sigma: float = 4.0,
    reject_floor_px: float = 0.25,
) -> Calibration:
    """Calibrate one view from identified markers (cage-frame ``xyz`` to image ``rc``).

    The DLT's focal spot (when the markers determine one: at least 6, not
    coplanar, within twice the tolerance of the nominal spot) starts the
    refinement; otherwise the nominal geometry (or ``theta0``) does. Markers
    whose residual exceeds ``reject_sigma`` robust standard deviations (and
    ``reject_floor_px``) are dropped and the model refitted, up to three times.

    ``floor_px`` is added in quadrature to each marker's detection uncertainty
    for the cage's own manufacturing error.
    """
    n = len(xyz)
    sig = np.full(n, 0.1) if sigma_px is None else np.asarray(sigma_px, float)
    sig = np.sqrt(sig**2 + floor_px**2)
    dlt_focus = None
    start = np.zeros(N_PARAMS) if theta0 is None else np.asarray(theta0, float).copy()
    res = dlt(xyz, rc)
    if res is not None:
        p, cond = res
        if cond < 0.2:
            c = camera_centre(p)
            if np.all(np.isfinite(c)) and np.linalg.norm(c - model.nominal.focus_mm) <= 2 * max(
                model.tolerance.focus_mm, 1.0
            ):
                dlt_focus = c
    inl = np.ones(n, bool)
    theta = start
    candidates = [start]
    if dlt_focus is not None and (
        theta0 is None or np.linalg.norm(dlt_focus - model.nominal.focus_mm - start[0:3]) > 5.0
    ):
        # the linear camera disagrees with the starting pose: try both starts
        alt = start.copy()
        alt[0:3] = dlt_focus - model.nominal.focus_mm
        candidates.append(alt)
    best = None
    for th0 in candidates:
        th = refine(model, xyz, rc, sig, th0)
        cost = np.nansum(((model.project(th, xyz) - rc) / sig[:, None]) ** 2)
        if best is None or cost < best[0]:
            best = (cost, th)
    theta = best[1]
    for _ in range(3):
        resid = rc - model.project(theta, xyz)
        norm = np.linalg.norm(resid, axis=1)
        norm = np.where(np.isfinite(norm), norm, np.inf)
        # residuals in units of each marker's own uncertainty: a faint marker
        # behind the patient may be off by more pixels than a crisp one and
        # still be right; the scale of those units is estimated robustly
        z = norm / sig
        robust = max(np.median(z[inl]) / 1.1774, 1.0)  # Rayleigh median -> per-axis sigma
        new = (z <= reject_sigma * robust) | (norm <= reject_floor_px)
        if new.sum() < 6 or np.array_equal(new, inl):
            break
        inl = new
        theta = refine(model, xyz[inl], rc[inl], sig[inl], theta, huber=None)
    resid = rc - model.project(theta, xyz)
    rms = float(np.sqrt(np.mean(np.sum(resid[inl] ** 2, axis=1)))) if inl.any() else np.nan
    return Calibration(model.view(theta), theta, inl, resid, rms, dlt_focus)
