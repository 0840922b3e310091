"""Thin-anatomy phantoms: the cervical spine and the elbow.

Under the station's dose cap (at most 5000 quanta per 0.15 mm pixel in the
open field) the lumbar spine and the shoulder leave a few hundred quanta, or
fewer, behind the patient: no estimator can then place a 0.8 mm bead to the
hundredths of a pixel RSA needs. The thin-anatomy RSA applications are the
ones both clinically representative and measurable at that dose:

- ``cervical``: anterior cervical discectomy and fusion (ACDF) at C5–C6 with a
  stand-alone titanium interbody cage; beads in the C5 (moving) and C6
  (reference) vertebral bodies, as placed through the anterior approach (RSA
  of cervical fusion and disc arthroplasty is an established application; the
  same two-vertebra design as the lumbar phantom). Neck 12 cm lateral, 11.2 cm
  antero-posterior, trachea, the shoulders below C7.
- ``elbow``: linked total elbow arthroplasty (RSA of total elbow implants:
  Valstar, Garling & Rozing, Acta Orthop Scand 2002;73:264–272):
  the proximal ulna (reference; beads in the metaphysis and olecranon) and the
  ulnar component (moving; titanium stem, beads in its polyethylene bearing);
  the titanium humeral component (stem, yoke, anterior flange) and the CoCr
  hinge axle hide beads; distal humerus, radial head and shaft; soft tissue of
  a large adult elbow (10.4 x 9.4 cm: thinner ones fall under the cap's
  scatter-to-primary of 0.5 in this scatter model).

Frames (mm): ``cervical`` x left, y anterior, z cranial, origin the centre of
the C5–C6 disc; ``elbow`` (right arm, extended) x lateral, y anterior, z
proximal, origin the centre of the hinge axle. The builders share the solids
and samplers of :mod:`simulator.phantoms`.
"""

from __future__ import annotations

import numpy as np

from simulator.phantoms import (
    ALONG_X,
    ALONG_Y,
    Bead,
    Phantom,
    _beads,
    _in_box,
    _in_ellipsoid,
    _sample,
    _shell,
    _tube,
)
from simulator.primitives import Box, Cylinder, Ellipsoid, Solid

CERVICAL_PITCH_MM = 19.0  # body height 13 mm + disc 6 mm


def _cervical_vertebra(zc: float, seg: str | None) -> list[Solid]:
    """Body, pedicles, lateral masses, transverse processes, laminae, spinous process."""
    S: list[Solid] = []
    S += _shell(Cylinder, [0, 0, zc], np.eye(3), 1.0, seg=seg, radii=[8.5, 7.5], half=6.5)
    for x in (-1.0, 1.0):
        S += _shell(
            Cylinder, [6.0 * x, -10.0, zc + 1], ALONG_Y, 0.8, seg=seg, radii=[2.2, 3.0], half=2.8
        )
        S += _shell(Box, [14.0 * x, -16.0, zc], np.eye(3), 1.0, seg=seg, half_size=[4.5, 5.5, 7.0])
        for kind, c, h in (
            ("tp", [21.5 * x, -6.0, zc], [3.5, 3.0, 3.0]),
            ("lamina", [7.0 * x, -24.0, zc - 1], [3.5, 2.0, 5.0]),
        ):
            del kind
            S.append(
                Box(
                    center=np.array(c, float),
                    material="cancellous",
                    displaces="soft",
                    segment=seg,
                    half_size=np.array(h, float),
                )
            )
    S.append(
        Box(
            center=np.array([0, -32.0, zc - 2]),
            material="cancellous",
            displaces="soft",
            segment=seg,
            half_size=np.array([2.5, 6.0, 4.0]),
        )
    )
    return S


def cervical(rng: np.random.Generator) -> Phantom:
    """ACDF C5–C6 with a titanium interbody cage, in a biplanar cage."""
    S: list[Solid] = []
    # Neck (first solid: the body the fat planes go in), then the shoulders below C7.
    S.append(Cylinder(center=np.array([0, 8.0, 10.0]), radii=np.array([60.0, 56.0]), half=90.0))
    S.append(Cylinder(center=np.array([0, 0.0, -150.0]), radii=np.array([190.0, 110.0]), half=70.0))
    # Trachea (air) in front of the oesophagus.
    S.append(
        Cylinder(
            center=np.array([0, 29.0, 10.0]),
            material="air",
            displaces="soft",
            radii=np.array([8.0, 7.0]),
            half=88.0,
        )
    )
    p = CERVICAL_PITCH_MM
    levels = {2.5: None, 1.5: None, 0.5: "C5", -0.5: "C6", -1.5: None, -2.5: None}
    for k, seg in levels.items():
        S += _cervical_vertebra(k * p, seg)
    # Stand-alone titanium cage in the C5–C6 disc, its graft window packed with bone.
    S.append(
        Box(
            center=np.array([0, 1.0, 0]),
            material="titanium",
            displaces="soft",
            half_size=np.array([7.0, 6.0, 3.0]),
        )
    )
    S.append(
        Box(
            center=np.array([0, 1.0, 0]),
            material="cancellous",
            displaces="titanium",
            half_size=np.array([4.0, 3.5, 3.0]),
        )
    )

    beads: list[Bead] = []
    pts: list[np.ndarray] = []
    for seg, zc in (("C5", 0.5 * p), ("C6", -0.5 * p)):
        # Anterior approach: beads spread through the body (the cortex 1 mm away).
        body = _sample(
            rng,
            8,
            _in_ellipsoid([0, 0, zc], [7.0, 6.0, 5.3]),
            [-7, -6, zc - 5.3],
            [7, 6, zc + 5.3],
            4.0,
            existing=pts,
        )
        pts += body
        beads += _beads(seg, body, 0.8)
    return Phantom(
        "spine",
        tuple(S),
        tuple(beads),
        "C6",
        "C5",
        "anterior cervical discectomy and fusion C5-C6 (titanium cage) in a biplanar cage",
        name="cervical",
    )


def elbow(rng: np.random.Generator) -> Phantom:
    """Linked total elbow arthroplasty (right, extended), in a biplanar cage."""
    S: list[Solid] = []
    S.append(Cylinder(center=np.array([0, -2.0, 0]), radii=np.array([52.0, 47.0]), half=200.0))
    # Distal humerus: shaft and condyles (the trochlea resected for the implant).
    S += _tube([0, -2, 96], np.eye(3), 10.0, 6.0, 64.0)
    S += _shell(Ellipsoid, [0, -2, 14], np.eye(3), 1.5, semi=[30.0, 11.0, 18.0])
    # Proximal ulna (reference): metaphysis, olecranon, shaft.
    S += _shell(Ellipsoid, [0, -6, -22], np.eye(3), 1.5, seg="ulna", semi=[12.0, 11.0, 19.0])
    S += _shell(Box, [0, -17, 4], np.eye(3), 1.5, seg="ulna", half_size=[9.0, 4.5, 6.0])
    S += _tube([0, -6, -105], np.eye(3), 8.0, 4.0, 62.0, seg="ulna")
    # Radius: head and shaft, lateral.
    S += _shell(Cylinder, [22, -1, -12], np.eye(3), 1.2, radii=[9.0, 9.0], half=6.0)
    S += _tube([22, -1, -101], np.eye(3), 7.0, 3.5, 81.0)
    # Humeral component (Ti): stem in the canal and in the condyles, yoke, anterior flange.
    for c, half, host in (([0, -2, 78], 46.0, "soft"), ([0, -2, 21], 11.0, "cancellous")):
        S.append(
            Cylinder(
                center=np.array(c, float),
                material="titanium",
                displaces=host,
                radii=np.array([4.0, 4.0]),
                half=half,
            )
        )
    for x in (-9.5, 9.5):
        S.append(
            Box(
                center=np.array([x, -1.0, 3.0]),
                material="titanium",
                displaces="soft",
                half_size=np.array([1.5, 6.0, 8.0]),
            )
        )
    S.append(
        Box(
            center=np.array([0, 10.0, 32.0]),
            material="titanium",
            displaces="soft",
            half_size=np.array([4.0, 1.0, 12.0]),
        )
    )
    # CoCr hinge axle through the yoke and the ulnar bearing.
    S.append(
        Cylinder(
            center=np.zeros(3),
            axes=ALONG_X,
            material="cocr",
            displaces="soft",
            radii=np.array([3.5, 3.5]),
            half=11.0,
        )
    )
    # Ulnar component (moving): polyethylene bearing, titanium neck and stem.
    S.append(
        Box(
            center=np.array([0, -3.0, -11.0]),
            material="pe",
            displaces="cancellous",
            segment="ulnar_component",
            half_size=np.array([9.0, 7.5, 6.0]),
        )
    )
    S.append(
        Cylinder(
            center=np.array([0, -6.0, -57.5]),
            material="titanium",
            displaces="cancellous",
            segment="ulnar_component",
            radii=np.array([3.0, 3.0]),
            half=37.5,
        )
    )

    # Ulna beads: in the coronoid and metaphysis below the bearing, off the two
    # planes through the stem's axis along the beams (a surgeon checks on
    # fluoroscopy that the stem does not cover them), and in the olecranon,
    # which the humerus and the axle often cover in the AP view.
    def stem_shadow(p):
        return abs(p[0]) < 4.8 or abs(p[1] + 6.0) < 4.8

    ulna = _sample(
        rng,
        7,
        _in_ellipsoid([0, -6, -22], [9.5, 8.5, 16.5]),
        [-9.5, -14.5, -38],
        [9.5, 2.5, -19],
        4.5,
        avoid=[stem_shadow, _in_box([0, -3, -11], [10.5, 9, 7.5])],
    )
    ulna += _sample(
        rng,
        2,
        _in_box([0, -17, 4], [7.0, 2.5, 4.0]),
        [-7, -19.5, 0],
        [7, -14.5, 8],
        4.5,
        existing=ulna,
    )
    comp = _sample(
        rng,
        7,
        _in_box([0, -3, -11], [7.5, 6.0, 4.5]),
        [-7.5, -9, -15.5],
        [7.5, 3, -6.5],
        4.5,
    )
    beads = _beads("ulna", ulna, 1.0) + _beads("ulnar_component", comp, 1.0)
    return Phantom(
        "upper",
        tuple(S),
        tuple(beads),
        "ulna",
        "ulnar_component",
        "linked total elbow arthroplasty (right) in a biplanar cage",
        axis_letters=("R", "A", "H"),
        name="elbow",
    )
