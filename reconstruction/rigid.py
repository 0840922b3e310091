"""Rigid-body fitting of marker sets: pose, mean error, condition number, helical axis.

Everything here works on ``(n, 3)`` arrays in millimetres. A rigid motion maps a
point ``p`` to ``R @ p + t``.

References
----------
- Söderkvist I, Wedin P-Å. Determining the movements of the skeleton using
  well-configured markers. J Biomech 1993;26(12):1473-1477 (SVD least-squares
  fit of a rigid motion; condition number of the marker configuration).
- Arun KS, Huang TS, Blostein SD. Least-squares fitting of two 3-D point sets.
  IEEE TPAMI 1987;9(5):698-700; Kabsch W. Acta Cryst A 1976;32:922.
- Spoor CW, Veldpaus FE. Rigid body motion calculated from spatial co-ordinates
  of markers. J Biomech 1980;13:391-393 (finite helical axis); Woltring HJ,
  Huiskes R, de Lange A, Veldpaus FE. Finite centroid and helical axis
  estimation from noisy landmark measurements. J Biomech 1985;18:379-389.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError


def _points(p: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(p, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{what}: expected an (n, 3) array of points, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class RigidMotion:
    """A proper rigid motion ``x -> R x + t`` (mm).

    Attributes
    ----------
    R : ndarray, shape (3, 3)
        Rotation matrix, ``det(R) = +1``.
    t : ndarray, shape (3,)
        Translation, mm.
    """

    R: np.ndarray
    t: np.ndarray

    @staticmethod
    def identity() -> RigidMotion:
        return RigidMotion(np.eye(3), np.zeros(3))

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Map points ``p`` (shape (..., 3)): ``R p + t``."""
        return np.asarray(p, dtype=float) @ self.R.T + self.t

    def inverse(self) -> RigidMotion:
        return RigidMotion(self.R.T, -self.R.T @ self.t)

    def compose(self, first: RigidMotion) -> RigidMotion:
        """The motion ``self ∘ first`` (apply ``first``, then ``self``)."""
        return RigidMotion(self.R @ first.R, self.R @ first.t + self.t)

    def matrix(self) -> np.ndarray:
        """4 x 4 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    def rotation_deg(self) -> np.ndarray:
        """Rotations about the fixed x, then y, then z axes (CONTRACT.md), degrees."""
        return Rotation.from_matrix(self.R).as_euler("xyz", degrees=True)


def fit_rigid(src: np.ndarray, dst: np.ndarray) -> RigidMotion:
    """Least-squares rigid motion taking ``src`` onto ``dst`` (Söderkvist & Wedin 1993).

    Minimises ``sum_i |R src_i + t - dst_i|^2`` over proper rotations: the two
    sets are centred on their means and the rotation found with
    :meth:`scipy.spatial.transform.Rotation.align_vectors` (Kabsch/SVD), then
    ``t = mean(dst) - R mean(src)``.

    Parameters
    ----------
    src, dst : ndarray, shape (n, 3)
        Corresponding points, n >= 1. With n = 1 only a translation is
        determined (R = I); with n = 2 or collinear points the rotation about
        their line is arbitrary (see :func:`condition_number`).

    Returns
    -------
    RigidMotion
    """
    a = _points(src, "source points")
    b = _points(dst, "target points")
    if a.shape != b.shape or len(a) == 0:
        raise InputError(
            f"rigid fit needs two equal, non-empty point sets, got {a.shape}, {b.shape}"
        )
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    if len(a) == 1:
        return RigidMotion(np.eye(3), cb - ca)
    # align_vectors(a, b) returns the rotation that maps b onto a.
    rot, _ = Rotation.align_vectors(b - cb, a - ca)
    R = rot.as_matrix()
    return RigidMotion(R, cb - R @ ca)


def fit_rigid_batch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised Kabsch fit of many small correspondence sets at once.

    Used to score labelling hypotheses (thousands of triplets); the final fits
    go through :func:`fit_rigid`.

    Parameters
    ----------
    src, dst : ndarray, shape (h, n, 3)

    Returns
    -------
    R : ndarray, shape (h, 3, 3)
    t : ndarray, shape (h, 3)
    """
    ca = src.mean(axis=1, keepdims=True)
    cb = dst.mean(axis=1, keepdims=True)
    H = np.einsum("hni,hnj->hij", src - ca, dst - cb)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.transpose(0, 2, 1) @ U.transpose(0, 2, 1)))
    d[d == 0] = 1.0
    D = np.zeros_like(H)
    D[:, 0, 0] = 1.0
    D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = Vt.transpose(0, 2, 1) @ D @ U.transpose(0, 2, 1)
    t = cb[:, 0, :] - np.einsum("hij,hj->hi", R, ca[:, 0, :])
    return R, t


def residuals(motion: RigidMotion, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance of each fitted point to its target: ``|R src_i + t - dst_i|`` (mm)."""
    return np.linalg.norm(motion.apply(src) - np.asarray(dst, dtype=float), axis=1)


def mean_error(motion: RigidMotion, src: np.ndarray, dst: np.ndarray) -> float:
    """Mean error of rigid-body fitting (ME, CONTRACT.md): ``mean_i |R p_i + t - q_i|`` (mm)."""
    return float(residuals(motion, src, dst).mean())


def condition_number(points: np.ndarray) -> float:
    """Condition number of a marker configuration, as CONTRACT.md defines it.

    With the n markers centred on their mean, in millimetres, and
    ``σ1 >= σ2 >= σ3`` the singular values of that n x 3 matrix::

        CN = 1000 / sqrt(σ2² + σ3²)

    After Söderkvist & Wedin (1993): the sensitivity of the fitted rotation to
    marker error grows as the two smallest singular values shrink; the factor
    1000 expresses it per metre. Collinear (or fewer than 3) markers give
    ``inf``; well spread segments give tens.

    Parameters
    ----------
    points : ndarray, shape (n, 3)
        The segment's markers in the reference examination, mm.

    Returns
    -------
    float
        CN (dimensionless, per metre of marker spread), ``inf`` when undefined.
    """
    p = _points(points, "marker positions")
    if len(p) < 3:
        return float("inf")
    s = np.linalg.svd(p - p.mean(axis=0), compute_uv=False)
    denom = float(np.hypot(s[1], s[2]))
    # Rounding leaves ~1e-15 of the largest singular value on truly collinear sets.
    if denom <= 1e-12 * max(float(s[0]), 1.0):
        return float("inf")
    return 1000.0 / denom


@dataclass(frozen=True)
class HelicalAxis:
    """Finite helical (screw) axis of a rigid motion (Spoor & Veldpaus 1980).

    The motion is a rotation by ``angle_deg`` about the line through
    ``point_mm`` along ``direction`` plus a slide ``translation_mm`` along it.
    ``point_mm`` is the axis point nearest to the chosen reference point (the
    segment's centroid); it is ``None`` for a pure translation.
    """

    angle_deg: float
    direction: np.ndarray
    translation_mm: float
    point_mm: np.ndarray | None

    def to_dict(self) -> dict:
        return {
            "angle_deg": self.angle_deg,
            "direction": self.direction.tolist(),
            "translation_mm": self.translation_mm,
            "point_mm": None if self.point_mm is None else self.point_mm.tolist(),
        }


def helical_axis(motion: RigidMotion, near: np.ndarray | None = None) -> HelicalAxis:
    """Finite helical axis of ``x -> R x + t`` (Spoor & Veldpaus 1980).

    The rotation vector gives the angle φ and unit direction n (φ in [0, 180°]);
    the slide is ``s = n·t``; the axis points ``p`` satisfy
    ``(I - R) p = t - s n``, solved in the plane normal to n through ``near``
    (the least-squares solution of the rank-2 system plus the component of
    ``near`` along n). Small rotations make the axis location ill-conditioned
    (Woltring et al. 1985): report it with its angle.
    """
    near = np.zeros(3) if near is None else np.asarray(near, dtype=float)
    rotvec = Rotation.from_matrix(motion.R).as_rotvec()
    phi = float(np.linalg.norm(rotvec))
    if phi < 1e-12:
        tn = float(np.linalg.norm(motion.t))
        direction = motion.t / tn if tn > 0 else np.array([0.0, 0.0, 1.0])
        return HelicalAxis(0.0, direction, tn, None)
    n = rotvec / phi
    s = float(n @ motion.t)
    A = np.eye(3) - motion.R
    # Solve for the offset from ``near``: (I - R)(near + d) = t - s n, d ⊥ n.
    rhs = motion.t - s * n - A @ near
    d, *_ = np.linalg.lstsq(A, rhs, rcond=None)
    d -= n * (n @ d)
    return HelicalAxis(float(np.degrees(phi)), n, s, near + d)
