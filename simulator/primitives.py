"""Solids with analytic line integrals: ellipsoids, elliptic cylinders, boxes, spheres.

Every solid gives the length of its intersection with a bundle of rays from one
point (the focal spot), which is all Beer–Lambert needs:
``I = I0 exp(-sum_i mu_i L_i)``. Each solid adds ``mu(material) - mu(displaces)``
along its chord, so a marrow canal inside a cortex, or a bone inside soft
tissue, is written as a nested solid displacing its host.

Chord formulas (ray ``x = o + t d`` with ``|d| = 1`` in a solid's local frame):

- ellipsoid, semi-axes ``s``: with ``o' = o / s``, ``d' = d / s`` and
  ``A = |d'|^2``, the chord is ``2 sqrt(A - |o' x d'|^2) / A`` (the
  cross-product form avoids the cancellation of ``b^2 - 4ac``);
- elliptic cylinder along local z: the same in x, y, intersected with the slab
  ``|z| <= h``;
- box: Kay & Kajiya's slab method (SIGGRAPH 1986).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from simulator.materials import METALS, mu


def _local(center, axes, f, d):
    """Origin and directions in the solid's frame (columns of ``axes`` = local axes)."""
    o = (np.asarray(f, float) - center) @ axes
    dl = d @ axes.astype(d.dtype, copy=False)
    return o.astype(d.dtype), dl


@dataclass(frozen=True)
class Solid:
    """Base: a material, what it displaces, and a rigid placement."""

    center: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    material: str = "soft"
    displaces: str | None = None
    segment: str | None = None  # rigid body it belongs to (moves with it)
    group: str = "patient"  # "patient" | "cage"

    @property
    def is_metal(self) -> bool:
        return self.material in METALS

    def mu(self, kv: float) -> float:
        m = mu(self.material, kv)
        return m - mu(self.displaces, kv) if self.displaces else m

    def moved(self, rot: np.ndarray, trans: np.ndarray) -> Solid:
        """The solid after the rigid motion ``x -> rot @ x + trans``."""
        return replace(self, center=rot @ self.center + trans, axes=rot @ self.axes)

    def half_extents(self) -> np.ndarray:
        raise NotImplementedError

    def corners(self) -> np.ndarray:
        """The 8 corners of the local bounding box, world frame (8, 3)."""
        h = self.half_extents()
        s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
        return self.center + (s * h) @ self.axes.T

    def chord(self, f: np.ndarray, d: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contains(self, p: np.ndarray) -> np.ndarray:
        """Whether points (..., 3) lie inside the solid."""
        raise NotImplementedError

    def _local_points(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - self.center) @ self.axes

    def dilated(self, margin: float) -> Solid:
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Solid):
    semi: np.ndarray = field(default_factory=lambda: np.ones(3))

    def half_extents(self) -> np.ndarray:
        return np.asarray(self.semi, float)

    def chord(self, f, d):
        o, dl = _local(self.center, self.axes, f, d)
        inv = (1.0 / np.asarray(self.semi, float)).astype(d.dtype)
        op = o * inv
        dp = dl * inv
        a = np.einsum("...i,...i->...", dp, dp)
        cx = op[1] * dp[..., 2] - op[2] * dp[..., 1]
        cy = op[2] * dp[..., 0] - op[0] * dp[..., 2]
        cz = op[0] * dp[..., 1] - op[1] * dp[..., 0]
        disc = a - (cx * cx + cy * cy + cz * cz)
        np.maximum(disc, 0, out=disc)
        return 2.0 * np.sqrt(disc) / a

    def dilated(self, margin):
        return replace(self, semi=np.asarray(self.semi, float) + margin)

    def contains(self, p):
        q = self._local_points(p) / np.asarray(self.semi, float)
        return np.sum(q * q, axis=-1) <= 1.0


@dataclass(frozen=True)
class Cylinder(Solid):
    """Elliptic cylinder along the local z axis, radii ``radii`` (x, y), half length ``half``."""

    radii: np.ndarray = field(default_factory=lambda: np.ones(2))
    half: float = 1.0

    def half_extents(self) -> np.ndarray:
        return np.array([self.radii[0], self.radii[1], self.half], float)

    def chord(self, f, d):
        o, dl = _local(self.center, self.axes, f, d)
        ax, ay = (1.0 / np.asarray(self.radii, float)).astype(d.dtype)
        dx, dy, dz = dl[..., 0] * ax, dl[..., 1] * ay, dl[..., 2]
        ox, oy, oz = o[0] * ax, o[1] * ay, o[2]
        a = dx * dx + dy * dy
        cross = ox * dy - oy * dx
        with np.errstate(divide="ignore", invalid="ignore"):
            disc = np.maximum(a - cross * cross, 0)
            half_w = np.sqrt(disc) / a
            t0 = -(ox * dx + oy * dy) / a
            lo, hi = t0 - half_w, t0 + half_w
            z1 = (-self.half - oz) / dz
            z2 = (self.half - oz) / dz
        zlo = np.fmin(z1, z2)
        zhi = np.fmax(z1, z2)
        # A ray parallel to the caps is inside the slab iff |oz| <= half.
        par = ~np.isfinite(zlo)
        if np.any(par):
            inside = abs(oz) <= self.half
            zlo = np.where(par, -np.inf if inside else np.inf, zlo)
            zhi = np.where(par, np.inf if inside else -np.inf, zhi)
        lo = np.where(a > 0, lo, -np.inf if ox * ox + oy * oy <= 1 else np.inf)
        hi = np.where(a > 0, hi, np.inf if ox * ox + oy * oy <= 1 else -np.inf)
        length = np.fmin(hi, zhi) - np.fmax(lo, zlo)
        return np.where(np.isfinite(length) & (length > 0), length, 0).astype(d.dtype)

    def dilated(self, margin):
        return replace(self, radii=np.asarray(self.radii, float) + margin, half=self.half + margin)

    def contains(self, p):
        q = self._local_points(p)
        r = (q[..., 0] / self.radii[0]) ** 2 + (q[..., 1] / self.radii[1]) ** 2
        return (r <= 1.0) & (np.abs(q[..., 2]) <= self.half)


@dataclass(frozen=True)
class Box(Solid):
    half_size: np.ndarray = field(default_factory=lambda: np.ones(3))

    def half_extents(self) -> np.ndarray:
        return np.asarray(self.half_size, float)

    def chord(self, f, d):
        o, dl = _local(self.center, self.axes, f, d)
        lo = np.full(d.shape[:-1], -np.inf, dtype=d.dtype)
        hi = np.full(d.shape[:-1], np.inf, dtype=d.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            for k in range(3):
                h = self.half_size[k]
                inv = 1.0 / dl[..., k]
                t1 = (-h - o[k]) * inv
                t2 = (h - o[k]) * inv
                a = np.fmin(t1, t2)
                b = np.fmax(t1, t2)
                if abs(o[k]) > h:  # parallel rays outside this slab miss
                    a = np.where(np.isfinite(inv), a, np.inf)
                np.maximum(lo, a, out=lo)
                np.minimum(hi, b, out=hi)
        length = hi - lo
        return np.where(np.isfinite(length) & (length > 0), length, 0).astype(d.dtype)

    def dilated(self, margin):
        return replace(self, half_size=np.asarray(self.half_size, float) + margin)

    def contains(self, p):
        return np.all(np.abs(self._local_points(p)) <= self.half_size, axis=-1)


def rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def sphere_chord(center: np.ndarray, radius: float, f: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Chord of a sphere along unit rays ``d`` from ``f`` (float64: beads need it)."""
    o = np.asarray(f, float) - center
    cx = o[1] * d[..., 2] - o[2] * d[..., 1]
    cy = o[2] * d[..., 0] - o[0] * d[..., 2]
    cz = o[0] * d[..., 1] - o[1] * d[..., 0]
    disc = radius * radius - (cx * cx + cy * cy + cz * cz)
    return 2.0 * np.sqrt(np.maximum(disc, 0.0))
