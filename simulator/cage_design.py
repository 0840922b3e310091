"""Design of the two calibration cages and their stations (writes ``simulator/data``).

The data files are the product; this module documents how they were laid out
and regenerates them exactly (``python -m simulator.cage_design``).

Layout rule: markers are placed greedily, in a fixed pseudo-random order, on
the fiducial plane (just above a detector) and on the control plane (nearer
the tube), keeping every pair of shadows far apart in the nominal geometry of
every view that sees both. Control shadows move against fiducial shadows when
a tube is off its nominal spot by up to the station tolerance (60 mm of focus
shift moves a control shadow by about 60 * 175 / 1230 = 8.5 mm), so
control-to-fiducial spacing is larger than spacing within a plane; overlaps on
the day stay rare.

Geometry (cage frame, mm):

- uniplanar (``uniplanar-43``): detectors side by side at z = -25, facing up;
  fiducial plane z = 0, control plane z = 175; the patient lies on the cage;
  tube A at x < 0 crosses to detector A at x > 0 (30 degrees), tube B mirrors it.
- biplanar (``biplanar-90``): detector A in the plane y = -350 (tube A at
  y = +1300), detector B in the plane x = -350 (tube B at x = +1300); each has
  its own box: fiducial plane 20 mm in front of the detector, control plane
  170 mm further towards the tube.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reconstruction.geometry import Detector, ViewGeometry

DATA_DIR = Path(__file__).with_name("data")

ROWS, COLUMNS, SPACING = 2400, 2000, 0.15  # 4.8 MP, 360 x 300 mm, like common flat panels
TOLERANCE = {"focus_mm": 50.0, "detector_mm": 3.0, "detector_deg": 1.0}


def _detector(center, row_cos, col_cos) -> dict:
    rc, cc = np.asarray(row_cos, float), np.asarray(col_cos, float)
    origin = (
        np.asarray(center, float) - (COLUMNS - 1) / 2 * SPACING * rc - (ROWS - 1) / 2 * SPACING * cc
    )
    return {
        "origin_mm": [round(float(v), 4) for v in origin],
        "row_cosines": rc.tolist(),
        "column_cosines": cc.tolist(),
        "pixel_spacing_mm": [SPACING, SPACING],
        "rows": ROWS,
        "columns": COLUMNS,
    }


def uniplanar_station() -> dict:
    return {
        "name": "uniplanar-room",
        "views": {
            "A": {
                "focus_mm": [-660.0, 0.0, 1400.0],
                "detector": _detector([165.0, 0.0, -25.0], [1, 0, 0], [0, 1, 0]),
            },
            "B": {
                "focus_mm": [660.0, 0.0, 1400.0],
                "detector": _detector([-165.0, 0.0, -25.0], [1, 0, 0], [0, 1, 0]),
            },
        },
        "tolerance": dict(TOLERANCE),
    }


def biplanar_station() -> dict:
    return {
        "name": "biplanar-room",
        "views": {
            "A": {
                "focus_mm": [0.0, 1300.0, 0.0],
                "detector": _detector([0.0, -350.0, 0.0], [1, 0, 0], [0, 0, -1]),
            },
            "B": {
                "focus_mm": [1300.0, 0.0, 0.0],
                "detector": _detector([-350.0, 0.0, 0.0], [0, -1, 0], [0, 0, -1]),
            },
        },
        "tolerance": dict(TOLERANCE),
    }


def _views(station: dict) -> dict[str, ViewGeometry]:
    return {
        k: ViewGeometry(np.asarray(v["focus_mm"], float), Detector.from_dict(v["detector"]))
        for k, v in station["views"].items()
    }


def _inside(view: ViewGeometry, rc: np.ndarray, margin: float) -> np.ndarray:
    d = view.detector
    return (
        (rc[..., 0] >= margin)
        & (rc[..., 0] <= d.rows - 1 - margin)
        & (rc[..., 1] >= margin)
        & (rc[..., 1] <= d.columns - 1 - margin)
    )


def _greedy(
    candidates: list[tuple[np.ndarray, str]],
    views: dict[str, ViewGeometry],
    min_same_px: float,
    min_cross_px: float,
) -> list[tuple[np.ndarray, str]]:
    """Accept candidates whose shadows keep their distance in every view."""
    accepted: list[tuple[np.ndarray, str]] = []
    shadows: dict[str, list[tuple[np.ndarray, str]]] = {k: [] for k in views}
    for xyz, role in candidates:
        ok, seen = True, {}
        for k, v in views.items():
            rc = v.project(xyz)
            if not _inside(v, rc, 12.0):
                continue
            seen[k] = rc
            for other, orole in shadows[k]:
                limit = min_same_px if orole == role else min_cross_px
                if np.hypot(*(rc - other)) < limit:
                    ok = False
                    break
            if not ok:
                break
        if ok and seen:
            accepted.append((xyz, role))
            for k, rc in seen.items():
                shadows[k].append((rc, role))
    return accepted


def _grid_candidates(rng, xs, ys, make_xyz, jitter) -> list[np.ndarray]:
    pts = [
        make_xyz(x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter))
        for x in xs
        for y in ys
    ]
    order = rng.permutation(len(pts))
    return [np.round(np.asarray(pts[i], float), 2) for i in order]


def uniplanar_cage(station: dict) -> dict:
    rng = np.random.default_rng(43)
    views = _views(station)
    fid = _grid_candidates(
        rng,
        np.arange(-315, 316, 38.0),
        np.arange(-180, 181, 36.0),
        lambda x, y: (x, y, 0.0),
        8.0,
    )
    ctl = _grid_candidates(
        rng,
        np.arange(-175, 176, 34.0),
        np.arange(-150, 151, 32.0),
        lambda x, y: (x, y, 175.0),
        7.0,
    )
    cands = [(p, "control") for p in ctl] + [(p, "fiducial") for p in fid]
    acc = _greedy(cands, views, min_same_px=240.0, min_cross_px=130.0)
    return _cage_dict("uniplanar-43", acc)


def biplanar_cage(station: dict) -> dict:
    rng = np.random.default_rng(90)
    views = _views(station)
    cands = []
    # Box A (detector A at y = -350): fiducial y = -330, control y = -160.
    cands += [
        (p, "control")
        for p in _grid_candidates(
            rng,
            np.arange(-130, 131, 30.0),
            np.arange(-155, 156, 31.0),
            lambda x, z: (x, -160.0, z),
            7.0,
        )
    ]
    cands += [
        (p, "control")
        for p in _grid_candidates(
            rng,
            np.arange(-130, 131, 30.0),
            np.arange(-155, 156, 31.0),
            lambda y, z: (-160.0, y, z),
            7.0,
        )
    ]
    cands += [
        (p, "fiducial")
        for p in _grid_candidates(
            rng,
            np.arange(-145, 146, 33.0),
            np.arange(-175, 176, 35.0),
            lambda x, z: (x, -330.0, z),
            8.0,
        )
    ]
    cands += [
        (p, "fiducial")
        for p in _grid_candidates(
            rng,
            np.arange(-145, 146, 33.0),
            np.arange(-175, 176, 35.0),
            lambda y, z: (-330.0, y, z),
            8.0,
        )
    ]
    acc = _greedy(cands, views, min_same_px=240.0, min_cross_px=130.0)
    return _cage_dict("biplanar-90", acc)


def _cage_dict(name: str, accepted) -> dict:
    markers = []
    nf = nc = 0
    # Stable, readable ids: fiducials F1.., controls C1.., sorted by position.
    accepted = sorted(accepted, key=lambda a: (a[1], *a[0].tolist()))
    for xyz, role in accepted:
        if role == "fiducial":
            nf += 1
            mid = f"F{nf}"
        else:
            nc += 1
            mid = f"C{nc}"
        markers.append(
            {"id": mid, "xyz_mm": [float(v) for v in xyz], "role": role, "diameter_mm": 1.0}
        )
    return {"name": name, "units": "mm", "material": "tantalum", "markers": markers}


def shadow_counts(station: dict, cage: dict, margin: float = 10.0) -> dict[str, int]:
    """Cage markers whose nominal shadow lies ``margin`` px inside each detector."""
    views = _views(station)
    xyz = np.array([m["xyz_mm"] for m in cage["markers"]])
    return {k: int(_inside(v, v.project(xyz), margin).sum()) for k, v in views.items()}


def main() -> None:
    for kind, st_fn, cage_fn in (
        ("uniplanar", uniplanar_station, uniplanar_cage),
        ("biplanar", biplanar_station, biplanar_cage),
    ):
        st = st_fn()
        cage = cage_fn(st)
        (DATA_DIR / f"station-{kind}.json").write_text(json.dumps(st, indent=2) + "\n")
        (DATA_DIR / f"cage-{kind}.json").write_text(json.dumps(cage, indent=2) + "\n")
        print(kind, len(cage["markers"]), shadow_counts(st, cage))


if __name__ == "__main__":
    main()
