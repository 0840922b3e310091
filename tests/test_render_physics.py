"""The renderer against the physics: analytic chords, bead centroids, noise statistics."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from reconstruction.geometry import Detector, ViewGeometry
from simulator.exam import simulate_exam
from simulator.materials import mu
from simulator.primitives import Box, Cylinder, Ellipsoid
from simulator.render import (
    Markers,
    RenderOptions,
    marker_windows,
    open_field_fluence,
    render_view,
    stored_to_quanta,
)


def _brute_chord(inside, f, d, t0=1100.0, t1=1320.0, n=220001):
    """Chord length by sampling the ray densely (independent of the formulas)."""
    t = np.linspace(t0, t1, n)
    pts = f + t[:, None] * d
    return inside(pts).sum() * (t[1] - t[0])


@pytest.mark.parametrize("kind", ["ellipsoid", "cylinder", "box"])
def test_chords_match_dense_ray_sampling(kind):
    rng = np.random.default_rng(11)
    rot = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    c = np.array([10.0, -5.0, 1200.0])
    if kind == "ellipsoid":
        s = Ellipsoid(center=c, axes=rot, semi=np.array([30.0, 12.0, 20.0]))

        def inside(p):
            q = (p - c) @ rot / s.semi
            return (q * q).sum(axis=1) <= 1
    elif kind == "cylinder":
        s = Cylinder(center=c, axes=rot, radii=np.array([15.0, 9.0]), half=25.0)

        def inside(p):
            q = (p - c) @ rot
            return ((q[:, 0] / 15) ** 2 + (q[:, 1] / 9) ** 2 <= 1) & (np.abs(q[:, 2]) <= 25)
    else:
        s = Box(center=c, axes=rot, half_size=np.array([20.0, 8.0, 14.0]))

        def inside(p):
            q = (p - c) @ rot
            return np.all(np.abs(q) <= s.half_size, axis=1)

    pts = c + rng.uniform(-35, 35, size=(2000, 3))
    assert np.array_equal(s.contains(pts), inside(pts))
    f = np.zeros(3)
    hits = 0
    for _ in range(12):
        target = c + rng.uniform(-30, 30, size=3)
        d = target / np.linalg.norm(target)
        got = float(s.chord(f, d[None].astype(np.float64))[0])
        want = _brute_chord(inside, f, d)
        assert got == pytest.approx(want, abs=0.02), (kind, got, want)
        hits += want > 0
    assert hits >= 4  # the test must exercise real intersections


def _isolated_bead_centroids(region: str, seed: int) -> np.ndarray:
    """Centroid minus projected centre of every visible bead, noiseless and blur-free."""
    opts = RenderOptions(scatter=False, texture=False, keep_layers=True)
    kw = dict(noiseless=True, blur=False, render_options=opts)
    ex = simulate_exam(region, seed, **kw)
    bg = simulate_exam(
        region, seed, **kw | {"render_options": replace(opts, include_markers=False)}
    )
    errs = []
    for v in "AB":
        with np.errstate(invalid="ignore", divide="ignore"):
            deficit = (
                1.0
                - ex.render_info[v]["layers"]["primary"].astype(float)
                / bg.render_info[v]["layers"]["primary"]
            )
        for b in ex.truth["beads"]:
            if not b["visible"][v]:
                continue
            r, c = b["image_px"][v]
            r0, c0 = round(r) - 6, round(c) - 6
            w = deficit[r0 : r0 + 13, c0 : c0 + 13]
            assert np.all(np.isfinite(w))
            rr, cc = np.mgrid[r0 : r0 + 13, c0 : c0 + 13]
            errs.append([(w * rr).sum() / w.sum() - r, (w * cc).sum() / w.sum() - c])
    return np.array(errs)


@pytest.mark.parametrize("region", ["lower", "spine", "upper"])
def test_bead_intensity_centroid_within_a_hundredth_of_a_pixel(region):
    errs = _isolated_bead_centroids(region, 7)
    assert len(errs) >= 10
    assert np.abs(errs).max() < 0.01, np.abs(errs).max()


def test_anti_aliasing_is_what_makes_centroids_exact():
    """Point-sampled rims (no footprint filter) miss the 0.01 px bound: the test can fail."""
    det = Detector(
        np.array([-150.0, -180.0, 1500.0]),
        np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([0.15, 0.15]),
        2400,
        2000,
    )
    view = ViewGeometry(np.zeros(3), det)
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.uniform(-20, 20, (40, 2)), np.full(40, 1200.0)]
    top, win, cen = marker_windows(view, Markers(xyz, np.full(40, 0.5)), 65, 4, 1.0, False)
    a = 1 - win.astype(float)
    rr, cc = np.mgrid[0 : a.shape[1], 0 : a.shape[2]]
    e = np.c_[
        (a * rr).sum((1, 2)) / a.sum((1, 2)) + top[:, 0] - cen[:, 0],
        (a * cc).sum((1, 2)) / a.sum((1, 2)) + top[:, 1] - cen[:, 1],
    ]
    assert np.abs(e).max() < 0.006
    # The absorbed area matches the exact perspective projection of the sphere:
    # the integral of 1 - exp(-mu chord) over the shadow, magnified.
    rho = np.linspace(0, 0.5, 200001)
    g = -np.expm1(-2 * mu("tantalum", 65) * np.sqrt(0.25 - rho**2))
    absorbed_mm2 = np.sum(g * 2 * np.pi * rho) * (rho[1] - rho[0])
    mag = 1500.0 / xyz[:, 2]
    area = (
        absorbed_mm2
        * (mag / 0.15) ** 2
        / np.cos(np.arctan(np.hypot(xyz[:, 0], xyz[:, 1]) / 1200)) ** 3
    )
    assert np.allclose(a.sum((1, 2)), area, rtol=0.002)


def _flat_view():
    det = Detector(
        np.array([-30.0, -30.0, 1500.0]),
        np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([0.15, 0.15]),
        400,
        400,
    )
    return ViewGeometry(np.zeros(3), det)


@pytest.mark.parametrize("blur", [False, True])
def test_pixel_noise_follows_poisson_statistics_of_the_fluence(blur):
    view = _flat_view()
    tech = {"kv": 70.0, "ma": 250.0, "ms": 40.0, "mas": 10.0}
    opts = RenderOptions(
        scatter=False, texture=False, blur=blur, read_noise_quanta=0.0, heel_k=0.0, bits_stored=16
    )
    empty = Markers(np.zeros((0, 3)), np.zeros(0))
    quiet = render_view(
        view, view, [], empty, tech, replace(opts, noiseless=True), np.random.default_rng(1)
    )
    noisy = render_view(view, view, [], empty, tech, opts, np.random.default_rng(2))
    lam = stored_to_quanta(quiet.pixels, opts)
    sig = stored_to_quanta(noisy.pixels, opts)
    n0 = open_field_fluence(70.0, 10.0, 1500.0 / np.cos(0.0))
    assert lam[200, 200] == pytest.approx(n0, rel=0.002)
    assert n0 <= 5000
    z = (sig - lam)[20:-20, 20:-20]
    expected_var = lam[20:-20, 20:-20].mean()
    if blur:
        k = cv2.getGaussianKernel(7, opts.detector_sigma_px)  # OpenCV's size for sigma 0.7
        expected_var *= float((k**2).sum()) ** 2  # noise correlated by the light spread
    assert abs(z.mean()) < 0.5
    assert z.var() == pytest.approx(expected_var, rel=0.03)


def test_low_fluence_noise_is_exact_poisson():
    view = _flat_view()
    tech = {"kv": 70.0, "ma": 10.0, "ms": 2.0, "mas": 0.02}  # ~8 quanta per pixel
    opts = RenderOptions(
        scatter=False, texture=False, blur=False, read_noise_quanta=0.0, heel_k=0.0, bits_stored=16
    )
    empty = Markers(np.zeros((0, 3)), np.zeros(0))
    img = render_view(view, view, [], empty, tech, opts, np.random.default_rng(3))
    q = np.rint(stored_to_quanta(img.pixels, opts))[50:-50, 50:-50]
    lam = open_field_fluence(70.0, 0.02, 1500.0)
    assert q.mean() == pytest.approx(lam, rel=0.03)
    assert q.var() == pytest.approx(lam, rel=0.05)
    # Poisson, not Gaussian: the probability of zero quanta is exp(-lambda).
    assert (q == 0).mean() == pytest.approx(np.exp(-q.mean()), rel=0.25)


@pytest.mark.parametrize(
    ("region", "phantom"),
    [
        ("lower", None),
        ("spine", None),
        ("upper", None),
        ("spine", "lumbar"),
        ("upper", "shoulder"),
    ],
)
def test_default_exposure_is_clinical(region, phantom):
    # Every phantom at its preset technique. Binned 2 x 2 for speed: four times the
    # quanta per (0.30 mm) pixel, same scatter.
    ex = simulate_exam(
        region,
        2,
        full_resolution=False,
        render_options=RenderOptions(marker_information=False),
        phantom_name=phantom,
    )
    for v in "AB":
        assert 1500 <= ex.truth["fluence_quanta_per_px"][v] / 4 <= 5000
        assert ex.truth["scatter_to_primary"][v] >= 0.5
    opts = RenderOptions()
    assert opts.detector_sigma_px >= 0.6 and opts.texture and opts.scatter and opts.blur


def test_bone_texture_is_present_in_bone_only():
    kw = dict(noiseless=True, full_resolution=False)
    opts = RenderOptions(keep_layers=True)
    a = simulate_exam("lower", 4, render_options=opts, **kw).frames["A"].pixels.astype(float)
    b = (
        simulate_exam("lower", 4, render_options=replace(opts, texture=False), **kw)
        .frames["A"]
        .pixels.astype(float)
    )
    diff = a - b
    assert np.abs(diff).max() > 20  # texture changes bone pixels noticeably
    assert (np.abs(diff) > 1).mean() < 0.5  # ...and only where there is cancellous bone


def test_metal_is_opaque_and_beads_are_bright():
    ex = simulate_exam("lower", 5, full_resolution=False, noiseless=True)
    px = ex.frames["A"].pixels.astype(float)  # MONOCHROME2: attenuation shows bright
    vis = [b for b in ex.truth["beads"] if b["visible"]["A"]]
    assert vis
    for b in vis:
        r, c = (round(x) for x in b["image_px"]["A"])
        ring = px[r - 6 : r + 7, c - 6 : c + 7]
        assert px[r, c] > np.median(ring) + 50


def test_heel_effect_and_inverse_square_shape_the_open_field():
    view = _flat_view()
    tech = {"kv": 70.0, "ma": 250.0, "ms": 40.0, "mas": 10.0}
    empty = Markers(np.zeros((0, 3)), np.zeros(0))
    base = RenderOptions(scatter=False, texture=False, blur=False, noiseless=True, bits_stored=16)
    flat = render_view(
        view, view, [], empty, tech, replace(base, heel_k=0.0), np.random.default_rng(0)
    )
    heel = render_view(
        view, view, [], empty, tech, replace(base, heel_k=1.0), np.random.default_rng(0)
    )
    q0 = stored_to_quanta(flat.pixels, base)
    q1 = stored_to_quanta(heel.pixels, base)
    # Without heel: cos^3 fall-off (inverse square times obliquity) from the central ray.
    det = view.detector
    rc = np.array([[0.0, 0.0], [399.0, 399.0], [199.5, 0.0]])
    p = det.pixel_to_world(rc)
    cos = 1500.0 / np.linalg.norm(p, axis=1)
    centre = det.center_mm
    cos0 = 1500.0 / np.linalg.norm(centre)
    for (r, c), k in zip(rc.astype(int), cos, strict=True):
        assert q0[r, c] / q0[200, 200] == pytest.approx((k / cos0) ** 3, rel=2e-3)
    # Heel: exp(-k tan a) along the columns (anode side darker), none across them.
    ratio = q1 / q0
    col = det.column_cosines
    tan_top = (p[0] - centre) @ col / 1500.0
    assert ratio[0, 200] == pytest.approx(np.exp(-tan_top), rel=5e-3)
    assert ratio[200, 0] == pytest.approx(ratio[200, 399], rel=1e-3)


def test_linear_transfer_dead_pixels_and_bits():
    ex = simulate_exam(
        "lower",
        8,
        full_resolution=False,
        transfer="linear",
        photometric="MONOCHROME1",
        bits_stored=16,
        dead_pixels=25,
    )
    f = ex.frames["A"]
    assert f.meta.pixel_intensity_relationship == "LIN" and f.meta.pixel_intensity_sign == 1
    top = (1 << 16) - 1
    stuck = np.count_nonzero((f.pixels == 0) | (f.pixels == top))
    assert 25 <= stuck < 200
    # Linear in dose: the open field is several times brighter than behind the bone.
    b = next(b for b in ex.truth["beads"] if b["visible"]["A"])
    r, c = (round(x) for x in b["image_px"]["A"])
    assert np.median(f.pixels[:20, :20]) > 3 * np.median(f.pixels[r - 10 : r + 10, c - 10 : c + 10])


def test_bead_cramer_rao_bound_is_the_variance_of_an_efficient_estimator():
    """The truth's CRB: an estimator that attains it on real noisy renders shows that
    the gradients, the Fisher matrix and the noise model agree."""
    det = Detector(
        np.array([-3.6, -3.6, 1500.0]),
        np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([0.15, 0.15]),
        48,
        48,
    )
    view = ViewGeometry(np.zeros(3), det)
    bead = Markers(np.array([[0.03, -0.05, 1200.0]]), np.array([0.4]))
    tech = {"kv": 70.0, "ma": 100.0, "ms": 25.0, "mas": 2.5}  # ~1000 quanta per pixel
    opts = RenderOptions(
        scatter=False, texture=False, blur=False, read_noise_quanta=0.0, heel_k=0.0, bits_stored=16
    )
    quiet = render_view(
        view, view, [], bead, tech, replace(opts, noiseless=True), np.random.default_rng(0)
    )
    crb = quiet.marker_crb_px[0]
    assert 0.001 < crb[0] < 0.05 and crb[0] == pytest.approx(crb[1], rel=0.15)
    mu0 = stored_to_quanta(quiet.pixels, opts)
    # Gradient of the expected image with respect to the bead's image position.
    top, win, _ = marker_windows(view, bead, 70.0, 4, 1.0, False)
    from simulator.beads import window_gradients

    g = window_gradients(view, bead, 70.0, 4, 1.0, False, top, win.shape[1] // 2)[0]
    size = g.shape[1]
    r0, c0 = top[0]
    w = (slice(r0, r0 + size), slice(c0, c0 + size))
    lam = mu0[w]
    n0 = np.median(mu0)
    gm = (n0 * g).reshape(2, -1)  # d(expected)/d(position) on the flat field
    info = (gm / lam.ravel()) @ gm.T
    assert np.sqrt(np.diag(np.linalg.inv(info))) == pytest.approx(crb, rel=0.05)
    est = []
    for k in range(300):
        noisy = render_view(view, view, [], bead, tech, opts, np.random.default_rng(100 + k))
        y = stored_to_quanta(noisy.pixels, opts)[w]
        est.append(np.linalg.solve(info, (gm / lam.ravel()) @ (y - lam).ravel()))
    sd = np.std(est, axis=0)
    assert sd == pytest.approx(crb, rel=0.1)


def test_cramer_rao_bound_with_detector_blur_and_read_noise():
    """With blur and read noise the bound is checked against the exact Gaussian
    Fisher information (full covariance K diag(lambda) K^T + sigma_r^2 I) and
    against the spread of the generalised-least-squares estimator on real renders."""
    n = 32
    det = Detector(
        np.array([-(n - 1) / 2 * 0.15, -(n - 1) / 2 * 0.15, 1500.0]),
        np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([0.15, 0.15]),
        n,
        n,
    )
    view = ViewGeometry(np.zeros(3), det)
    # A titanium sphere: partly transparent, so no pixel falls to the readout's
    # floor, where clipping would make the data non-Gaussian.
    bead = Markers(np.array([[0.02, -0.04, 1200.0]]), np.array([0.4]), "titanium")
    tech = {"kv": 70.0, "ma": 10.0, "ms": 12.5, "mas": 0.125}  # ~50 quanta per pixel
    opts = RenderOptions(
        scatter=False,
        texture=False,
        heel_k=0.0,
        bits_stored=16,
        focal_spot_mm=0.0,
        read_noise_quanta=4.0,
    )
    quiet = render_view(
        view, view, [], bead, tech, replace(opts, noiseless=True), np.random.default_rng(0)
    )
    crb = quiet.marker_crb_px[0]
    # Expected quanta before the blur, and the blur as a matrix (OpenCV's, borders included).
    pre = render_view(
        view,
        view,
        [],
        bead,
        tech,
        replace(opts, noiseless=True, blur=False),
        np.random.default_rng(0),
    )
    lam = stored_to_quanta(pre.pixels, opts).ravel()
    k = np.empty((n * n, n * n))
    for j in range(n * n):
        e = np.zeros(n * n, np.float32)
        e[j] = 1
        k[:, j] = cv2.GaussianBlur(e.reshape(n, n), (0, 0), opts.detector_sigma_px).ravel()
    from simulator.beads import window_gradients

    top, win, _ = marker_windows(view, bead, 70.0, 4, 0.0, False)
    assert win.min() > 0.3
    g_win = window_gradients(view, bead, 70.0, 4, 0.0, False, top, win.shape[1] // 2)[0]
    g = np.zeros((2, n, n))
    r0, c0 = top[0]
    size = win.shape[1]
    n0 = np.median(lam)
    g[:, r0 : r0 + size, c0 : c0 + size] = n0 * g_win
    gb = k @ g.reshape(2, -1).T  # derivative of the blurred expected image
    cov = k @ np.diag(lam) @ k.T + opts.read_noise_quanta**2 * np.eye(n * n)
    cinv_g = np.linalg.solve(cov, gb)
    info = gb.T @ cinv_g
    exact = np.sqrt(np.diag(np.linalg.inv(info)))
    assert crb == pytest.approx(exact, rel=0.1)
    # Without read noise the blur costs nothing; with it the bound is wider.
    white = render_view(
        view,
        view,
        [],
        bead,
        tech,
        replace(opts, noiseless=True, read_noise_quanta=0.0),
        np.random.default_rng(0),
    ).marker_crb_px[0]
    assert np.all(crb > 1.05 * white)
    # The generalised-least-squares estimator on noisy renders attains the exact bound.
    mean = stored_to_quanta(quiet.pixels, opts).ravel()
    est = []
    for s in range(300):
        y = stored_to_quanta(
            render_view(view, view, [], bead, tech, opts, np.random.default_rng(500 + s)).pixels,
            opts,
        ).ravel()
        est.append(np.linalg.solve(info, cinv_g.T @ (y - mean)))
    assert np.std(est, axis=0) == pytest.approx(exact, rel=0.12)
