"""A bead on a band: an opaque blurred disc over a background that varies across one direction.

A tantalum bead on an implant's stem or tray sits on a metal band about as
wide as itself. Neither a plane nor one step edge (:mod:`reconstruction.detect`)
describes that background: the disc fit runs onto the metal (radius 7-11 px
for a 4 px bead, fifth session). Along the band the background hardly changes,
so it is modelled as a free profile across the band (linear interpolation
between knots one pixel apart) that may change linearly along it (a tapered
stem); the bead occludes it.

The profile, its change and the shadow's level enter the model linearly and
are solved for in closed form for each trial of the disc's centre, radius and
blur: variable projection (Golub and Pereyra, SIAM J. Numer. Anal. 10, 1973;
Golub and Pereyra, Inverse Problems 19, 2003), with Kaufman's Jacobian
(BIT 15, 1975) for Levenberg-Marquardt (Marquardt, J. SIAM 11, 1963). The
band's direction is held at the principal axis of the gradient's structure
tensor outside the bead (Bigun and Granlund, ICCV 1987); the centre's
covariance counts its uncertainty.

Fitting costs a few milliseconds per window, so it is used only where a bead
is looked for: on a refused candidate on the epipolar line of a bead that the
other view shows clearly (:mod:`reconstruction.rescue`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reconstruction.detect import _window_noise
from reconstruction.lightweight import erfc

_SQRT2 = np.sqrt(2.0)
# weight of the profile's second differences: keeps knots without data
# determined without bending the profile where there are data
_SMOOTH = 1e-2
_ITERATIONS = 12
# largest step (row, col, radius, blur in px) of a converged fit (see _descend)
_STILL = 5e-3
_TURN = 1e-4  # rad: the direction's difference step
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
    converged: bool

    @property
    def snr(self) -> float:
        """Matched-filter signal-to-noise ratio, as the detection's
        (:func:`reconstruction.detect._select`)."""
        return self.contrast / self.noise * np.sqrt(np.pi) * max(self.radius, self.blur)


def _knot_of(a: np.ndarray, knots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation between knots 1 px apart: each point's left knot
    and its fraction of the way to the next."""
    x = np.clip(a - knots[0], 0.0, len(knots) - 1.000001)
    left = np.floor(x).astype(np.intp)
    return left, x - left


def _scatter(left: np.ndarray, a: np.ndarray, b: np.ndarray, v: np.ndarray, k: int):
    """``B^T v`` for a block ``B`` whose row i holds ``a_i`` at ``left_i`` and
    ``b_i`` at ``left_i + 1`` (``v`` one or more columns)."""
    if v.ndim == 1:
        return np.bincount(left, a * v, k) + np.bincount(left + 1, b * v, k)
    c = v.shape[1]
    cols = np.arange(c)
    at = (left[:, None] * c + cols).ravel()
    return (
        np.bincount(at, (a[:, None] * v).ravel(), k * c)
        + np.bincount(at + c, (b[:, None] * v).ravel(), k * c)
    ).reshape(k, c)


class _Design:
    """The linear parameters' design ``X`` (weighted), kept sparse.

    Columns: the profile's knots P (each row two entries, the interpolation
    weights times the clear fraction), the same times the along-coordinate
    for the profile's change Q, and the occlusion for the shadow's level. Its
    products are sums over pixels (``np.bincount``) rather than dense matrix
    products: linear in the pixels, and free of BLAS threads, which for these
    small matrices cost more than they save.
    """

    def __init__(self, left, frac, clear, tl, occ, w, k):
        self.left, self.tl, self.k = left, tl, k
        self.a = (1.0 - frac) * clear * w
        self.b = frac * clear * w
        self.ow = occ * w

    def apply(self, g: np.ndarray) -> np.ndarray:
        """``X g`` for a parameter vector or matrix ``g``."""
        k, left = self.k, self.left
        tl = self.tl if g.ndim == 1 else self.tl[:, None]
        a = self.a if g.ndim == 1 else self.a[:, None]
        b = self.b if g.ndim == 1 else self.b[:, None]
        ow = self.ow if g.ndim == 1 else self.ow[:, None]
        lo = g[left] + tl * g[k + left]
        hi = g[left + 1] + tl * g[k + left + 1]
        return a * lo + b * hi + ow * g[2 * k]

    def transpose_apply(self, v: np.ndarray) -> np.ndarray:
        """``X^T v``."""
        k, left, tl = self.k, self.left, self.tl
        tv = tl * v if v.ndim == 1 else tl[:, None] * v
        return np.concatenate(
            [
                _scatter(left, self.a, self.b, v, k),
                _scatter(left, self.a, self.b, tv, k),
                (self.ow @ v)[None] if v.ndim > 1 else np.array([self.ow @ v]),
            ]
        )

    def normal(self) -> np.ndarray:
        """``X^T X``: tridiagonal blocks with an arrow (the shadow's level)."""
        k, left, a, b, tl, ow = self.k, self.left, self.a, self.b, self.tl, self.ow
        n = np.zeros((2 * k + 1, 2 * k + 1))
        i = np.arange(k)
        for r, c, u in ((0, 0, 1.0), (0, k, tl), (k, k, tl * tl)):
            diag = np.bincount(left, a * a * u, k) + np.bincount(left + 1, b * b * u, k)
            off = np.bincount(left, a * b * u, k)[: k - 1]
            n[r + i, c + i] = diag
            n[r + i[:-1], c + i[:-1] + 1] = off
            n[r + i[:-1] + 1, c + i[:-1]] = off
        n[k : 2 * k, :k] = n[:k, k : 2 * k].T
        n[: 2 * k, -1] = n[-1, : 2 * k] = np.concatenate(
            [_scatter(left, a, b, ow, k), _scatter(left, a, b, ow * tl, k)]
        )
        n[-1, -1] = ow @ ow
        return n


def _evaluate(dr, dc, yw, w, q, knots, reg, rtr, jac=True):
    """Weighted residual, linear solution and (Kaufman's) Jacobian at ``q``.

    Model ``m = b(x) (1 - o(x)) + A o(x)`` with the band ``b = sum_k h_k(a)
    (P_k + t Q_k / L)`` (``a`` across, ``t`` along the band, ``h_k`` the
    interpolation weights) and ``o`` the blurred disc's occlusion. For given
    nonlinear parameters the linear ones (P, Q, A) solve a least-squares
    problem regularised by ``reg`` (``rtr = reg^T reg``); the Jacobian of the
    projected residual is approximated, as Kaufman (BIT 15, 1975) does, by
    projecting ``dm/dq`` (linear parameters held at their solution) off the
    augmented design ``[X; reg]``.
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
    left, frac = _knot_of(across, knots)
    # the profile may change linearly along the band (a tapered stem, an
    # edge not quite parallel to the others)
    tl = along / _ALONG_SCALE
    design = _Design(left, frac, clear, tl, occ, w, k)
    # (inverted once: the Jacobian needs a second right-hand side)
    normal_inv = np.linalg.inv(design.normal() + rtr)
    beta = normal_inv @ design.transpose_apply(yw)
    res = np.concatenate([yw - design.apply(beta), -(reg @ beta)])
    if not jac:
        return res, beta, rho, None
    p_k, q_k, level = beta[:k], beta[k : 2 * k], beta[-1]
    p_at = (1.0 - frac) * p_k[left] + frac * p_k[left + 1]
    q_at = (1.0 - frac) * q_k[left] + frac * q_k[left + 1]
    band = p_at + tl * q_at
    phi = gauss / (np.sqrt(2.0 * np.pi) * s)  # -d occ / d rho
    edge = (level - band) * phi
    dm = np.empty((len(dr), 4))
    dm[:, 0] = edge * yr / rho
    dm[:, 1] = edge * yc / rho
    dm[:, 2] = edge
    dm[:, 3] = edge * u
    dmw = dm * w[:, None]
    gain = normal_inv @ design.transpose_apply(dmw)
    jacobian = np.concatenate([design.apply(gain) - dmw, reg @ gain])
    return res, beta, rho, jacobian


@dataclass
class _Descent:
    """Where :func:`_descend` ended: parameters, residual, linear solution,
    distances from the centre, Jacobian, and whether it converged."""

    q: np.ndarray
    res: np.ndarray
    beta: np.ndarray
    rho: np.ndarray
    jac: np.ndarray
    converged: bool


def _descend(evaluate, q, lo, hi, start) -> _Descent:
    """Levenberg-Marquardt over the disc's centre, radius and blur (the
    direction held), within the bounds ``lo``, ``hi``."""
    res, beta, rho, jac = evaluate(q)
    cost = float(res @ res)
    lam = 1e-2
    converged = False
    for it in range(_ITERATIONS):
        if it >= 4 and _astray(q, lo, hi, start):
            break  # at a bound or far off after four steps: structure, not a bead
        jtj = jac.T @ jac
        step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -(jac.T @ res))
        trial = np.clip(q + np.r_[step, 0.0], lo, hi)
        res_t, beta_t, rho_t, jac_t = evaluate(trial)
        cost_t = float(res_t @ res_t)
        # converged when no parameter moves: 5 thousandths of a pixel are far
        # below any bead's sigma here (the model's share alone is 0.25 px)
        small = bool(np.all(np.abs(step) < _STILL))
        if cost_t < cost:
            # (or a hundredth in chi-square, far below its meaning, gained by
            # a lightly damped step, lambda <= 1: the minimum is near, though
            # a small bead's radius and blur, which trade off, may still move
            # by a few hundredths of a pixel)
            converged = small or ((cost - cost_t) < 1e-2 and lam <= 1.0)
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
    return _Descent(q, res, beta, rho, jac, converged)


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
    noise: float | None = None,
    blur_range: tuple[float, float] = (0.3, 3.0),
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
    noise : float, optional
        Pixel noise of the window (display units); by default measured from
        its pixel differences (:func:`reconstruction.detect._window_noise`).
    blur_range : (float, float)
        Bounds of the blur (px).

    Returns
    -------
    BandFit or None
        None where the window reaches past the image or holds non-finite values.
    """
    h = int(half_window)
    ci = np.rint(np.asarray(rc0, float)).astype(int)
    rows, cols = display.shape
    if ci[0] - h < 0 or ci[1] - h < 0 or ci[0] + h >= rows or ci[1] + h >= cols:
        return None
    win = display[ci[0] - h : ci[0] + h + 1, ci[1] - h : ci[1] + h + 1].astype(np.float64)
    if not np.all(np.isfinite(win)):
        return None
    off = np.arange(-h, h + 1, dtype=np.float64)
    dr, dc = (g.ravel() for g in np.meshgrid(off, off, indexing="ij"))
    y = win.ravel()
    y0 = float(np.median(y))
    y = y - y0
    if noise is None:
        noise = float(_window_noise(win[None])[0])
    noise = max(float(noise), 1e-9)
    w = np.full(len(y), 1.0 / noise)
    reach = np.ceil(h * _SQRT2) + 1
    knots = np.arange(-reach, reach + 1)
    k = len(knots)
    # second differences of the profile, lightly weighted
    # (of the profile P and of its change Q, each k knots)
    d2 = np.zeros((2 * (k - 2), 2 * k + 1))
    idx = np.arange(k - 2)
    for block in (0, 1):
        rows, cols = block * (k - 2) + idx, block * k + idx
        d2[rows, cols], d2[rows, cols + 1], d2[rows, cols + 2] = 1.0, -2.0, 1.0
    reg = np.sqrt(_SMOOTH) * d2 / noise * np.sqrt(len(y) / k)
    rtr = np.einsum("ij,ik->jk", reg, reg)  # (no BLAS threads for this small product)
    r_lo, r_hi = radius_range
    start = np.asarray(rc0, float) - ci
    outside = np.hypot(dr - start[0], dc - start[1]) > radius0 + 2.5
    th0 = _band_direction(win, outside)
    q = np.array([start[0], start[1], radius0, np.clip(1.0, *blur_range), th0])
    lo = np.array([start[0] - h / 2, start[1] - h / 2, r_lo, blur_range[0], -np.inf])
    hi = np.array([start[0] + h / 2, start[1] + h / 2, r_hi, blur_range[1], np.inf])
    yw = y * w

    def evaluate(q, jac=True):
        return _evaluate(dr, dc, yw, w, q, knots, reg, rtr, jac)

    # The direction is held at the gradient's: the cost is not smooth in it
    # (pixels cross knots as it turns), and fitting it (Levenberg-Marquardt on
    # all five, or a search of +-4 degrees then the disc again) placed the 11
    # lost implant beads of the default exams no better (RMS 0.23-0.26 px
    # either way) while converging less often or costing twice the time.
    try:
        fit = _descend(evaluate, q, lo, hi, start)
        q = fit.q
        # the centre's covariance counts the direction's uncertainty (its
        # column by a forward difference: Kaufman's, which drops the
        # projection's change, follows a turn of the whole basis poorly)
        turned = evaluate(np.r_[q[:4], q[4] + _TURN], jac=False)[0]
    except np.linalg.LinAlgError:  # a window without a band's structure to fit
        return None
    res, beta, rho, converged = fit.res, fit.beta, fit.rho, fit.converged
    jac = np.column_stack([fit.jac, (turned - res) / _TURN])
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
    left0, frac0 = _knot_of(np.array([across0]), knots)
    at0 = np.array([1.0 - frac0[0], frac0[0]])
    profile0 = at0 @ beta[left0[0] : left0[0] + 2]
    change0 = at0 @ beta[k + left0[0] : k + left0[0] + 2]
    bg0 = float(profile0 + change0 * along0 / _ALONG_SCALE)
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
