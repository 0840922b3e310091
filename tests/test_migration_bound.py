"""The migration's error budget (benchmarks/bench_migration.py ``bound``) checked independently.

- Propagation through the contract's fits (``_ls_covariance``, first order)
  against a Monte Carlo of :func:`reconstruction.migration.migrate` itself on
  shuffled, noisy marker sets (labelling included).
- With equal isotropic marker covariances the least-squares (Kabsch) fit is
  the maximum-likelihood estimate, so its covariance equals the Cramér-Rao
  bound (``_crb_covariance``, computed from a different model); with unequal
  covariances the bound is smaller.
- The 3D bound of a bead from its two 2D bounds against the two-ray geometry.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from benchmarks.bench_migration import _crb_covariance, _ls_covariance, _motion6
from reconstruction.migration import migrate


def _case(seed=3):
    rng = np.random.default_rng(seed)
    bone = rng.normal(0, 12, (6, 3)) + np.array([0, 0, 30])
    implant = rng.normal(0, 8, (5, 3)) + np.array([10, 5, 70])
    pose = Rotation.from_euler("xyz", [8, -5, 20], degrees=True)
    shift = np.array([12.0, -7.0, 4.0])
    mig = Rotation.from_euler("xyz", [0.5, -0.3, 0.4], degrees=True)
    c = implant.mean(axis=0)
    implant_fu = mig.apply(implant - c) + c + [0.3, -0.2, 0.5]
    sets = [bone, pose.apply(bone) + shift, implant, pose.apply(implant_fu) + shift]
    return rng, sets


def _segments(sets):
    return {
        "reference_segment": "bone",
        "moving_segment": "implant",
        "segments": {"bone": sets[0].tolist(), "implant": sets[2].tolist()},
    }


def _result(rng, pts):
    order = rng.permutation(len(pts))
    return {"markers": [{"id": f"M{k}", "xyz_mm": pts[i].tolist()} for k, i in enumerate(order)]}


def test_first_order_budget_matches_monte_carlo_of_migrate():
    rng, sets = _case()
    sd = 0.015
    covs = [[np.diag([sd, sd, 2 * sd]) ** 2] * len(s) for s in sets]
    listed = sets[2]
    cov, _ = _ls_covariance(listed, sets, covs)
    segs = _segments(sets)
    exact = _motion6(listed, *sets)
    draws = []
    for _ in range(400):
        noisy = [s + rng.normal(size=s.shape) * [sd, sd, 2 * sd] for s in sets]
        d = migrate(segs, _result(rng, np.vstack(noisy[::2])), _result(rng, np.vstack(noisy[1::2])))
        m = d.to_dict()["motion"]
        draws.append(np.r_[m["translation_mm"], m["rotation_deg"]] - exact)
    mc_sd = np.array(draws).std(axis=0)
    # 400 draws: SD known to about 3.5%; the first-order budget must agree within 15%.
    np.testing.assert_allclose(mc_sd, np.sqrt(np.diag(cov)), rtol=0.15)


def test_least_squares_attains_the_bound_for_equal_isotropic_noise():
    _, sets = _case(5)
    covs = [[np.eye(3) * 0.02**2] * len(s) for s in sets]
    ls, _ = _ls_covariance(sets[2], sets, covs)
    crb = _crb_covariance(sets[2], *sets, covs)
    np.testing.assert_allclose(np.sqrt(np.diag(ls)), np.sqrt(np.diag(crb)), rtol=1e-3)


def test_bound_is_below_least_squares_for_unequal_noise():
    rng, sets = _case(7)
    covs = [[np.diag(rng.uniform(0.005, 0.05, 3)) ** 2 for _ in s] for s in sets]
    ls, _ = _ls_covariance(sets[2], sets, covs)
    crb = _crb_covariance(sets[2], *sets, covs)
    assert np.linalg.eigvalsh(ls - crb).min() > -1e-12
    assert np.trace(crb) < 0.95 * np.trace(ls)


def test_bead_bound_from_two_views():
    pytest.importorskip("simulator.series")
    from benchmarks.bench_migration import _views, bead_covariances
    from simulator.exam import simulate_exam

    exam = simulate_exam("lower", 1, full_resolution=False)
    covs = bead_covariances(exam)
    assert covs, "no bead bounded in both views"
    views = _views(exam)
    for b in exam.truth["beads"]:
        if b["id"] not in covs:
            continue
        x, cov = covs[b["id"]]
        # Independently: least-squares triangulation of the two rays' pixel
        # noise by Monte Carlo with the 2D bounds gives the same covariance.
        rng = np.random.default_rng(0)
        px = {n: views[n].project(x) for n in ("A", "B")}
        est = []
        for _ in range(300):
            seen = {n: px[n] + rng.normal(size=2) * b["crb_px"][n] for n in ("A", "B")}
            # Triangulation minimising the weighted reprojection error (Gauss-Newton).
            p = x.copy()
            for _ in range(3):
                jac, res, w = [], [], []
                for n in ("A", "B"):
                    g = np.empty((2, 3))
                    for j in range(3):
                        dx = np.zeros(3)
                        dx[j] = 1e-4
                        g[:, j] = (views[n].project(p + dx) - views[n].project(p - dx)) / 2e-4
                    jac.append(g)
                    res.append(seen[n] - views[n].project(p))
                    w.append(1 / np.square(b["crb_px"][n]))
                jac, res, w = np.vstack(jac), np.concatenate(res), np.concatenate(w)
                p = p + np.linalg.solve(jac.T @ (w[:, None] * jac), jac.T @ (w * res))
            est.append(p)
        mc = np.cov(np.array(est).T)
        np.testing.assert_allclose(np.sqrt(np.diag(mc)), np.sqrt(np.diag(cov)), rtol=0.2)
        break
