"""A bead on a band: an opaque blurred disc over a background that is constant along one direction.

A tantalum bead on an implant's stem or tray sits on a metal band about as
wide as itself. Neither a plane nor one step edge (:mod:`reconstruction.detect`)
describes that background: the disc fit runs onto the metal (radius 7-11 px
for a 4 px bead, fifth session). Along the band the background hardly changes,
so it is modelled as a free profile across the band (linear interpolation
between knots one pixel apart) plus a slope along it; the bead occludes it.

The profile, the slope and the shadow's level enter the model linearly and
are solved for in closed form for each trial of the nonlinear parameters
(centre, radius, blur, band direction): variable projection (Golub and
Pereyra, SIAM J. Numer. Anal. 10, 1973; Golub and Pereyra, Inverse Problems
19, 2003). The nonlinear parameters are fitted by Levenberg-Marquardt
(Marquardt, J. SIAM 11, 1963) on the projected residual, whose Jacobian also
gives the centre's covariance with the linear parameters eliminated.

Fitting is costly (tens of linear solves per window), so it is used only
where a bead is looked for: on a rejected candidate on the epipolar line of a
bead that the other view shows clearly (:func:`reconstruction.pipeline.stereo_markers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconstruction.lightweight import erfc

_SQRT2 = np.sqrt(2.0)
# weight of the profile's second differences: keeps knots without data
# determined without bending the profile where there are data
_SMOOTH = 1e-2
_ITERATIONS = 12
_ALONG_SCALE = 10.0  # px: keeps the along-terms' columns of the profile's order


@dataclass(frozen=True)
class BandFit:
    """One window's fit (image coordinates).

    Attributes
    ----------
    rc : ndarray
        Centre (row, col) in px.
    radius, blur : float
        Disc radius and edge blur (Gaussian sigma) in px.
    contrast : float
        Shadow level minus the band's level at the centre (display units).
    theta : float
        Direction across the band (rad, from the row axis).
    sigma : float
        Centre standard error (px, RMS of the two axes), from the projected
        Jacobian and the window's noise, scaled up by the reduced chi-square
        where that exceeds one.
    chi : float
        RMS residual over the disc and its edge over the noise.
    noise : float
        The window's pixel noise (display units).
    converged : bool
        Whether the fit reached its minimum within the iterations allowed (a
        bead's does in a few; a fit on other structure wanders).
    """

    rc: np.ndarray
    radius: float
    blur: float
    contrast: float
    theta: float
    sigma: float
    chi: float
    noise: float
    converged: bool = True


def _hat_basis(a: np.ndarray, knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation between knots 1 px apart: (m, K) weights, and each
    point's left knot (for the profile's slope)."""
    x = np.clip(a - knots[0], 0.0, len(knots) - 1.000001)
    i = np.floor(x).astype(np.intp)
    f = x - i
    basis = np.zeros((len(a), len(knots)))
    rows = np.arange(len(a))
    basis[rows, i] = 1.0 - f
    basis[rows, i + 1] = f
    return basis, i


def _evaluate(dr, dc, yw, w, q, knots, reg, jac=True):
    """Weighted residual, linear solution and (Kaufman's) Jacobian at ``q``.

    Model ``m = b(x) (1 - o(x)) + A o(x)`` with the band ``b = sum_k h_k(a)
    (P_k + t Q_k / L)`` (``a`` across, ``t`` along the band, ``h_k`` the
    interpolation weights) and ``o`` the blurred disc's occlusion. For given
    nonlinear parameters the linear ones (P, Q, A) solve a regularised least
    squares problem; the Jacobian of the projected residual is approximated,
    as Kaufman (BIT 15, 1975) does, by ``-P_perp (dm/dq)`` with the linear
    parameters held at their solution.
    """
    r0, c0, rad, s, th = q
    ct, st = np.cos(th), np.sin(th)
    across = ct * dr + st * dc
    along = -st * dr + ct * dc
    yr, yc = dr - r0, dc - c0
    rho = np.sqrt(yr * yr + yc * yc + 1e-12)
    u = (rho - rad) / s
    gauss = np.exp(-0.5 * u * u)
    occ = 0.5 * erfc(u / _SQRT2, gauss)
    clear = 1.0 - occ
    k = len(knots)
    hat, left = _hat_basis(across, knots)
    tl = along / _ALONG_SCALE
    x = np.empty((len(dr), 2 * k + 1))
    x[:, :k] = hat * clear[:, None]
    # the profile may change linearly along the band (a tapered stem, an
    # edge not quite parallel to the others)
    x[:, k : 2 * k] = x[:, :k] * tl[:, None]
    x[:, -1] = occ
    xw = x * w[:, None]
    normal = xw.T @ xw + reg.T @ reg
    beta = np.linalg.solve(normal, xw.T @ yw)
    res = np.concatenate([yw - xw @ beta, -(reg @ beta)])
    if not jac:
        return res, beta, rho, None
    p_k, q_k, level = beta[:k], beta[k : 2 * k], beta[-1]
    band = hat @ p_k + tl * (hat @ q_k)
    # d band / d across: the profile's slope between the point's two knots
    slope = (p_k[left + 1] - p_k[left]) + tl * (q_k[left + 1] - q_k[left])
    d_along = (hat @ q_k) / _ALONG_SCALE
    phi = gauss / (np.sqrt(2.0 * np.pi) * s)  # -d occ / d rho
    edge = (level - band) * phi
    dm = np.empty((len(dr), 5))
    dm[:, 0] = edge * yr / rho
    dm[:, 1] = edge * yc / rho
    dm[:, 2] = edge
    dm[:, 3] = edge * u
    # d across / d theta = along, d along / d theta = -across
    dm[:, 4] = clear * (slope * along - d_along * across)
    dmw = dm * w[:, None]
    # the augmented system [X; R] beta = [y; 0] projected off its design
    gain = np.linalg.solve(normal, xw.T @ dmw)
    jacobian = np.concatenate([xw @ gain - dmw, reg @ gain])
    return res, beta, rho, jacobian


def _astray(q, lo, hi, start) -> bool:
    """Radius or blur at a bound, or the centre 3 px from where it started."""
    at_bound = np.any(np.isclose(q[2:4], lo[2:4]) | np.isclose(q[2:4], hi[2:4]))
    return bool(at_bound or np.abs(q[:2] - start).max() >= 3.0)


def _band_direction(win: np.ndarray, outside: np.ndarray) -> float:
    """Direction across the band (rad from the row axis): the principal axis of
    the gradient's structure tensor outside the bead (Bigun and Granlund, ICCV 1987)."""
    gr, gc = np.gradient(win)
    gr, gc = gr.ravel()[outside], gc.ravel()[outside]
    jrr, jcc, jrc = gr @ gr, gc @ gc, gr @ gc
    return float(0.5 * np.arctan2(2.0 * jrc, jrr - jcc))


def fit_on_band(
    display: np.ndarray,
    rc0: np.ndarray,
    radius0: float,
    radius_range: tuple[float, float],
    half_window: int,
    noise: float,
) -> BandFit | None:
    """Fit an opaque blurred disc on a one-directional background in one window.

    Parameters
    ----------
    display : ndarray
        Display image (bright = more attenuation).
    rc0 : ndarray
        Starting centre (row, col), px.
    radius0 : float
        Starting radius (px).
    radius_range : (float, float)
        Bounds of the radius (px).
    half_window : int
        Half size of the square window.
    noise : float
        Pixel noise of the window (display units).

    Returns
    -------
    BandFit or None
        None where the window reaches past the image.
    """
    h = int(half_window)
    ci = np.rint(np.asarray(rc0, float)).astype(int)
    rows, cols = display.shape
    if ci[0] - h < 0 or ci[1] - h < 0 or ci[0] + h >= rows or ci[1] + h >= cols:
        return None
    win = display[ci[0] - h : ci[0] + h + 1, ci[1] - h : ci[1] + h + 1].astype(np.float64)
    off = np.arange(-h, h + 1, dtype=np.float64)
    dr, dc = (g.ravel() for g in np.meshgrid(off, off, indexing="ij"))
    y = win.ravel()
    y0 = float(np.median(y))
    y = y - y0
    noise = max(float(noise), 1e-9)
    w = np.full(len(y), 1.0 / noise)
    reach = np.ceil(h * _SQRT2) + 1
    knots = np.arange(-reach, reach + 1)
    k = len(knots)
    # second differences of the profile, lightly weighted
    d2 = np.zeros((2 * (k - 2), 2 * k + 1))
    idx = np.arange(k - 2)
    for o in (0, k):
        d2[o // k * (k - 2) + idx, o + idx] = 1.0
        d2[o // k * (k - 2) + idx, o + idx + 1] = -2.0
        d2[o // k * (k - 2) + idx, o + idx + 2] = 1.0
    reg = np.sqrt(_SMOOTH) * d2 / noise * np.sqrt(len(y) / k)
    r_lo, r_hi = radius_range
    start = np.asarray(rc0, float) - ci
    outside = np.hypot(dr - start[0], dc - start[1]) > radius0 + 2.5
    th0 = _band_direction(win, outside)
    q = np.array([start[0], start[1], radius0, 1.0, th0])
    lo = np.array([start[0] - h / 2, start[1] - h / 2, r_lo, 0.3, -np.inf])
    hi = np.array([start[0] + h / 2, start[1] + h / 2, r_hi, 3.0, np.inf])
    yw = y * w
    res, beta, rho, jac = _evaluate(dr, dc, yw, w, q, knots, reg)
    cost = float(res @ res)
    lam = 1e-2
    converged = False
    for it in range(_ITERATIONS):
        if it >= 4 and _astray(q, lo, hi, start):
            break  # at a bound or far off after four steps: structure, not a bead
        jtj = jac.T @ jac
        step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -(jac.T @ res))
        trial = np.clip(q + step, lo, hi)
        res_t, beta_t, rho_t, jac_t = _evaluate(dr, dc, yw, w, trial, knots, reg)
        cost_t = float(res_t @ res_t)
        # 5 thousandths of a pixel are far below any bead's sigma here (the
        # model's share alone is 0.25 px), a hundredth in chi-square far
        # below its meaning
        small = np.abs(step[:2]).max() < 5e-3
        if cost_t < cost:
            converged = small or (cost - cost_t) < 1e-2
            q, res, beta, rho, jac, cost = trial, res_t, beta_t, rho_t, jac_t, cost_t
            lam *= 0.3
            if converged:
                break
        else:
            lam *= 10.0
            if small and lam <= 10.0:  # (not merely damped small)
                converged = True
                break
            if lam > 1e4:
                break
    m = len(y)
    dof = max(m - 5 - (2 * k + 1), 1)
    red = float(res[:m] @ res[:m]) / dof
    try:
        cov = np.linalg.inv(jac.T @ jac) * max(red, 1.0)
    except np.linalg.LinAlgError:
        return None
    sigma = float(np.sqrt(max(0.5 * (cov[0, 0] + cov[1, 1]), 0.0)))
    r0, c0, rad, s, th = q
    # the band's level under the centre: the profile at the centre's across-coordinate
    across0 = np.cos(th) * r0 + np.sin(th) * c0
    along0 = -np.sin(th) * r0 + np.cos(th) * c0
    hat0 = _hat_basis(np.array([across0]), knots)[0][0]
    bg0 = float(hat0 @ beta[:k] + hat0 @ beta[k : 2 * k] * along0 / _ALONG_SCALE)
    inner = rho <= rad + 2 * s
    chi = float(np.sqrt(np.mean(res[:m][inner] ** 2))) if inner.any() else np.inf
    return BandFit(
        rc=np.array([r0 + ci[0], c0 + ci[1]]),
        radius=float(rad),
        blur=float(s),
        contrast=float(beta[-1] - bg0),
        theta=float(th % np.pi),
        sigma=sigma,
        chi=chi,
        noise=noise,
        converged=converged,
    )
