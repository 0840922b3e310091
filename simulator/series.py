"""A series of RSA examinations of one patient, with known implant migration.

Reference examination, double examination (same day, patient repositioned)
and follow-ups in which the moving segment (the implant, or L4 for the spine)
has migrated rigidly relative to the reference segment (the bone). Between
examinations the whole patient is repositioned rigidly (the cage does not
move), and each examination has its own geometry on the day.

The migration of follow-up k is given in the reference examination's frame,
the frame of the contract's migration result: every marker ``p`` of the moving
segment goes to ``R p + t``. The truth of each follow-up records ``R``, ``t``
and the values ``rsa-station migrate`` must report for it, computed from the
segment file's marker positions exactly as CONTRACT.md defines them
(translation of the centroid ``R c + t - c``, rotations about x then y then z,
MTPM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.geometry import Cage, Station
from simulator.exam import (
    BASE_TIME,
    SimulatedExam,
    binned_station,
    geometry_on_the_day,
    lay_out_beads,
    load_data,
    random_pose,
    rng_for,
    simulate_exam,
)
from simulator.phantoms import DEFAULT_CAGE, REGIONS, build_phantom, phantom_name_for

FOLLOWUP_DAYS = (42, 91, 182, 365, 730, 1095, 1825)


def as_rigid(m) -> tuple[np.ndarray, np.ndarray]:
    """A migration as ``(R, t)``: from ``(R, t)`` or ``[tx, ty, tz, rx, ry, rz]``.

    The 6-vector form gives the centroid translation (mm) and rotations
    (degrees, about x then y then z) of the moving segment; it is turned into
    ``(R, t)`` about that segment's centroid by :func:`simulate_series`.
    """
    if isinstance(m, tuple) and len(m) == 2:
        return np.asarray(m[0], float).reshape(3, 3), np.asarray(m[1], float).reshape(3)
    v = np.asarray(m, float).reshape(6)
    return Rotation.from_euler("xyz", v[3:], degrees=True).as_matrix(), v[:3]


def expected_motion(rot: np.ndarray, t: np.ndarray, moving_ref: np.ndarray) -> dict:
    """What the contract's migration result must say for ``(R, t)``."""
    c = moving_ref.mean(axis=0)
    disp = moving_ref @ rot.T + t - moving_ref
    return {
        "translation_mm": (rot @ c + t - c).tolist(),
        "rotation_deg": Rotation.from_matrix(rot).as_euler("xyz", degrees=True).tolist(),
        "mtpm_mm": float(np.linalg.norm(disp, axis=1).max()),
    }


@dataclass
class SimulatedSeries:
    """Examinations of one patient in order, and the reference's segment file.

    Unpacks as ``exams, segments = simulate_series(...)``.
    """

    labels: list[str]
    exams_list: list[SimulatedExam]
    segments: dict
    migrations: dict[str, dict] = field(default_factory=dict)

    @property
    def exams(self) -> dict[str, SimulatedExam]:
        return dict(zip(self.labels, self.exams_list, strict=True))

    def __iter__(self):
        return iter((self.exams_list, self.segments))

    def summary(self) -> dict:
        return {
            "examinations": [
                {
                    "label": lab,
                    "seed": ex.seed,
                    "acquisition_datetime": ex.truth["acquisition_datetime"],
                    "migration": self.migrations.get(lab),
                }
                for lab, ex in zip(self.labels, self.exams_list, strict=True)
            ],
            "reference_segment": self.segments["reference_segment"],
            "moving_segment": self.segments["moving_segment"],
        }


def simulate_series(
    region: str,
    seed: int,
    *,
    migrations: list | None = None,
    followups: int | None = None,
    migration=None,
    cage: str | None = None,
    reposition_deg: float = 3.0,
    reposition_mm: float = 8.0,
    segment_file_error_mm: float = 0.2,
    **exam_kwargs,
) -> SimulatedSeries:
    """Reference, double examination and follow-ups of one simulated patient.

    Parameters
    ----------
    region, seed
        As for :func:`simulator.exam.simulate_exam`; ``seed`` is the patient.
    migrations : list, optional
        One migration per follow-up, each ``(R, t)`` (``p -> R p + t`` in the
        reference frame) or ``[tx, ty, tz, rx, ry, rz]`` (centroid translation
        in mm, rotations in degrees about x, y, z, about the moving segment's
        centroid).
    followups, migration
        Alternative to ``migrations``: ``followups`` follow-ups whose
        migrations grow linearly to ``migration`` (6-vector) at the last one.
    reposition_deg, reposition_mm
        Largest patient repositioning between examinations.
    segment_file_error_mm
        Largest error of the positions in the segment file (CONTRACT: within 0.5 mm).
    **exam_kwargs
        Passed to every ``simulate_exam`` (photometric, collimation, motion_mm,
        phantom_name...).
    """
    if migrations is None:
        n = int(followups or 0)
        full = np.asarray(migration if migration is not None else [0.2, 0.1, -0.3, 0.3, 0, 0.2])
        migrations = [full * (k + 1) / n for k in range(n)]
    if region not in REGIONS:
        raise InputError(f"region: expected one of {', '.join(REGIONS)}, got {region!r}")
    try:
        phantom_name_for(region, exam_kwargs.get("phantom_name"))
    except ValueError as err:
        raise InputError(f"phantom: {err}") from None
    cage_kind = cage or DEFAULT_CAGE[region]
    station_dict = load_data("station", cage_kind)
    if not exam_kwargs.get("full_resolution", True):
        station_dict = binned_station(station_dict, 2)
    station = Station.from_dict(station_dict)
    cage_xyz = Cage.from_dict(load_data("cage", cage_kind)).xyz_mm
    labels = ["reference", "double"] + [f"followup-{k + 1}" for k in range(len(migrations))]
    seeds = [seed * 1000 + i for i in range(len(labels))]
    prng = rng_for(seed, "pose", 1000)
    name = exam_kwargs.get("phantom_name")  # the region's default when None
    first = build_phantom(region, rng_for(seed, "beads", 0), cage_kind, name)
    poses = [random_pose(first, prng, reposition_deg, reposition_mm) for _ in labels]
    # One patient: the layout must serve every examination of the series.
    scenarios = [
        (geometry_on_the_day(station, rng_for(s, "geometry")), pose)
        for s, pose in zip(seeds, poses, strict=True)
    ]
    base = lay_out_beads(region, cage_kind, seed, cage_xyz, scenarios, phantom_name=name)
    moving, reference = base.moving_segment, base.reference_segment
    rot0, t0 = poses[0]
    moving_base = np.array([b.xyz_mm for b in base.beads if b.segment == moving])
    moving_ref = moving_base @ rot0.T + t0
    c_ref = moving_ref.mean(axis=0)

    exams, info = [], {}
    for i, label in enumerate(labels):
        ph = base
        mig = None
        if i >= 2:
            rm, tc = as_rigid(migrations[i - 2])
            if not (isinstance(migrations[i - 2], tuple)):
                tc = tc + c_ref - rm @ c_ref  # about the centroid
            # In the base frame: P0^-1 o M o P0.
            a = rot0.T @ rm @ rot0
            b = rot0.T @ (rm @ t0 + tc - t0)
            ph = base.segment_moved(moving, a, b)
            mig = {"R": rm, "t": tc}
        days = (
            0
            if i < 2
            else FOLLOWUP_DAYS[min(i - 2, len(FOLLOWUP_DAYS) - 1)]
            * (1 + (i - 2) // len(FOLLOWUP_DAYS))
        )
        when = BASE_TIME + timedelta(days=days, minutes=20 * (i == 1))
        ex = simulate_exam(
            region,
            seeds[i],
            cage=cage_kind,
            phantom=ph,
            patient_pose=poses[i],
            acquisition_datetime=when,
            exposure_id=i + 1,
            **exam_kwargs,
        )
        ex.truth["series"] = {"patient_seed": int(seed), "label": label, "index": i}
        ex.truth["patient_seed"] = int(seed)
        exams.append(ex)
        if mig is not None:
            info[label] = {"R": mig["R"], "t": mig["t"]}

    # Segment file: the reference examination's positions, each off by < 0.2 mm.
    erng = rng_for(seed, "beads", 9999)
    segs: dict[str, list] = {}
    for b in exams[0].truth["beads"]:
        err = erng.normal(size=3)
        err *= segment_file_error_mm * erng.uniform() / np.linalg.norm(err)
        segs.setdefault(b["segment"], []).append(
            [round(float(v), 3) for v in np.asarray(b["xyz_mm"]) + err]
        )
    segments = {"reference_segment": reference, "moving_segment": moving, "segments": segs}
    listed = np.asarray(segs[moving], float)
    migrations_out = {}
    for label, m in info.items():
        exp = expected_motion(m["R"], m["t"], listed)
        entry = {
            "segment": moving,
            "relative_to": reference,
            "R": m["R"].tolist(),
            "t_mm": m["t"].tolist(),
            **exp,
        }
        migrations_out[label] = entry
        exams[labels.index(label)].truth["migration"] = entry
    migrations_out["double"] = {
        "segment": moving,
        "relative_to": reference,
        "R": np.eye(3).tolist(),
        "t_mm": [0.0, 0.0, 0.0],
        **expected_motion(np.eye(3), np.zeros(3), listed),
    }
    exams[1].truth["migration"] = migrations_out["double"]
    return SimulatedSeries(labels, exams, segments, migrations_out)
