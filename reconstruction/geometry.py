"""Geometry of an RSA station: cage, detectors, views, and central projection.

Conventions follow ``CONTRACT.md``: millimetres, the cage frame for 3D, image
positions ``[row, col]`` at pixel centres, and a detector described like a
DICOM image plane (Image Position / Image Orientation / Pixel Spacing,
PS3.3 C.7.6.2): the centre of pixel (r, c) lies at
``origin + c * spacing[1] * row_cosines + r * spacing[0] * column_cosines``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reconstruction.errors import InputError

VIEW_NAMES = ("A", "B")


def _vec(value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected {n} numbers, got {value!r}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: expected {n} finite numbers, got {value!r}")
    return arr


def _require(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict):
        raise InputError(f"{what}: expected a JSON object, got {type(d).__name__}")
    if key not in d:
        raise InputError(f"{what}: missing key {key!r}")
    return d[key]


@dataclass(frozen=True)
class Detector:
    """A flat-panel detector plane, as a DICOM image plane.

    Attributes
    ----------
    origin_mm : ndarray, shape (3,)
        Centre of pixel (0, 0), cage frame.
    row_cosines, column_cosines : ndarray, shape (3,)
        Unit vectors along a row (increasing column) and down a column
        (increasing row).
    pixel_spacing_mm : ndarray, shape (2,)
        ``[spacing between rows, spacing between columns]`` (DICOM order).
    rows, columns : int
        Image size in pixels.
    """

    origin_mm: np.ndarray
    row_cosines: np.ndarray
    column_cosines: np.ndarray
    pixel_spacing_mm: np.ndarray
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        """Unit normal ``row_cosines x column_cosines``."""
        n = np.cross(self.row_cosines, self.column_cosines)
        return n / np.linalg.norm(n)

    @property
    def center_mm(self) -> np.ndarray:
        """Centre of the active area (midpoint between the corner pixel centres)."""
        return self.pixel_to_world(np.array([(self.rows - 1) / 2, (self.columns - 1) / 2]))

    def pixel_to_world(self, rc: np.ndarray) -> np.ndarray:
        """Map image positions ``[row, col]`` (..., 2) to 3D points on the plane (..., 3)."""
        rc = np.asarray(rc, dtype=float)
        return (
            self.origin_mm
            + rc[..., 1:2] * self.pixel_spacing_mm[1] * self.row_cosines
            + rc[..., 0:1] * self.pixel_spacing_mm[0] * self.column_cosines
        )

    def world_to_pixel(self, xyz: np.ndarray) -> np.ndarray:
        """Map 3D points lying on the plane (..., 3) to ``[row, col]`` (..., 2)."""
        d = np.asarray(xyz, dtype=float) - self.origin_mm
        col = d @ self.row_cosines / self.pixel_spacing_mm[1]
        row = d @ self.column_cosines / self.pixel_spacing_mm[0]
        return np.stack([row, col], axis=-1)

    @classmethod
    def from_dict(cls, d: Any, what: str = "detector") -> Detector:
        rc = _vec(_require(d, "row_cosines", what), 3, f"{what}.row_cosines")
        cc = _vec(_require(d, "column_cosines", what), 3, f"{what}.column_cosines")
        for name, v in (("row_cosines", rc), ("column_cosines", cc)):
            if abs(np.linalg.norm(v) - 1.0) > 1e-3:
                raise InputError(f"{what}.{name}: not a unit vector ({np.linalg.norm(v):.4f})")
        if abs(float(rc @ cc)) > 1e-3:
            raise InputError(f"{what}: row_cosines and column_cosines are not orthogonal")
        spacing = _vec(_require(d, "pixel_spacing_mm", what), 2, f"{what}.pixel_spacing_mm")
        if np.any(spacing <= 0):
            raise InputError(f"{what}.pixel_spacing_mm: must be positive, got {spacing.tolist()}")
        rows, cols = _require(d, "rows", what), _require(d, "columns", what)
        for name, v in (("rows", rows), ("columns", cols)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InputError(f"{what}.{name}: expected a positive integer, got {v!r}")
        return cls(
            origin_mm=_vec(_require(d, "origin_mm", what), 3, f"{what}.origin_mm"),
            row_cosines=rc / np.linalg.norm(rc),
            column_cosines=cc / np.linalg.norm(cc),
            pixel_spacing_mm=spacing,
            rows=rows,
            columns=cols,
        )

    def to_dict(self) -> dict:
        return {
            "origin_mm": self.origin_mm.tolist(),
            "row_cosines": self.row_cosines.tolist(),
            "column_cosines": self.column_cosines.tolist(),
            "pixel_spacing_mm": self.pixel_spacing_mm.tolist(),
            "rows": int(self.rows),
            "columns": int(self.columns),
        }


@dataclass(frozen=True)
class ViewGeometry:
    """One view: an X-ray focal spot and the detector it exposes."""

    focus_mm: np.ndarray
    detector: Detector

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """Central projection of 3D points (..., 3) from the focus onto the detector.

        Returns image positions ``[row, col]`` (..., 2). Points on the far side
        of the focus, or on a ray parallel to the plane, give NaN.
        """
        xyz = np.asarray(xyz, dtype=float)
        n = self.detector.normal
        ray = xyz - self.focus_mm
        denom = ray @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            s = ((self.detector.origin_mm - self.focus_mm) @ n) / denom
        s = np.where(s > 0, s, np.nan)
        hit = self.focus_mm + s[..., None] * ray
        return self.detector.world_to_pixel(hit)

    def projection_matrix(self) -> np.ndarray:
        """3x4 matrix P with ``[row, col, 1] ~ P @ [x, y, z, 1]``.

        See Hartley & Zisserman, *Multiple View Geometry*, 2nd ed., 2004, ch. 6.
        """
        det = self.detector
        return projection_matrices(
            self.focus_mm[None],
            det.origin_mm[None],
            det.row_cosines[None],
            det.column_cosines[None],
            det.normal[None],
            det.pixel_spacing_mm,
        )[0]

    def ray_through(self, rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit direction(s) from the focus through image position(s) ``[row, col]``."""
        p = self.detector.pixel_to_world(rc)
        d = p - self.focus_mm
        return self.focus_mm, d / np.linalg.norm(d, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Tolerance:
    """How far the geometry on the day may be from the nominal one."""

    focus_mm: float
    detector_mm: float
    detector_deg: float


@dataclass(frozen=True)
class Station:
    """Nominal station geometry: exactly two views ``A`` and ``B``."""

    name: str
    views: dict[str, ViewGeometry]
    tolerance: Tolerance

    @classmethod
    def from_dict(cls, d: Any) -> Station:
        if not isinstance(d, dict):
            raise InputError("station: expected a JSON object")
        views = _require(d, "views", "station")
        if not isinstance(views, dict) or sorted(views) != list(VIEW_NAMES):
            got = sorted(views) if isinstance(views, dict) else views
            raise InputError(f"station.views: expected exactly views 'A' and 'B', got {got}")
        parsed = {}
        for name in VIEW_NAMES:
            v = views[name]
            parsed[name] = ViewGeometry(
                focus_mm=_vec(
                    _require(v, "focus_mm", f"station.views.{name}"),
                    3,
                    f"station.views.{name}.focus_mm",
                ),
                detector=Detector.from_dict(
                    _require(v, "detector", f"station.views.{name}"),
                    f"station.views.{name}.detector",
                ),
            )
        tol = d.get("tolerance", {"focus_mm": 60, "detector_mm": 3, "detector_deg": 1})
        try:
            tolerance = Tolerance(
                float(tol["focus_mm"]), float(tol["detector_mm"]), float(tol["detector_deg"])
            )
        except (KeyError, TypeError, ValueError):
            raise InputError(
                "station.tolerance: expected focus_mm, detector_mm and detector_deg numbers"
            ) from None
        return cls(name=str(d.get("name", "")), views=parsed, tolerance=tolerance)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "views": {
                k: {"focus_mm": v.focus_mm.tolist(), "detector": v.detector.to_dict()}
                for k, v in self.views.items()
            },
            "tolerance": {
                "focus_mm": self.tolerance.focus_mm,
                "detector_mm": self.tolerance.detector_mm,
                "detector_deg": self.tolerance.detector_deg,
            },
        }


@dataclass(frozen=True)
class CageMarker:
    id: str
    xyz_mm: np.ndarray
    role: str  # "fiducial" | "control"
    diameter_mm: float = 1.0


@dataclass(frozen=True)
class Cage:
    """A calibration cage: markers at known positions, which define the cage frame."""

    name: str
    markers: tuple[CageMarker, ...] = field(default_factory=tuple)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.markers]

    @property
    def xyz_mm(self) -> np.ndarray:
        """Marker positions, shape (n, 3)."""
        return np.array([m.xyz_mm for m in self.markers], dtype=float).reshape(-1, 3)

    @property
    def roles(self) -> np.ndarray:
        return np.array([m.role for m in self.markers])

    @classmethod
    def from_dict(cls, d: Any) -> Cage:
        if not isinstance(d, dict):
            raise InputError("cage: expected a JSON object")
        units = d.get("units", "mm")
        if units != "mm":
            raise InputError(f"cage.units: only 'mm' is supported, got {units!r}")
        raw = _require(d, "markers", "cage")
        if not isinstance(raw, list) or not raw:
            raise InputError("cage.markers: expected a non-empty list")
        markers, seen = [], set()
        for i, m in enumerate(raw):
            what = f"cage.markers[{i}]"
            mid = str(_require(m, "id", what))
            if mid in seen:
                raise InputError(f"{what}: duplicate marker id {mid!r}")
            seen.add(mid)
            role = m.get("role", "fiducial")
            if role not in ("fiducial", "control"):
                raise InputError(f"{what}.role: expected 'fiducial' or 'control', got {role!r}")
            diam = m.get("diameter_mm", 1.0)
            if not isinstance(diam, int | float) or isinstance(diam, bool) or diam <= 0:
                raise InputError(f"{what}.diameter_mm: expected a positive number, got {diam!r}")
            markers.append(
                CageMarker(
                    mid, _vec(_require(m, "xyz_mm", what), 3, f"{what}.xyz_mm"), role, float(diam)
                )
            )
        return cls(name=str(d.get("name", "")), markers=tuple(markers))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "units": "mm",
            "markers": [
                {
                    "id": m.id,
                    "xyz_mm": m.xyz_mm.tolist(),
                    "role": m.role,
                    "diameter_mm": m.diameter_mm,
                }
                for m in self.markers
            ],
        }


def projection_matrices(
    focus: np.ndarray,
    origin: np.ndarray,
    row_cosines: np.ndarray,
    column_cosines: np.ndarray,
    normal: np.ndarray,
    spacing: np.ndarray,
) -> np.ndarray:
    """Projection matrices (k, 3, 4) of k views, each ``[row, col, 1] ~ P @ [x, y, z, 1]``.

    Arguments are (k, 3) arrays (the detector's unit ``normal`` included) and the
    pixel spacing (row, column) shared by all. The hit point on the detector
    plane is ``X_d = f + h (X - f) / (n.(X - f))`` with ``h = n.(origin - f)``,
    and pixel coordinates are affine in ``X_d`` (Hartley & Zisserman,
    *Multiple View Geometry*, 2nd ed., 2004, ch. 6).
    """
    h = np.sum((origin - focus) * normal, axis=1)[:, None]  # signed focus-to-plane distance
    out = np.empty((len(focus), 3, 4))
    for i, (axis, sp) in enumerate(((column_cosines, spacing[0]), (row_cosines, spacing[1]))):
        # coord * (n.(X-f)) = h * axis.(X-f)/sp + (f-origin).axis/sp * n.(X-f)
        a = h * axis / sp + (np.sum((focus - origin) * axis, axis=1)[:, None] / sp) * normal
        out[:, i, :3] = a
        out[:, i, 3] = -np.sum(a * focus, axis=1)
    out[:, 2, :3] = normal
    out[:, 2, 3] = -np.sum(normal * focus, axis=1)
    return out
