"""Rigid fit, mean error, condition number and helical axis against independent computations."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruction.errors import InputError
from reconstruction.rigid import (
    RigidMotion,
    condition_number,
    fit_rigid,
    fit_rigid_batch,
    helical_axis,
    mean_error,
    residuals,
)


def _random_motion(rng, max_deg=180.0, max_mm=200.0):
    rot = Rotation.from_rotvec(
        rng.normal(size=3) / np.sqrt(3) * np.radians(rng.uniform(0, max_deg))
    )
    return RigidMotion(rot.as_matrix(), rng.uniform(-max_mm, max_mm, 3))


@pytest.mark.parametrize("seed", range(20))
def test_fit_recovers_known_motion_exactly(seed):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, 15, (int(rng.integers(3, 12)), 3)) + rng.uniform(-200, 200, 3)
    true = _random_motion(rng)
    q = true.apply(p)
    fit = fit_rigid(p, q)
    # The fit maps p onto q (align_vectors' argument order is easy to swap).
    np.testing.assert_allclose(fit.R, true.R, atol=1e-9)
    np.testing.assert_allclose(fit.t, true.t, atol=1e-9)
    assert np.linalg.det(fit.R) == pytest.approx(1.0, abs=1e-12)


def test_fit_never_returns_a_reflection():
    rng = np.random.default_rng(3)
    p = rng.normal(0, 10, (6, 3))
    q = p * np.array([1.0, 1.0, -1.0])  # a mirror image: no proper rotation fits it
    fit = fit_rigid(p, q)
    assert np.linalg.det(fit.R) == pytest.approx(1.0)
    assert mean_error(fit, p, q) > 1.0


def test_batch_fit_equals_single_fits():
    rng = np.random.default_rng(4)
    src = rng.normal(0, 10, (50, 4, 3))
    dst = np.empty_like(src)
    for i in range(50):
        dst[i] = _random_motion(rng).apply(src[i]) + rng.normal(0, 0.05, (4, 3))
    R, t = fit_rigid_batch(src, dst)
    for i in range(50):
        f = fit_rigid(src[i], dst[i])
        np.testing.assert_allclose(R[i], f.R, atol=1e-9)
        np.testing.assert_allclose(t[i], f.t, atol=1e-9)


def test_fit_is_least_squares_optimal():
    """Perturbing the fitted motion never lowers the sum of squared residuals."""
    rng = np.random.default_rng(5)
    p = rng.normal(0, 10, (7, 3))
    q = _random_motion(rng).apply(p) + rng.normal(0, 0.2, p.shape)
    fit = fit_rigid(p, q)
    best = float((residuals(fit, p, q) ** 2).sum())
    for _ in range(200):
        dr = Rotation.from_rotvec(rng.normal(0, 1e-3, 3)).as_matrix()
        other = RigidMotion(dr @ fit.R, fit.t + rng.normal(0, 1e-3, 3))
        assert float((residuals(other, p, q) ** 2).sum()) >= best - 1e-12


def test_mean_error_is_the_mean_residual_distance():
    rng = np.random.default_rng(6)
    p = rng.normal(0, 10, (8, 3))
    q = _random_motion(rng).apply(p) + rng.normal(0, 0.1, p.shape)
    fit = fit_rigid(p, q)
    explicit = 0.0
    for pi, qi in zip(p, q, strict=True):
        d = fit.R @ pi + fit.t - qi
        explicit += np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    assert mean_error(fit, p, q) == pytest.approx(explicit / len(p), rel=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_condition_number_from_scatter_matrix_eigenvalues(seed):
    rng = np.random.default_rng(seed)
    p = rng.normal(0, rng.uniform(3, 30), (int(rng.integers(3, 10)), 3)) * rng.uniform(0.2, 1, 3)
    p += rng.uniform(-100, 100, 3)
    c = p - p.mean(axis=0)
    # Eigenvalues of the scatter matrix are the squared singular values.
    lam = np.sort(np.linalg.eigvalsh(c.T @ c))[::-1]
    assert condition_number(p) == pytest.approx(1000.0 / np.sqrt(lam[1] + lam[2]), rel=1e-9)


def test_condition_number_worked_example():
    # Four markers at the corners of a 20 mm x 10 mm rectangle plus a 5 mm apex:
    # centred scatter matrix is diagonal, so the singular values are known.
    p = np.array([[10, 5, 0], [-10, 5, 0], [10, -5, 0], [-10, -5, 0]], dtype=float)
    # σ² per axis: 4*100, 4*25, 0 -> CN = 1000 / sqrt(100 + 0) = 100.
    assert condition_number(p) == pytest.approx(100.0)
    q = np.vstack([p, [0, 0, 10], [0, 0, -10]])
    # σ² = 400, 100, 200 -> two smallest 100 + 200.
    assert condition_number(q) == pytest.approx(1000.0 / np.sqrt(300.0))


def test_condition_number_is_infinite_for_collinear_or_too_few_markers():
    line = np.outer(np.arange(5.0), [1.0, 2.0, -0.5]) + np.array([3.0, -7.0, 100.0])
    assert condition_number(line) == np.inf
    assert condition_number(line[:2]) == np.inf
    assert condition_number(line[:1]) == np.inf
    assert condition_number(np.zeros((0, 3))) == np.inf


def test_fit_rejects_mismatched_sets():
    with pytest.raises(InputError):
        fit_rigid(np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(InputError):
        fit_rigid(np.zeros((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("seed", range(10))
def test_helical_axis_reproduces_the_motion(seed):
    rng = np.random.default_rng(seed)
    m = _random_motion(rng, max_deg=170)
    near = rng.normal(0, 50, 3)
    ax = helical_axis(m, near)
    n, p, s = ax.direction, ax.point_mm, ax.translation_mm
    # A screw: rotation about the line through p along n plus a slide s along n.
    phi = np.radians(ax.angle_deg)
    screw = Rotation.from_rotvec(phi * n).as_matrix()
    for x in rng.normal(0, 30, (5, 3)):
        np.testing.assert_allclose(m.apply(x), screw @ (x - p) + p + s * n, atol=1e-9)
    # p is the axis point nearest to ``near``.
    assert abs(n @ (p - near)) < 1e-9
    np.testing.assert_allclose(Rotation.from_rotvec(phi * n).as_matrix(), m.R, atol=1e-12)


def test_helical_axis_of_pure_translation():
    ax = helical_axis(RigidMotion(np.eye(3), np.array([0.0, 3.0, 4.0])))
    assert ax.angle_deg == 0 and ax.translation_mm == pytest.approx(5.0) and ax.point_mm is None


def test_motion_algebra():
    rng = np.random.default_rng(9)
    a, b = _random_motion(rng), _random_motion(rng)
    x = rng.normal(size=(4, 3))
    np.testing.assert_allclose(a.compose(b).apply(x), a.apply(b.apply(x)), atol=1e-9)
    np.testing.assert_allclose(a.inverse().apply(a.apply(x)), x, atol=1e-9)
    np.testing.assert_allclose(a.matrix()[:3, :3], a.R)


def test_condition_number_is_the_rotation_error_amplification():
    """SD of the fitted rotation about the worst axis = noise SD x CN / 1000 (radians)."""
    rng = np.random.default_rng(12)
    p = rng.normal(0, 1, (6, 3)) * np.array([20.0, 8.0, 5.0])
    s = 0.01  # mm
    n = 4000
    src = np.broadcast_to(p, (n, 6, 3))
    R, _ = fit_rigid_batch(src, src + rng.normal(0, s, (n, 6, 3)))
    c = p - p.mean(axis=0)
    w, v = np.linalg.eigh(c.T @ c)
    worst_axis = v[:, np.argmax(w)]
    angle = Rotation.from_matrix(R).as_rotvec() @ worst_axis
    predicted = s * condition_number(p) / 1000.0
    assert np.std(angle) == pytest.approx(predicted, rel=0.05)
