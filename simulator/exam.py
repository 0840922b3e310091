"""One simulated stereo exam: station, cage, two frames and the ground truth.

``simulate_exam(region, seed)`` is deterministic: the same arguments give the
same pixels and the same truth on the same machine. Everything random (the
geometry on the day, the patient's bead layout and positioning, the actual
technique, texture, noise) is drawn from named streams of one seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.geometry import Cage, Detector, Station, ViewGeometry
from simulator.frames import Frame, FrameMeta
from simulator.phantoms import (
    DEFAULT_CAGE,
    PHANTOM_TECHNIQUE,
    REGIONS,
    Phantom,
    build_phantom,
    cage_solids,
    orientation_letters,
    phantom_name_for,
)
from simulator.render import Markers, RenderOptions, collimated_box, render_view

DATA_DIR = Path(__file__).with_name("data")
CAGES = ("uniplanar", "biplanar")
MIN_INSIDE_PX = 10.0
MIN_SEPARATION_PX = 14.0
METAL_CLEARANCE_MM = 1.5
BASE_TIME = datetime(2026, 1, 5, 9, 0, 0)

# Named random streams of one seed (the numbers only keep the streams apart).
_STREAM = {"geometry": 1, "beads": 2, "pose": 3, "technique": 4, "A": 5, "B": 6}


def rng_for(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAM[stream], *extra])


def load_data(kind: str, cage: str) -> dict:
    """The committed station or cage file (``kind`` 'station' or 'cage')."""
    return json.loads((DATA_DIR / f"{kind}-{cage}.json").read_text())


def binned_station(station: dict, factor: int) -> dict:
    """The same station with its detectors read out binned ``factor x factor``."""
    st = json.loads(json.dumps(station))
    for v in st["views"].values():
        d = v["detector"]
        old = Detector.from_dict(d)
        sp = [s * factor for s in d["pixel_spacing_mm"]]
        # New pixel (0, 0) centre: the centre of the old block of factor x factor pixels.
        origin = old.pixel_to_world(np.array([(factor - 1) / 2, (factor - 1) / 2]))
        d.update(
            origin_mm=[round(float(x), 6) for x in origin],
            pixel_spacing_mm=sp,
            rows=d["rows"] // factor,
            columns=d["columns"] // factor,
        )
    st["name"] = f"{st['name']}-bin{factor}"
    return st


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.radians(max_deg) * rng.uniform(0, 1)
    return Rotation.from_rotvec(axis * ang).as_matrix()


def _in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.uniform(0, 1) ** (1 / 3)


def _migrated(phantom: Phantom, migration) -> Phantom:
    """The phantom with its moving segment moved by ``migration`` (see simulate_exam)."""
    if isinstance(migration, tuple) and len(migration) == 2:
        rot = np.asarray(migration[0], float).reshape(3, 3)
        t = np.asarray(migration[1], float).reshape(3)
    else:
        try:
            v = np.asarray(migration, float).reshape(6)
        except (TypeError, ValueError):
            raise InputError(
                f"migration: expected (R, t) or 6 numbers tx,ty,tz,rx,ry,rz, got {migration!r}"
            ) from None
        rot = Rotation.from_euler("xyz", v[3:], degrees=True).as_matrix()
        c = np.mean([b.xyz_mm for b in phantom.beads if b.segment == phantom.moving_segment], 0)
        t = v[:3] + c - rot @ c
    return phantom.segment_moved(phantom.moving_segment, rot, t)


def nominal_isocentre(station: Station) -> np.ndarray:
    """Where the two nominal central rays pass closest: the set-up's patient position.

    A console fills DistanceSourceToPatient from its nominal set-up, not from
    the patient: this point plays that role.
    """
    p, d = [], []
    for v in station.views.values():
        p.append(v.focus_mm)
        ray = v.detector.center_mm - v.focus_mm
        d.append(ray / np.linalg.norm(ray))
    w = p[0] - p[1]
    b = d[0] @ d[1]
    denom = 1 - b * b
    s = (b * (d[1] @ w) - (d[0] @ w)) / denom
    t = ((d[1] @ w) - b * (d[0] @ w)) / denom
    return (p[0] + s * d[0] + p[1] + t * d[1]) / 2


def random_pose(
    phantom: Phantom, rng: np.random.Generator, max_deg: float, max_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """A repositioning ``x -> R x + t``: a turn about the beads' centroid and a shift.

    Turning about the centroid keeps the region of interest in the field.
    """
    rot = _random_rotation(rng, max_deg)
    centre = np.mean([b.xyz_mm for b in phantom.beads], axis=0)
    return rot, _in_ball(rng, max_mm) + centre - rot @ centre


def geometry_on_the_day(station: Station, rng: np.random.Generator) -> dict[str, ViewGeometry]:
    """Each view off its nominal set-up within 90% of the station tolerances.

    The focus moves anywhere within a ball; the detector turns about its
    centre (any axis) and shifts.
    """
    tol = station.tolerance
    out = {}
    for name in ("A", "B"):
        nom = station.views[name]
        det = nom.detector
        focus = nom.focus_mm + _in_ball(rng, 0.9 * tol.focus_mm)
        rot = _random_rotation(rng, 0.9 * tol.detector_deg)
        shift = _in_ball(rng, 0.9 * tol.detector_mm)
        centre = det.center_mm
        rc, cc = rot @ det.row_cosines, rot @ det.column_cosines
        new_centre = centre + shift
        origin = (
            new_centre
            - (det.columns - 1) / 2 * det.pixel_spacing_mm[1] * rc
            - (det.rows - 1) / 2 * det.pixel_spacing_mm[0] * cc
        )
        out[name] = ViewGeometry(
            focus_mm=focus,
            detector=Detector(origin, rc, cc, det.pixel_spacing_mm.copy(), det.rows, det.columns),
        )
    return out


def actual_technique(set_technique: dict, rng: np.random.Generator) -> dict:
    """What the generator delivers: kV within 1%, mA within 2% of the set value."""
    kv = set_technique["kv"] * (1 + rng.uniform(-0.01, 0.01))
    ma = set_technique["ma"] * (1 + rng.uniform(-0.02, 0.02))
    ms = float(set_technique["ms"])
    return {"kv": round(kv, 2), "ma": round(ma, 2), "ms": ms, "mas": round(ma * ms / 1000, 3)}


def visibility(
    view: ViewGeometry,
    xyz: np.ndarray,
    metal: list,
    field_px: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Projected centres and the issue's visibility rule for every marker.

    A marker counts as visible in a view when its projected centre lies at
    least 10 px inside the image (and inside the collimated field), at least
    14 px from every other marker's projected centre (cage markers and beads
    alike), and its ray (focus to detector through its centre) passes no
    closer than 1.5 mm to any metal.

    Returns ``(image_px (n, 2), visible (n,) bool)``.
    """
    det = view.detector
    rc = view.project(xyz)
    r0, r1, c0, c1 = 0, det.rows - 1, 0, det.columns - 1
    if field_px is not None:
        r0, r1, c0, c1 = field_px
    m = MIN_INSIDE_PX
    inside = (
        np.isfinite(rc).all(axis=1)
        & (rc[:, 0] >= r0 + m)
        & (rc[:, 0] <= r1 - m)
        & (rc[:, 1] >= c0 + m)
        & (rc[:, 1] <= c1 - m)
    )
    fin = np.nan_to_num(rc, nan=-1e9)
    d = np.hypot(fin[:, None, 0] - fin[None, :, 0], fin[:, None, 1] - fin[None, :, 1])
    np.fill_diagonal(d, np.inf)
    apart = d.min(axis=1) >= MIN_SEPARATION_PX if len(xyz) > 1 else np.ones(len(xyz), bool)
    dirs = xyz - view.focus_mm
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    clear = np.ones(len(xyz), bool)
    for s in metal:
        clear &= s.dilated(METAL_CLEARANCE_MM).chord(view.focus_mm, dirs) <= 0
    return rc, inside & apart & clear


def _view_position(ph: Phantom, view: ViewGeometry) -> str:
    """DICOM ViewPosition from the beam direction in the patient frame."""
    beam = view.detector.center_mm - view.focus_mm
    entry = orientation_letters(ph, -beam)[:1]  # side the beam enters
    return {"A": "AP", "P": "PA", "R": "LL", "L": "RL"}.get(entry, "")


@dataclass
class SimulatedExam:
    """A simulated stereo exam: nominal station, cage, frames and ground truth."""

    region: str
    seed: int
    station: dict
    cage: dict
    frames: dict[str, Frame]
    truth: dict
    phantom: Phantom = field(repr=False)
    render_info: dict = field(default_factory=dict, repr=False)

    def segments_json(self) -> dict:
        """The contract's segment file for this exam's bead positions (exposure A)."""
        segs: dict[str, list] = {}
        for b in self.truth["beads"]:
            segs.setdefault(b["segment"], []).append([round(v, 3) for v in b["xyz_mm"]])
        return {
            "reference_segment": self.phantom.reference_segment,
            "moving_segment": self.phantom.moving_segment,
            "segments": segs,
        }


def lay_out_beads(
    region: str,
    cage_kind: str,
    seed: int,
    cage_xyz: np.ndarray,
    scenarios: list[tuple[dict[str, ViewGeometry], tuple[np.ndarray, np.ndarray] | None]],
    attempts: int = 40,
    phantom_name: str | None = None,
) -> Phantom:
    """The patient's bead layout, drawn as a surgeon spreads beads.

    Layouts are drawn in turn from ``seed`` until one leaves at least 4 beads
    per segment visible in both views in every scenario (the views on the day
    and the patient's pose of each examination it will appear in); otherwise
    the layout with the best worst case is kept. ``phantom_name``: the
    region's default phantom when None.
    """
    best = None
    for attempt in range(attempts):
        ph = build_phantom(region, rng_for(seed, "beads", attempt), cage_kind, phantom_name)
        segs = np.array([b.segment for b in ph.beads])
        worst = None
        for views, pose in scenarios:
            placed = ph.moved(*pose) if pose is not None else ph
            xyz = np.array([b.xyz_mm for b in placed.beads])
            allxyz = np.vstack([xyz, cage_xyz])
            both = np.ones(len(xyz), bool)
            for v in views.values():
                both &= visibility(v, allxyz, placed.metal)[1][: len(xyz)]
            w = min(int(both[segs == s].sum()) for s in np.unique(segs))
            worst = w if worst is None else min(worst, w)
        if best is None or worst > best[0]:
            best = (worst, ph)
        if worst >= 4:
            break
    return best[1]


def simulate_exam(
    region: str,
    seed: int,
    *,
    cage: str | None = None,
    photometric: str = "MONOCHROME2",
    collimation: float | None = None,
    motion_mm=None,
    full_resolution: bool = True,
    noiseless: bool = False,
    blur: bool = True,
    technique: dict | None = None,
    bits_stored: int = 14,
    transfer: str = "log",
    dead_pixels: int = 0,
    exposure_id: int = 1,
    acquisition_datetime: datetime | None = None,
    phantom: Phantom | None = None,
    patient_pose: tuple[np.ndarray, np.ndarray] | None = None,
    reposition: bool = True,
    render_options: RenderOptions | None = None,
    views: tuple[str, ...] = ("A", "B"),
    exposure_seed: int | None = None,
    patient_seed: int | None = None,
    migration=None,
    cage_information: bool = False,
    phantom_name: str | None = None,
) -> SimulatedExam:
    """Render a stereo exam of ``region`` with ground truth.

    Parameters
    ----------
    region : {'spine', 'upper', 'lower'}
        The procedure (0348T, 0349T, 0350T).
    seed : int
        Seeds everything: geometry on the day, bead layout, positioning,
        technique, texture and noise.
    cage : {'uniplanar', 'biplanar'}, optional
        Default by region: spine and upper biplanar, lower uniplanar.
    photometric : {'MONOCHROME2', 'MONOCHROME1'}
    collimation : float, optional
        Irradiated fraction of each detector side (0.3..1); None: open field.
    motion_mm : array_like (3,), optional
        Patient translation between exposure A and exposure B (a failed sync).
    full_resolution : bool
        False reads the detectors out binned 2 x 2 (a station with half the
        rows and columns at twice the spacing), for quick tests.
    noiseless, blur : bool
        Switch off quantum and read noise; switch off focal-spot and detector blur.
    technique : dict, optional
        Actual technique per tube ``{"A": {"kv", "ma", "ms"[, "mas"]}, "B": ...}``
        (e.g. from an exposure report). Default: the phantom's preset
        (``simulator.phantoms.PHANTOM_TECHNIQUE``) with the generator's small
        deviations.
    bits_stored : int
        12..16.
    transfer : {'log', 'linear'}
        Stored values logarithmic or linear in dose.
    dead_pixels : int
        Number of dead (stuck at 0 or full scale) pixels per frame.
    phantom : Phantom, optional
        A given patient (series); default: the region's phantom laid out by ``seed``.
    patient_pose : (R, t), optional
        Rigid positioning ``x -> R x + t`` applied to ``phantom`` (the cage
        stays); default: a small random repositioning (up to 2 degrees about the
        beads' centroid and 4 mm) when ``reposition`` is true.
    render_options : RenderOptions, optional
        Full control of the physics (overrides the switches above where set).
    views : tuple of str
        Views to render (the virtual detectors render only the tubes that fired).
    exposure_seed : int, optional
        Seeds the texture and noise apart from ``seed``, so that repeated
        exposures of the same set-up (same geometry on the day, same patient)
        differ only in their noise.
    patient_seed : int, optional
        The patient (bead layout) apart from ``seed`` (the day: geometry,
        positioning, noise): exams of one patient on different days share it.
        The layout is then chosen against the nominal geometry only.
    cage_information : bool
        Also compute the Cramér–Rao bound and SNR of every cage marker (the
        beads always get them, unless ``render_options.marker_information``
        is off).
    phantom_name : {'cervical', 'lumbar', 'elbow', 'shoulder', 'knee'}, optional
        The patient's anatomy within ``region``; default: ``cervical`` for
        spine, ``elbow`` for upper, ``knee`` for lower (thin anatomy, measurable
        under the dose cap). Ignored when ``phantom`` is given (its own name counts).
    migration : optional
        Rigid motion of the moving segment (implant) in the patient as placed
        in the cage before positioning: ``(R, t)`` or ``[tx, ty, tz, rx, ry, rz]``
        (mm; degrees about x, y, z, about the segment's bead centroid).
    """
    if region not in REGIONS:
        raise InputError(f"region: expected one of {', '.join(REGIONS)}, got {region!r}")
    cage_kind = cage or DEFAULT_CAGE[region]
    if cage_kind not in CAGES:
        raise InputError(f"cage: expected 'uniplanar' or 'biplanar', got {cage_kind!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"photometric: expected MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 12 <= int(bits_stored) <= 16:
        raise InputError(f"bits_stored: expected 12..16, got {bits_stored}")
    if collimation is not None and not 0.3 <= float(collimation) <= 1.0:
        raise InputError(f"collimation: expected a fraction 0.3..1, got {collimation}")
    if phantom is not None and phantom.name:
        phantom_name = phantom.name
    try:
        phantom_name = phantom_name_for(region, phantom_name)
    except ValueError as err:
        raise InputError(f"phantom: {err}") from None
    try:
        motion = np.zeros(3) if motion_mm is None else np.asarray(motion_mm, float).reshape(3)
    except (TypeError, ValueError):
        raise InputError(f"motion_mm: expected 3 numbers, got {motion_mm!r}") from None
    if not np.all(np.isfinite(motion)):
        raise InputError(f"motion_mm: expected finite numbers, got {motion.tolist()}")

    station_dict = load_data("station", cage_kind)
    if not full_resolution:
        station_dict = binned_station(station_dict, 2)
    cage_dict = load_data("cage", cage_kind)
    station = Station.from_dict(station_dict)
    cage_obj = Cage.from_dict(cage_dict)
    cage_xyz = cage_obj.xyz_mm
    day = geometry_on_the_day(station, rng_for(seed, "geometry"))

    if phantom is None and patient_seed is not None:
        # One patient across days: the layout depends on the patient only.
        phantom = lay_out_beads(
            region,
            cage_kind,
            patient_seed,
            cage_xyz,
            [(station.views, None)],
            phantom_name=phantom_name,
        )
    if patient_pose is None and reposition:
        # The pose turns about the beads' centroid, which any layout of this
        # patient shares within millimetres: take it from the first draw.
        about = phantom or build_phantom(region, rng_for(seed, "beads", 0), cage_kind, phantom_name)
        patient_pose = random_pose(about, rng_for(seed, "pose"), 2.0, 4.0)
    if phantom is None:
        phantom = lay_out_beads(
            region, cage_kind, seed, cage_xyz, [(day, patient_pose)], phantom_name=phantom_name
        )
    if migration is not None:
        phantom = _migrated(phantom, migration)
    if patient_pose is not None:
        phantom = phantom.moved(*patient_pose)

    trng = rng_for(seed, "technique")
    preset = PHANTOM_TECHNIQUE[phantom_name]
    tech = {}
    for name in ("A", "B"):
        if technique is not None and name in technique:
            t = dict(technique[name])
            t.setdefault("mas", round(float(t["ma"]) * float(t["ms"]) / 1000, 3))
            tech[name] = {k: float(t[k]) for k in ("kv", "ma", "ms", "mas")}
        else:
            tech[name] = actual_technique(preset.get(name, preset), trng)

    opts = render_options or RenderOptions()
    opts = replace(
        opts,
        noiseless=noiseless or opts.noiseless,
        blur=blur and opts.blur,
        photometric=photometric,
        bits_stored=int(bits_stored),
        transfer=transfer,
        collimation=collimation if collimation is not None else opts.collimation,
        dead_pixels=dead_pixels or opts.dead_pixels,
    )
    when = acquisition_datetime or BASE_TIME + timedelta(seconds=int(seed) % 86400)
    cage_markers = Markers(cage_xyz, np.array([m.diameter_mm / 2 for m in cage_obj.markers]))
    fixed = cage_solids(cage_kind)

    isocentre = nominal_isocentre(station)
    frames: dict[str, Frame] = {}
    info: dict[str, dict] = {}
    truth_views, vis, img = {}, {}, {}
    bead_xyz = {"A": np.array([b.xyz_mm for b in phantom.beads])}
    bead_xyz["B"] = bead_xyz["A"] + motion
    for name in ("A", "B"):
        ph = phantom if name == "A" else phantom.moved(np.eye(3), motion)
        view, nominal = day[name], station.views[name]
        solids = list(fixed) + list(ph.solids)
        markers = Markers(
            np.vstack([bead_xyz[name], cage_xyz]),
            np.concatenate([[b.diameter_mm / 2 for b in ph.beads], cage_markers.radius_mm]),
            # Bounds for the beads (what the RSA result depends on); for the cage
            # markers too only on request (they cost three times the beads).
            informative=None
            if cage_information
            else np.arange(len(ph.beads) + len(cage_xyz)) < len(ph.beads),
        )
        res = None
        if name in views:
            extra = () if exposure_seed is None else (int(exposure_seed) & 0xFFFFFFFF,)
            res = render_view(
                view, nominal, solids, markers, tech[name], opts, rng_for(seed, name, *extra)
            )
        field_px = collimated_box(view, nominal, opts.collimation)
        rc, ok = visibility(view, markers.xyz_mm, ph.metal, field_px)
        img[name], vis[name] = rc, ok
        truth_views[name] = {
            "focus_mm": view.focus_mm.tolist(),
            "detector": view.detector.to_dict(),
        }
        if res is None:
            continue
        info[name] = {
            "crb": res.marker_crb_px,
            "snr": res.marker_snr,
            "open_fluence": res.open_fluence,
            "spr": res.spr_behind_patient,
            "collimation_px": res.collimation_px,
            "layers": res.layers,
        }
        nom_det = nominal.detector
        sid = float(np.linalg.norm(nom_det.center_mm - nominal.focus_mm))
        sod = float(np.linalg.norm(isocentre - nominal.focus_mm))
        frames[name] = Frame(
            pixels=res.pixels,
            meta=FrameMeta(
                view=name,
                photometric=photometric,
                bits_stored=int(bits_stored),
                rescale_slope=1.0,
                rescale_intercept=0.0,
                imager_pixel_spacing_mm=tuple(float(x) for x in nom_det.pixel_spacing_mm),
                rows=nom_det.rows,
                columns=nom_det.columns,
                geometry=view,
                technique=dict(tech[name]),
                exposure_id=int(exposure_id),
                acquisition_datetime=when,
                detector_id=f"SIM-{cage_kind[:3].upper()}-{name}",
                pixel_intensity_relationship="LOG" if transfer == "log" else "LIN",
                pixel_intensity_sign=-1 if photometric == "MONOCHROME2" else 1,
                nominal_sid_mm=sid,
                nominal_sod_mm=sod,
                collimation_px=res.collimation_px,
                patient_orientation=(
                    orientation_letters(ph, nom_det.row_cosines),
                    orientation_letters(ph, nom_det.column_cosines),
                ),
                view_position=_view_position(ph, nominal),
                extra={"open_fluence_quanta_per_px": res.open_fluence},
            ),
        )

    nb = len(phantom.beads)
    in_image = {}
    for name in ("A", "B"):
        det = day[name].detector
        rc = img[name]
        in_image[name] = (
            np.isfinite(rc).all(axis=1)
            & (rc[:, 0] >= -0.5)
            & (rc[:, 0] <= det.rows - 0.5)
            & (rc[:, 1] >= -0.5)
            & (rc[:, 1] <= det.columns - 0.5)
        )

    shadow_px = {}
    for name in ("A", "B"):
        v = day[name]
        xyz = np.vstack([bead_xyz[name], cage_xyz])
        hit = v.detector.pixel_to_world(np.nan_to_num(img[name]))
        mag = np.linalg.norm(hit - v.focus_mm, axis=1) / np.linalg.norm(xyz - v.focus_mm, axis=1)
        shadow_px[name] = mag / float(v.detector.pixel_spacing_mm.mean())

    def stat(key, name, i):
        """Per-marker figure of a rendered view (None if not rendered or cut off)."""
        if name not in info or info[name][key] is None:
            return None
        v = np.asarray(info[name][key][i], float)
        if not np.all(np.isfinite(v)):
            return None
        return np.round(v, 5).tolist()

    def px(name, i):
        return [float(img[name][i, 0]), float(img[name][i, 1])] if in_image[name][i] else None

    beads = []
    for i, b in enumerate(phantom.beads):
        entry = {
            "id": b.id,
            "segment": b.segment,
            "xyz_mm": bead_xyz["A"][i].tolist(),
            "diameter_mm": b.diameter_mm,
            "image_px": {n: px(n, i) for n in ("A", "B")},
            "visible": {n: bool(vis[n][i]) for n in ("A", "B")},
            "shadow_diameter_px": {
                n: round(float(b.diameter_mm * shadow_px[n][i]), 3) for n in ("A", "B")
            },
            "crb_px": {n: stat("crb", n, i) for n in ("A", "B")},
            "snr": {n: stat("snr", n, i) for n in ("A", "B")},
        }
        if np.any(motion):
            entry["xyz_mm_B"] = bead_xyz["B"][i].tolist()
        beads.append(entry)
    cage_entries = [
        {
            "id": m.id,
            "image_px": {n: px(n, nb + j) for n in ("A", "B")},
            "visible": {n: bool(vis[n][nb + j]) for n in ("A", "B")},
            "crb_px": {n: stat("crb", n, nb + j) for n in ("A", "B")},
            "snr": {n: stat("snr", n, nb + j) for n in ("A", "B")},
        }
        for j, m in enumerate(cage_obj.markers)
    ]
    truth = {
        "region": region,
        "seed": int(seed),
        "cage": cage_dict["name"],
        "station": station_dict["name"],
        "cage_kind": cage_kind,
        "views": truth_views,
        "beads": beads,
        "cage_markers": cage_entries,
        "segments": {"reference": phantom.reference_segment, "moving": phantom.moving_segment},
        "technique": tech,
        "motion_mm": motion.tolist(),
        "fluence_quanta_per_px": {n: info[n]["open_fluence"] for n in info},
        "scatter_to_primary": {n: info[n]["spr"] for n in info},
        "photometric": photometric,
        "bits_stored": int(bits_stored),
        "transfer": transfer,
        "collimation": collimation,
        "noiseless": bool(noiseless),
        "blur": bool(blur),
        "exposure_id": int(exposure_id),
        "acquisition_datetime": when.isoformat(),
        "phantom": phantom.description,
        "phantom_name": phantom_name,
        "patient_seed": int(seed if patient_seed is None else patient_seed),
    }
    if patient_pose is not None:
        truth["patient_pose"] = {
            "rotation": np.asarray(patient_pose[0]).tolist(),
            "translation_mm": np.asarray(patient_pose[1]).tolist(),
        }
    return SimulatedExam(region, int(seed), station_dict, cage_dict, frames, truth, phantom, info)
