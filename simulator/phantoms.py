"""Anatomical phantoms of the three RSA procedure regions, with beads and implants.

Five phantoms (``PHANTOM_REGION``): ``cervical`` and ``lumbar`` (spine),
``elbow`` and ``shoulder`` (upper), ``knee`` (lower); each region's default is
``DEFAULT_PHANTOM`` (the thin anatomy, measurable under the station's dose
cap: ``cervical``, ``elbow``, ``knee``; :mod:`simulator.thin_phantoms` builds
the first two). This module builds the other three (below).

Each phantom is built in its own patient frame (mm; for the spine and the
shoulder x lateral, y anterior, z cranial; for the knee x lateral, y proximal
along the leg, z anterior) out of the solids of :mod:`simulator.primitives`:
soft tissue, cortical shells around cancellous bone, metal implants and
polyethylene. Beads (tantalum, 0.8 mm in bone, 1.0 mm in implants) are
placed per seed inside their segment's bone or polyethylene, at least 4 mm
apart, as a surgeon spreads them. It is then placed in the cage frame by a
rigid pose.

- ``lumbar``: L3–S1 vertebrae; L4 and L5 carry beads (segments ``L4``,
  moving, and ``L5``, reference); a titanium interbody cage, pedicle screws in
  L4 and L5 and two rods hide beads in some views.
- ``shoulder``: a total shoulder: scapula (reference, beads in the glenoid vault,
  coracoid and acromion) and a polyethylene glenoid component (moving, beads in
  its body and pegs); a CoCr humeral head and titanium stem hide beads.
- ``knee``: a total knee: tibia (reference, beads in the metaphysis) and the
  tibial component (moving: titanium tray and keel, beads in the polyethylene
  insert); the CoCr femoral component and the tray hide beads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.spatial.transform import Rotation

from simulator.primitives import Box, Cylinder, Ellipsoid, Solid, rot_x, rot_y, rot_z

REGIONS = ("spine", "upper", "lower")
DEFAULT_CAGE = {"spine": "biplanar", "upper": "biplanar", "lower": "uniplanar"}
# Phantom name -> its region (the procedure: 0348T spine, 0349T upper, 0350T lower).
PHANTOM_REGION = {
    "cervical": "spine",
    "lumbar": "spine",
    "elbow": "upper",
    "shoulder": "upper",
    "knee": "lower",
}
# The region's default phantom: thin anatomy that the dose cap leaves measurable
# (docs/simulator.md, "Phantoms").
DEFAULT_PHANTOM = {"spine": "cervical", "upper": "elbow", "lower": "knee"}
# Set technique per phantom (per tube): kV, mA, ms, as a technician sets them for
# that anatomy; mAs chosen so that the open-field fluence is about 4400 quanta
# per 0.15 mm pixel at the nominal SID: just under the 5000 the issue allows with
# the day's SID and generator deviations (the dose cap, not the anatomy, limits it).
PHANTOM_TECHNIQUE = {
    # Per view where they differ: the lateral neck is thicker than the AP one.
    "cervical": {
        "A": {"kv": 80.0, "ma": 250.0, "ms": 41.0},
        "B": {"kv": 85.0, "ma": 200.0, "ms": 45.0},
    },
    "lumbar": {"kv": 85.0, "ma": 200.0, "ms": 45.0},
    "elbow": {"kv": 64.0, "ma": 250.0, "ms": 64.0},
    "shoulder": {"kv": 70.0, "ma": 250.0, "ms": 52.0},
    "knee": {"kv": 65.0, "ma": 250.0, "ms": 63.0},
}
# The default phantom's technique per region.
DEFAULT_TECHNIQUE = {r: PHANTOM_TECHNIQUE[n] for r, n in DEFAULT_PHANTOM.items()}
ALONG_Y = rot_x(-90.0)  # local z -> world +y
ALONG_X = rot_y(90.0)  # local z -> world +x


@dataclass(frozen=True)
class Bead:
    id: str
    segment: str
    xyz_mm: np.ndarray
    diameter_mm: float


@dataclass(frozen=True)
class Phantom:
    """A patient: solids and beads in the cage frame, and its segment roles."""

    region: str
    solids: tuple[Solid, ...]
    beads: tuple[Bead, ...]
    reference_segment: str
    moving_segment: str
    description: str = ""
    axis_letters: tuple[str, str, str] = ("L", "A", "H")  # patient directions of +x, +y, +z
    frame_rot: np.ndarray = field(default_factory=lambda: np.eye(3))  # patient -> cage axes
    name: str = ""  # the phantom's name (PHANTOMS), e.g. "cervical"

    def moved(self, rot: np.ndarray, trans: np.ndarray) -> Phantom:
        """The whole patient after the rigid motion ``x -> rot @ x + trans``."""
        return replace(
            self,
            frame_rot=rot @ self.frame_rot,
            solids=tuple(s.moved(rot, trans) for s in self.solids),
            beads=tuple(replace(b, xyz_mm=rot @ b.xyz_mm + trans) for b in self.beads),
        )

    def segment_moved(self, segment: str, rot: np.ndarray, trans: np.ndarray) -> Phantom:
        """The phantom with one segment (its beads and solids) moved rigidly."""
        return replace(
            self,
            solids=tuple(s.moved(rot, trans) if s.segment == segment else s for s in self.solids),
            beads=tuple(
                replace(b, xyz_mm=rot @ b.xyz_mm + trans) if b.segment == segment else b
                for b in self.beads
            ),
        )

    @property
    def metal(self) -> list[Solid]:
        return [s for s in self.solids if s.is_metal]

    def segments(self) -> dict[str, list[Bead]]:
        out: dict[str, list[Bead]] = {}
        for b in self.beads:
            out.setdefault(b.segment, []).append(b)
        return out


def _shell(cls, center, axes, thickness, seg=None, host="soft", **size) -> list[Solid]:
    """Cortical shell around cancellous bone, displacing ``host``."""
    size = {k: np.asarray(v, float) for k, v in size.items()}
    outer = cls(
        center=np.asarray(center, float),
        axes=axes,
        material="cortical",
        displaces=host,
        segment=seg,
        **size,
    )
    inner_size = {k: np.asarray(v, float) - thickness for k, v in size.items()}
    inner = cls(
        center=np.asarray(center, float),
        axes=axes,
        material="cancellous",
        displaces="cortical",
        segment=seg,
        **inner_size,
    )
    return [outer, inner]


def _tube(center, axes, radius, canal, half, seg=None) -> list[Solid]:
    """Long-bone shaft: cortical tube with a marrow canal."""
    c = np.asarray(center, float)
    return [
        Cylinder(
            center=c,
            axes=axes,
            material="cortical",
            displaces="soft",
            segment=seg,
            radii=np.array([radius, radius]),
            half=half,
        ),
        Cylinder(
            center=c,
            axes=axes,
            material="soft",
            displaces="cortical",
            segment=seg,
            radii=np.array([canal, canal]),
            half=half,
        ),
    ]


def _sample(rng, n, inside, lo, hi, min_sep, avoid=(), existing=()) -> list[np.ndarray]:
    """Rejection-sample ``n`` points in the box [lo, hi] satisfying ``inside``."""
    pts: list[np.ndarray] = list(existing)
    out: list[np.ndarray] = []
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    for _ in range(20000):
        if len(out) == n:
            break
        p = rng.uniform(lo, hi)
        if not inside(p) or any(a(p) for a in avoid):
            continue
        if all(np.linalg.norm(p - q) >= min_sep for q in pts):
            pts.append(p)
            out.append(p)
    if len(out) < n:
        raise RuntimeError("bead placement failed")  # a phantom design error, not input
    return out


def _in_ellipsoid(c, semi):
    c, semi = np.asarray(c, float), np.asarray(semi, float)
    return lambda p: float(np.sum(((p - c) / semi) ** 2)) <= 1.0


def _in_box(c, half):
    c, half = np.asarray(c, float), np.asarray(half, float)
    return lambda p: bool(np.all(np.abs(p - c) <= half))


def _near_axis(c, axis, radius):
    c, axis = np.asarray(c, float), np.asarray(axis, float) / np.linalg.norm(axis)

    def f(p):
        d = p - c
        return float(np.linalg.norm(d - (d @ axis) * axis)) < radius

    return f


# --------------------------------------------------------------------------- knee


def knee(rng: np.random.Generator) -> Phantom:
    """Total knee arthroplasty, supine on a uniplanar cage (patient frame: joint line y=0)."""
    S: list[Solid] = []
    S.append(
        Cylinder(
            center=np.zeros(3),
            axes=ALONG_Y,
            material="soft",
            radii=np.array([60.0, 54.0]),
            half=260.0,
        )
    )
    # Femur: shaft and condyles.
    S += _tube([0, 150, -5], ALONG_Y, 14.0, 9.0, 110.0)
    S += _shell(Ellipsoid, [0, 28, -4], np.eye(3), 2.0, semi=np.array([40.0, 32.0, 30.0]))
    # Patella.
    S += _shell(Ellipsoid, [0, 22, 40], np.eye(3), 1.5, semi=np.array([20.0, 22.0, 9.0]))
    # Tibia (reference segment) and fibula.
    S += _shell(
        Ellipsoid, [0, -32, -4], np.eye(3), 1.5, seg="tibia", semi=np.array([38.0, 30.0, 28.0])
    )
    S += _tube([0, -155, -4], ALONG_Y, 13.0, 8.0, 100.0, seg="tibia")
    S += _tube([34, -130, -16], ALONG_Y, 7.0, 3.5, 95.0)
    # Femoral component (CoCr): distal plate, anterior flange, posterior condyles.
    S.append(
        Box(
            center=np.array([0, 6.0, -4]),
            material="cocr",
            displaces="cancellous",
            half_size=np.array([36.0, 2.5, 28.0]),
        )
    )
    S.append(
        Box(
            center=np.array([0, 28.0, 26.5]),
            material="cocr",
            displaces="cancellous",
            half_size=np.array([28.0, 20.0, 2.5]),
        )
    )
    for x in (-21.0, 21.0):
        S.append(
            Box(
                center=np.array([x, 25.0, -30.5]),
                material="cocr",
                displaces="cancellous",
                half_size=np.array([11.0, 18.0, 2.5]),
            )
        )
    # Tibial component (moving): Ti tray and keel, PE insert carrying the beads.
    S.append(
        Box(
            center=np.array([0, -10.0, -4]),
            material="titanium",
            displaces="cancellous",
            segment="tibial_component",
            half_size=np.array([36.0, 2.0, 27.0]),
        )
    )
    S.append(
        Cylinder(
            center=np.array([0, -36.0, -4]),
            axes=ALONG_Y,
            material="titanium",
            displaces="cancellous",
            segment="tibial_component",
            radii=np.array([6.5, 6.5]),
            half=24.0,
        )
    )
    S.append(
        Box(
            center=np.array([0, -2.5, -4]),
            material="pe",
            displaces="soft",
            segment="tibial_component",
            half_size=np.array([34.0, 5.5, 26.0]),
        )
    )

    keel = _near_axis([0, -36, -4], [0, 1, 0], 10.0)
    tib = _sample(
        rng,
        9,
        _in_ellipsoid([0, -32, -4], [33, 25, 24]),
        [-34, -58, -28],
        [34, -18, 20],
        5.0,
        avoid=[keel],
    )
    imp = _sample(rng, 7, _in_box([0, -2.5, -4], [31, 2.5, 23]), [-31, -5, -27], [31, 0, 19], 6.0)
    beads = _beads("tibia", tib, 0.8) + _beads("tibial_component", imp, 1.0)
    return Phantom(
        "lower",
        tuple(S),
        tuple(beads),
        "tibia",
        "tibial_component",
        "total knee arthroplasty (right knee), supine on a uniplanar cage",
        axis_letters=("R", "H", "A"),
        name="knee",
    )


def _beads(segment: str, pts, diameter: float) -> list[Bead]:
    return [
        Bead(f"{segment}-{i + 1}", segment, np.asarray(p, float), diameter)
        for i, p in enumerate(pts)
    ]


# --------------------------------------------------------------------------- spine


def spine(rng: np.random.Generator) -> Phantom:
    """Lumbar fusion L4–L5 in a biplanar cage (patient frame origin: L4/L5 disc)."""
    S: list[Solid] = []
    S.append(
        Cylinder(
            center=np.array([0, 45.0, 0]),
            material="soft",
            radii=np.array([140.0, 100.0]),
            half=260.0,
        )
    )
    # Bowel gas (radiolucent) in front of the spine.
    for c, s in (([40, 50, 40], [30, 18, 22]), ([-55, 60, -30], [25, 20, 30])):
        S.append(
            Ellipsoid(
                center=np.array(c, float), material="air", displaces="soft", semi=np.array(s, float)
            )
        )
    pitch = 37.0
    names = {1.5: None, 0.5: "L4", -0.5: "L5", -1.5: None}
    for k, seg in names.items():
        zc = k * pitch
        S += _shell(
            Cylinder, [0, 0, zc], np.eye(3), 1.5, seg=seg, radii=np.array([24.0, 17.0]), half=13.0
        )
        for x in (-14.0, 14.0):
            S += _shell(
                Cylinder,
                [x, -25, zc + 3],
                ALONG_Y,
                1.5,
                seg=seg,
                radii=np.array([5.0, 5.0]),
                half=9.0,
            )
            S.append(
                Box(
                    center=np.array([2.2 * x, -30, zc + 4]),
                    material="cancellous",
                    displaces="soft",
                    segment=seg,
                    half_size=np.array([12.0, 4.0, 5.0]),
                )
            )
        S.append(
            Box(
                center=np.array([0, -37.0, zc + 2]),
                material="cancellous",
                displaces="soft",
                segment=seg,
                half_size=np.array([13.0, 4.0, 9.0]),
            )
        )
        S.append(
            Box(
                center=np.array([0, -52.0, zc]),
                material="cancellous",
                displaces="soft",
                segment=seg,
                half_size=np.array([3.5, 12.0, 9.0]),
            )
        )
    # Interbody cage (Ti, fenestrated) in the L4/L5 disc.
    S.append(
        Box(
            center=np.array([0, 2.0, 0]),
            material="titanium",
            displaces="soft",
            half_size=np.array([13.0, 9.0, 4.5]),
        )
    )
    S.append(
        Box(
            center=np.array([0, 2.0, 0]),
            material="cancellous",
            displaces="titanium",
            half_size=np.array([9.0, 5.5, 4.5]),
        )
    )
    # Pedicle screws converging 10 degrees, tulips and rods.
    for seg, zc in (("L4", 0.5 * pitch), ("L5", -0.5 * pitch)):
        for side in (-1.0, 1.0):
            head = np.array([side * 18.0, -42.0, zc + 3])
            tip = np.array([side * 9.0, 5.0, zc + 3])
            axis = (tip - head) / np.linalg.norm(tip - head)
            S.append(
                Cylinder(
                    center=(head + tip) / 2,
                    axes=_axes_for(axis),
                    material="titanium",
                    displaces="cancellous",
                    segment=seg,
                    radii=np.array([3.25, 3.25]),
                    half=float(np.linalg.norm(tip - head) / 2),
                )
            )
            S.append(
                Box(
                    center=head + np.array([0, -4.0, 0]),
                    material="titanium",
                    displaces="soft",
                    segment=seg,
                    half_size=np.array([5.0, 5.0, 6.0]),
                )
            )
    for side in (-1.0, 1.0):
        S.append(
            Cylinder(
                center=np.array([side * 18.0, -46.0, 0]),
                material="titanium",
                displaces="soft",
                radii=np.array([2.75, 2.75]),
                half=30.0,
            )
        )

    beads: list[Bead] = []
    for seg, zc in (("L4", 0.5 * pitch), ("L5", -0.5 * pitch)):
        # Screws run at z = zc + 3: beads stay clear of that slab, so that the
        # screws hide only some of them in the lateral view, as in real exams.
        def in_body(p, zc=zc):
            in_ellipse = (p[0] / 21) ** 2 + (p[1] / 14) ** 2 <= 1
            dz = p[2] - zc
            return in_ellipse and (-10 <= dz <= -2.5 or 8.5 <= dz <= 10)

        body = _sample(rng, 7, in_body, [-21, -14, zc - 10], [21, 14, zc + 10], 4.5)
        post = _sample(
            rng,
            3,
            _in_box([0, -57.5, zc + 1], [3, 5.5, 7]),
            [-3, -63, zc - 6],
            [3, -52, zc + 8],
            4.5,
            existing=body,
        )
        beads += _beads(seg, body + post, 0.8)
    return Phantom(
        "spine",
        tuple(S),
        tuple(beads),
        "L5",
        "L4",
        "posterior lumbar interbody fusion L4-L5 in a biplanar cage",
        name="lumbar",
    )


def _axes_for(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is ``axis``."""
    z = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


# --------------------------------------------------------------------------- shoulder


def shoulder(rng: np.random.Generator) -> Phantom:
    """Anatomical total shoulder (patient frame origin: glenoid centre, x lateral)."""
    S: list[Solid] = []
    S.append(
        Ellipsoid(
            center=np.array([-25.0, 0, -40]), material="soft", semi=np.array([120.0, 85.0, 200.0])
        )
    )
    # Humerus with stem and CoCr head.
    S += _shell(Ellipsoid, [30, 0, -22], np.eye(3), 1.5, semi=np.array([21.0, 21.0, 28.0]))
    S += _tube([34, 0, -130], np.eye(3), 12.0, 7.0, 85.0)
    S.append(
        Cylinder(
            center=np.array([33.0, 0, -75]),
            material="titanium",
            displaces="soft",
            radii=np.array([6.0, 6.0]),
            half=60.0,
        )
    )
    neck_axis = np.array([-0.8, 0, 0.6])
    S.append(
        Cylinder(
            center=np.array([26.0, 0, -8]),
            axes=_axes_for(neck_axis),
            material="titanium",
            displaces="cancellous",
            radii=np.array([6.0, 6.0]),
            half=12.0,
        )
    )
    S.append(
        Ellipsoid(
            center=np.array([14.0, 0, 2]),
            axes=rot_y(-70.0),
            material="cocr",
            displaces="soft",
            semi=np.array([22.0, 22.0, 9.0]),
        )
    )
    # Scapula (reference): glenoid vault, neck, blade, coracoid, acromion; clavicle, ribs.
    S += _shell(
        Ellipsoid, [-20, 0, 0], np.eye(3), 1.5, seg="scapula", semi=np.array([12.0, 15.0, 21.0])
    )
    S += _shell(
        Ellipsoid, [-38, -5, -5], np.eye(3), 1.5, seg="scapula", semi=np.array([14.0, 10.0, 16.0])
    )
    S.append(
        Box(
            center=np.array([-80.0, -25, -40]),
            axes=rot_z(25.0),
            material="cortical",
            displaces="soft",
            segment="scapula",
            half_size=np.array([45.0, 2.5, 60.0]),
        )
    )
    S += _shell(
        Cylinder,
        [-28, 22, 24],
        _axes_for(np.array([0.3, 1.0, 0.2])),
        1.5,
        seg="scapula",
        radii=np.array([6.0, 6.0]),
        half=16.0,
    )
    S += _shell(
        Box, [-5, -22, 40], np.eye(3), 1.5, seg="scapula", half_size=np.array([26.0, 13.0, 4.0])
    )
    S += _tube([-70, 12, 62], ALONG_X, 8.0, 4.0, 70.0)
    for z in (-40.0, -85.0, -130.0):
        S += _tube([-125, 0, z], _axes_for(np.array([0.25, 1.0, -0.2])), 5.0, 3.0, 80.0)
    # Glenoid component (moving): PE body and three pegs.
    S.append(
        Box(
            center=np.array([-5.0, 0, 0]),
            material="pe",
            displaces="soft",
            segment="glenoid_component",
            half_size=np.array([3.0, 13.0, 19.0]),
        )
    )
    for z in (-11.0, 0.0, 11.0):
        S.append(
            Cylinder(
                center=np.array([-15.0, 0, z]),
                axes=ALONG_X,
                material="pe",
                displaces="cancellous",
                segment="glenoid_component",
                radii=np.array([2.6, 2.6]),
                half=7.0,
            )
        )

    scap = _sample(
        rng,
        6,
        _in_ellipsoid([-22, 0, 0], [9, 12, 18]),
        [-31, -12, -18],
        [-13, 12, 18],
        5.0,
        avoid=[_in_box([-15, 0, 0], [8, 4, 15])],
    )
    scap += _sample(
        rng,
        2,
        _in_ellipsoid([-38, -5, -5], [11, 7, 13]),
        [-49, -12, -18],
        [-27, 2, 8],
        5.0,
        existing=scap,
    )
    scap += _sample(
        rng,
        2,
        _in_box([-5, -22, 40], [22, 9, 1.5]),
        [-27, -31, 38.5],
        [17, -13, 41.5],
        6.0,
        existing=scap,
    )
    glen = _sample(
        rng, 3, _in_box([-5, 0, 0], [1.5, 11, 17]), [-6.5, -11, -17], [-3.5, 11, 17], 6.0
    )
    # Two beads in each peg, the deeper ones further from the humeral head.
    for z in (-11.0, 0.0, 11.0):
        for x in (-11.0, -19.5):
            glen.append(np.array([x + rng.uniform(-1, 1), 0.0, z]))
    beads = _beads("scapula", scap, 0.8) + _beads("glenoid_component", glen, 1.0)
    return Phantom(
        "upper",
        tuple(S),
        tuple(beads),
        "scapula",
        "glenoid_component",
        "anatomical total shoulder arthroplasty (right) in a biplanar cage",
        axis_letters=("R", "A", "H"),
        name="shoulder",
    )


def _builders() -> dict:
    from simulator.thin_phantoms import cervical, elbow  # they build on this module

    return {
        "cervical": cervical,
        "lumbar": spine,
        "elbow": elbow,
        "shoulder": shoulder,
        "knee": knee,
    }


# Nominal placement of each phantom's frame in each cage's frame: (rotation, translation).
PLACEMENT = {
    ("knee", "uniplanar"): (np.eye(3), np.array([0.0, 0.0, 262.0])),
    ("knee", "biplanar"): (rot_x(90.0), np.array([0.0, 0.0, 0.0])),
    ("lumbar", "biplanar"): (np.eye(3), np.array([0.0, -15.0, 0.0])),
    ("lumbar", "uniplanar"): (rot_x(-90.0) @ np.eye(3), np.array([0.0, 0.0, 300.0])),
    ("shoulder", "biplanar"): (rot_z(45.0), np.array([0.0, 0.0, 0.0])),
    ("shoulder", "uniplanar"): (rot_x(-90.0) @ rot_z(0.0), np.array([0.0, 0.0, 270.0])),
    # Supine, anterior up, the shoulders clear of the control plate.
    ("cervical", "biplanar"): (np.eye(3), np.array([0.0, 0.0, 0.0])),
    ("cervical", "uniplanar"): (rot_x(90.0), np.array([0.0, 0.0, 295.0])),
    # AP and lateral of the extended elbow. On the uniplanar cage lying palm up
    # with the arm along the plane of the two beams: both views then see the
    # stems edge-on in the same band, as a knee's keel is seen.
    ("elbow", "biplanar"): (np.eye(3), np.array([0.0, 0.0, 0.0])),
    ("elbow", "uniplanar"): (
        np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        np.array([0.0, 0.0, 235.0]),
    ),
}


def phantom_name_for(region: str, name: str | None = None) -> str:
    """The phantom to build: ``name`` checked against ``region``, or the region's default.

    Raises ``ValueError`` (one line) for an unknown name or one of another region.
    """
    if name is None:
        return DEFAULT_PHANTOM[region]
    if name not in PHANTOM_REGION:
        raise ValueError(f"expected one of {', '.join(PHANTOM_REGION)}, got {name!r}")
    if PHANTOM_REGION[name] != region:
        raise ValueError(
            f"{name!r} is a phantom of region {PHANTOM_REGION[name]!r}, not {region!r}"
        )
    return name


def build_phantom(
    region: str, rng: np.random.Generator, cage: str, name: str | None = None
) -> Phantom:
    """The region's phantom (``name``, default ``DEFAULT_PHANTOM[region]``), beads laid
    out by ``rng``, placed nominally in ``cage``."""
    name = phantom_name_for(region, name)
    ph = _builders()[name](rng)
    ph = replace(ph, solids=ph.solids + tuple(_fat_planes(ph, rng)))
    rot, trans = PLACEMENT[(name, cage)]
    return ph.moved(rot, trans)


def _fat_planes(ph: Phantom, rng: np.random.Generator, n: int = 6) -> list[Solid]:
    """Intermuscular and subcutaneous fat: soft, low-contrast clutter in the background.

    Ellipsoids of fat inside the body's soft tissue (its first solid), kept
    clear of bone, implants and air so that nothing is displaced twice.
    """
    body = ph.solids[0]
    # Air (bowel gas, trachea) too: a fat plane inside it would subtract soft tissue twice.
    hard = [s for s in ph.solids[1:] if s.material not in ("soft", "fat")]
    size = float(np.min(body.half_extents()[:2]))
    out: list[Solid] = []
    for _ in range(200):
        if len(out) == n:
            break
        semi = rng.uniform(0.08, 0.25, size=3) * size
        local = rng.uniform(-0.6, 0.6, size=3) * body.half_extents()
        if isinstance(body, Ellipsoid) and np.sum((local / body.half_extents()) ** 2) > 0.36:
            continue
        if isinstance(body, Cylinder):
            if np.sum((local[:2] / body.half_extents()[:2]) ** 2) > 0.36:
                continue
            local[2] = float(np.clip(local[2], -body.half + 60, body.half - 60))
        centre = body.center + body.axes @ local
        reach = float(semi.max())
        if any(bool(h.dilated(reach).contains(centre)) for h in hard):
            continue
        axes = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
        out.append(Ellipsoid(center=centre, axes=axes, material="fat", displaces="soft", semi=semi))
    return out


OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def orientation_letters(ph: Phantom, direction: np.ndarray) -> str:
    """DICOM patient-orientation string of a cage-frame direction (e.g. ``"LP"``)."""
    local = ph.frame_rot.T @ np.asarray(direction, float)
    order = np.argsort(-np.abs(local))
    out = ""
    for k in order:
        if abs(local[k]) > 0.3:
            letter = ph.axis_letters[k]
            out += letter if local[k] > 0 else OPPOSITE[letter]
    return out or ph.axis_letters[int(order[0])]


def cage_solids(cage_kind: str) -> list[Solid]:
    """The cage's PMMA marker plates (they attenuate, and scatter is not drawn from them)."""
    pm = dict(material="pmma", displaces=None, group="cage")
    if cage_kind == "uniplanar":
        return [
            Box(center=np.array([0.0, 0, 0]), half_size=np.array([335.0, 195.0, 4.0]), **pm),
            Box(center=np.array([0.0, 0, 175]), half_size=np.array([200.0, 170.0, 4.0]), **pm),
        ]
    return [
        Box(center=np.array([0.0, -330, 0]), half_size=np.array([158.0, 4.0, 188.0]), **pm),
        Box(center=np.array([0.0, -160, 0]), half_size=np.array([142.0, 4.0, 168.0]), **pm),
        Box(center=np.array([-330.0, 0, 0]), half_size=np.array([4.0, 158.0, 188.0]), **pm),
        Box(center=np.array([-160.0, 0, 0]), half_size=np.array([4.0, 142.0, 168.0]), **pm),
    ]
