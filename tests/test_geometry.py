"""Geometry conventions shared by every package (CONTRACT.md, "Units and frames")."""

import numpy as np
import pytest

from reconstruction.errors import InputError
from reconstruction.geometry import Cage, Detector, Station, ViewGeometry


def _detector(tilt_deg: float = 0.0) -> Detector:
    t = np.radians(tilt_deg)
    rc = np.array([1.0, 0.0, 0.0])
    cc = np.array([0.0, np.cos(t), np.sin(t)])
    return Detector(np.array([-150.0, -120.0, -10.0]), rc, cc, np.array([0.15, 0.14]), 1600, 2000)


def test_pixel_centre_follows_dicom_image_plane():
    det = _detector()
    p = det.pixel_to_world(np.array([10.0, 20.0]))
    assert np.allclose(p, [-150 + 20 * 0.14, -120 + 10 * 0.15, -10])
    assert np.allclose(det.world_to_pixel(p), [10, 20])


@pytest.mark.parametrize("tilt", [0.0, 7.0, -25.0])
def test_projection_matrix_agrees_with_ray_intersection(tilt):
    view = ViewGeometry(np.array([-300.0, 40.0, 1200.0]), _detector(tilt))
    rng = np.random.default_rng(1)
    pts = rng.uniform([-100, -100, 0], [100, 100, 200], size=(50, 3))
    direct = view.project(pts)
    h = view.projection_matrix() @ np.c_[pts, np.ones(len(pts))].T
    via_p = (h[:2] / h[2]).T
    assert np.allclose(direct, via_p, atol=1e-9)
    # a projected point lies on the ray from the focus through it
    origin, d = view.ray_through(direct)
    v = pts - origin
    assert np.allclose(np.cross(v, d), 0, atol=1e-8)


def test_station_and_cage_round_trip_and_reject_bad_input():
    det = _detector()
    station = Station.from_dict(
        {
            "name": "room",
            "views": {
                "A": {"focus_mm": [0, 0, 1000], "detector": det.to_dict()},
                "B": {"focus_mm": [100, 0, 1000], "detector": det.to_dict()},
            },
            "tolerance": {"focus_mm": 60, "detector_mm": 3, "detector_deg": 1},
        }
    )
    assert Station.from_dict(station.to_dict()).to_dict() == station.to_dict()
    with pytest.raises(InputError, match="views"):
        Station.from_dict({"views": {"A": {}}})
    cage = Cage.from_dict(
        {
            "name": "c",
            "markers": [{"id": "F1", "xyz_mm": [0, 0, 0], "role": "fiducial", "diameter_mm": 1.0}],
        }
    )
    assert cage.xyz_mm.shape == (1, 3)
    with pytest.raises(InputError, match="duplicate"):
        Cage.from_dict(
            {"markers": [{"id": "F1", "xyz_mm": [0, 0, 0]}, {"id": "F1", "xyz_mm": [1, 0, 0]}]}
        )
