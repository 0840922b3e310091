"""Physically based rendering of one radiograph (one tube, one detector).

Signal chain, per pixel, in detected X-ray quanta:

1. Primary: ``N0(p) * exp(-sum_i mu_i L_i(p))`` (Beer–Lambert), with the line
   integrals ``L_i`` of every solid computed analytically
   (:mod:`simulator.primitives`). Smooth bodies (soft tissue, bone) are
   integrated on a coarse grid and upsampled bilinearly; metal implants at
   full resolution inside their bounding boxes (and blurred by the focal-spot
   penumbra at their magnification); markers (beads, cage markers)
   in small windows, supersampled ``S x S`` per pixel and averaged in the
   intensity domain (what a pixel integrates), then blurred by the focal-spot
   penumbra of their own magnification, a Gaussian of FWHM
   ``spot * (M - 1)`` (Bushberg et al., *The Essential Physics of Medical
   Imaging*, 3rd ed., ch. 7).
2. ``N0(p)``: open-field fluence at the detector centre, set by kV and mAs,
   times the inverse square law and the obliquity ``cos`` of each pixel,
   the heel effect (``exp(-k tan a)`` along the anode–cathode axis, a the
   angle off the central ray) and the collimated field (soft edges).
3. Bone texture: band-passed noise modulating the cancellous path length.
4. Scatter: a low-passed copy of the primary weighted by the object's optical
   depth (first-order scatter is proportional to the interacting fraction),
   as in the convolution scatter models (Boone & Seibert, Med Phys 1988;
   Love & Kruger, Med Phys 1987).
5. Quantum noise: Poisson of the expected quanta (Gaussian approximation
   above 30 quanta, exact Poisson below).
6. Detector blur (scintillator light spread, Gaussian), read noise.
7. Stored values: logarithmic (or linear) transfer to ``bits_stored`` bits,
   MONOCHROME1 or MONOCHROME2, markers displayed bright.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from reconstruction.geometry import ViewGeometry
from simulator.beads import Markers, marker_windows, window_gradients
from simulator.materials import mu
from simulator.primitives import Solid
from simulator.readout import poisson_noise, randn, stored_to_quanta, to_stored

__all__ = [
    "Markers",
    "RenderOptions",
    "RenderResult",
    "marker_windows",
    "open_field_fluence",
    "poisson_noise",
    "render_view",
    "stored_to_quanta",
    "to_stored",
]


@dataclass(frozen=True)
class RenderOptions:
    """Physical and detector settings of one render.

    The defaults are the project's clinical exposure: blur sigma 0.7 px,
    scatter-to-primary above 0.5 behind the patient, open-field fluence set
    by the technique (at most 5000 quanta per pixel for the default
    techniques), bone texture on.
    """

    noiseless: bool = False
    blur: bool = True
    scatter: bool = True
    texture: bool = True
    supersample: int = 4
    coarse_step: int = 2
    detector_sigma_px: float = 0.7
    focal_spot_mm: float = 1.0
    read_noise_quanta: float = 3.0
    scatter_weight: float = 0.3
    scatter_sigma_mm: float = 35.0
    heel_k: float = 1.0
    texture_amplitude: float = 0.25
    collimator_edge_mm: float = 2.0
    collimation: float | None = None  # irradiated fraction of each detector side
    dead_pixels: int = 0
    bits_stored: int = 14
    photometric: str = "MONOCHROME2"
    transfer: str = "log"  # "log" | "linear"
    saturation_quanta: float = 60000.0
    include_markers: bool = True
    keep_layers: bool = False
    marker_information: bool = True  # Cramér–Rao bound and SNR of every marker


@dataclass
class RenderResult:
    pixels: np.ndarray  # uint16 stored values
    open_fluence: float  # quanta per pixel at the detector centre, open field
    spr_behind_patient: float  # median scatter-to-primary where the patient is thick
    collimation_px: tuple[int, int, int, int] | None
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    # Per marker: Cramér–Rao bound of its image position (rows, columns; px) and
    # its ideal-observer SNR, from the expected quanta (NaN if cut by the border).
    marker_crb_px: np.ndarray | None = None
    marker_snr: np.ndarray | None = None


def open_field_fluence(kv: float, mas: float, sid_mm: float, pixel_mm: float = 0.15) -> float:
    """Detected quanta per pixel (of side ``pixel_mm``) in the open field at the detector centre.

    Tube output grows about as kV^2 per mAs (Bushberg, ch. 6) and falls with
    the inverse square of the distance; the constant puts 70 kV, 10 mAs at
    1.5 m at 4000 detected quanta per 0.15 mm pixel: about 10 µGy at the
    panel (RQA5 beam: ~30 000 photons per mm² per µGy, IEC 62220-1) with a
    CsI absorption near 0.6.
    """
    area = (float(pixel_mm) / 0.15) ** 2  # a binned pixel collects the quanta of four
    return 400.0 * area * float(mas) * (float(kv) / 70.0) ** 2.0 * (1500.0 / float(sid_mm)) ** 2


def _sample_positions(n_full: int, n_coarse: int) -> np.ndarray:
    """Full-resolution coordinates of coarse samples matching cv2.resize INTER_LINEAR."""
    s = n_full / n_coarse
    return (np.arange(n_coarse) + 0.5) * s - 0.5


def _ray_dirs(view: ViewGeometry, rows: np.ndarray, cols: np.ndarray, dtype=np.float32):
    """Unit directions from the focus to pixel positions (rows x cols grid), and distances."""
    det = view.detector
    u = det.row_cosines * det.pixel_spacing_mm[1]
    v = det.column_cosines * det.pixel_spacing_mm[0]
    base = det.origin_mm - view.focus_mm
    pr = (base + rows[:, None] * v).astype(dtype)
    pc = (cols[:, None] * u).astype(dtype)
    p = pr[:, None, :] + pc[None, :, :]
    n = np.sqrt(np.einsum("...i,...i->...", p, p))
    p /= n[..., None]
    return p, n


def _bbox(view: ViewGeometry, solid: Solid, shape, margin: float) -> tuple | None:
    rc = view.project(solid.corners())
    if not np.all(np.isfinite(rc)):
        return 0, shape[0], 0, shape[1]
    r0 = max(int(np.floor(rc[:, 0].min() - margin)), 0)
    r1 = min(int(np.ceil(rc[:, 0].max() + margin)) + 1, shape[0])
    c0 = max(int(np.floor(rc[:, 1].min() - margin)), 0)
    c1 = min(int(np.ceil(rc[:, 1].max() + margin)) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def _coarse_index_bbox(bb, rpos, cpos):
    r0, r1, c0, c1 = bb
    i0 = max(int(np.searchsorted(rpos, r0)) - 1, 0)
    i1 = min(int(np.searchsorted(rpos, r1)) + 1, len(rpos))
    j0 = max(int(np.searchsorted(cpos, c0)) - 1, 0)
    j1 = min(int(np.searchsorted(cpos, c1)) + 1, len(cpos))
    return i0, i1, j0, j1


SMOOTH_MATERIALS = frozenset({"soft", "fat", "air", "pmma", "pe"})


def line_integrals(
    view: ViewGeometry, solids: list[Solid], kv: float, step: int
) -> dict[str, np.ndarray]:
    """Optical depths on two coarse grids.

    Bone (and anything with detail) is integrated every ``step`` pixels
    (``tau_fine``, ``canc`` = path length in cancellous bone); soft tissue,
    fat, gas and plastics every ``2 * step`` pixels (``tau_coarse``), along
    with the metal (``tau_metal``, for the scatter estimate only: metal is
    rendered at full resolution by :func:`metal_full`) and the patient's
    optical depth (``tau_patient``, which drives the scatter).
    """
    det = view.detector
    grids = {}
    for name, st in (("fine", step), ("coarse", 2 * step)):
        h, w = -(-det.rows // st), -(-det.columns // st)
        rpos, cpos = _sample_positions(det.rows, h), _sample_positions(det.columns, w)
        grids[name] = (rpos, cpos, _ray_dirs(view, rpos, cpos)[0])
    shape_f = grids["fine"][2].shape[:2]
    shape_c = grids["coarse"][2].shape[:2]
    out = {
        "tau_fine": np.zeros(shape_f, np.float32),
        "canc": np.zeros(shape_f, np.float32),
        "tau_coarse": np.zeros(shape_c, np.float32),
        "tau_metal": np.zeros(shape_c, np.float32),
        "tau_patient_coarse": np.zeros(shape_c, np.float32),
    }
    for s in solids:
        fine = not (s.is_metal or s.material in SMOOTH_MATERIALS)
        rpos, cpos, dirs = grids["fine" if fine else "coarse"]
        bb = _bbox(view, s, (det.rows, det.columns), 4 * step)
        if bb is None:
            continue
        i0, i1, j0, j1 = _coarse_index_bbox(bb, rpos, cpos)
        tau = np.float32(s.mu(kv)) * s.chord(view.focus_mm, dirs[i0:i1, j0:j1])
        if s.is_metal:
            out["tau_metal"][i0:i1, j0:j1] += tau
        elif fine:
            out["tau_fine"][i0:i1, j0:j1] += tau
            if s.material == "cancellous":
                out["canc"][i0:i1, j0:j1] += tau / np.float32(s.mu(kv))
            elif s.displaces == "cancellous":
                out["canc"][i0:i1, j0:j1] -= tau / np.float32(s.mu(kv))
        else:
            out["tau_coarse"][i0:i1, j0:j1] += tau
            if s.group == "patient":
                out["tau_patient_coarse"][i0:i1, j0:j1] += tau
    # All bone is patient: add it to the patient's depth on the coarse grid.
    out["tau_patient_coarse"] += cv2.resize(
        out["tau_fine"], (shape_c[1], shape_c[0]), interpolation=cv2.INTER_AREA
    )
    out["rpos"], out["cpos"] = grids["coarse"][0], grids["coarse"][1]
    return out


def metal_full(
    view: ViewGeometry,
    solids: list[Solid],
    kv: float,
    shape: tuple[int, int],
    focal_spot_mm: float = 0.0,
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Transmission of the metal at full resolution, in the box that holds it all.

    Returns ``((r0, r1, c0, c1), transmission)`` or None without metal in view.
    With ``focal_spot_mm`` the transmission is blurred by the focal-spot
    penumbra at the metal's magnification (Gaussian, FWHM ``spot (M - 1)``):
    implant edges are as soft as the beads next to them.
    """
    metal = [s for s in solids if s.is_metal]
    boxes = [(s, _bbox(view, s, shape, 2)) for s in metal]
    boxes = [(s, bb) for s, bb in boxes if bb is not None]
    if not boxes:
        return None
    det = view.detector
    centre = np.mean([s.center for s, _ in boxes], axis=0)
    hit = det.pixel_to_world(view.project(centre))
    mag = float(np.linalg.norm(hit - view.focus_mm) / np.linalg.norm(centre - view.focus_mm))
    sigma = focal_spot_mm * max(mag - 1.0, 0.0) / 2.3548 / float(det.pixel_spacing_mm.min())
    pad = int(np.ceil(3 * sigma)) + 1
    r0 = max(min(bb[0] for _, bb in boxes) - pad, 0)
    r1 = min(max(bb[1] for _, bb in boxes) + pad, shape[0])
    c0 = max(min(bb[2] for _, bb in boxes) - pad, 0)
    c1 = min(max(bb[3] for _, bb in boxes) + pad, shape[1])
    tau = np.zeros((r1 - r0, c1 - c0), np.float32)
    for s, (a0, a1, b0, b1) in boxes:
        dirs, _ = _ray_dirs(view, np.arange(a0, a1, dtype=float), np.arange(b0, b1, dtype=float))
        tau[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += np.float32(s.mu(kv)) * s.chord(
            view.focus_mm, dirs
        )
    np.negative(tau, out=tau)
    trans = cv2.exp(tau)
    if sigma > 0.05:
        trans = cv2.GaussianBlur(trans, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return (r0, r1, c0, c1), trans


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Trabecular-like texture: band-passed white noise (0.3–1 mm), unit std."""
    h, w = shape[0] // 2, shape[1] // 2
    z = randn(int(rng.integers(1 << 31)), (h, w))
    a = cv2.GaussianBlur(z, (0, 0), 0.8)
    b = cv2.GaussianBlur(z, (0, 0), 2.5)
    t = a - b
    t *= np.float32(1.0 / max(float(t[::4, ::4].std()), 1e-6))
    return cv2.resize(t, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _fluence_field(
    view: ViewGeometry,
    nominal: ViewGeometry,
    rpos: np.ndarray,
    cpos: np.ndarray,
    opts: RenderOptions,
) -> np.ndarray:
    """Relative open-field fluence (1 at the detector centre) on the coarse grid."""
    det = view.detector
    dirs, dist = _ray_dirs(view, rpos, cpos, np.float64)
    n = det.normal
    centre = det.center_mm - view.focus_mm
    d0 = np.linalg.norm(centre)
    c_hat = centre / d0
    cos_g = np.abs(dirs @ n)
    cos0 = abs(c_hat @ n)
    rel = (d0 / dist) ** 2 * (cos_g / cos0)
    # Heel effect along the anode–cathode axis (taken along the detector columns).
    axis = det.column_cosines - (det.column_cosines @ c_hat) * c_hat
    axis /= np.linalg.norm(axis)
    tan_a = (dirs @ axis) / (dirs @ c_hat)
    rel *= np.exp(-opts.heel_k * tan_a)
    if opts.collimation is not None:
        rel *= _collimator(view, nominal, dirs, opts)
    return rel.astype(np.float32)


def _collimator(view, nominal, dirs, opts) -> np.ndarray:
    """Field of a rectangular collimator fixed to the tube (soft edges).

    The field is a fraction of the nominal detector, centred on it, as seen
    from the nominal focus; on the day the collimator travels with the tube.
    """
    from scipy.special import erf

    nd = nominal.detector
    nrm = nd.normal
    # Ray from the actual focus, shifted onto the nominal focus, hits the nominal plane.
    h = (nd.origin_mm - nominal.focus_mm) @ nrm
    s = h / (dirs @ nrm)
    q = nominal.focus_mm + s[..., None] * dirs
    rc = nd.world_to_pixel(q)
    frac = float(opts.collimation)
    sp = nd.pixel_spacing_mm
    half_r = frac * nd.rows * sp[0] / 2
    half_c = frac * nd.columns * sp[1] / 2
    yr = (rc[..., 0] - (nd.rows - 1) / 2) * sp[0]
    yc = (rc[..., 1] - (nd.columns - 1) / 2) * sp[1]
    e = opts.collimator_edge_mm * np.sqrt(2)

    def edge(x, half):
        return 0.25 * (1 + erf((x + half) / e)) * (1 + erf((half - x) / e))

    return edge(yr, half_r) * edge(yc, half_c)


def collimated_box(view: ViewGeometry, nominal: ViewGeometry, frac: float | None):
    """Pixel box ``(r0, r1, c0, c1)`` of the irradiated field, or None if open."""
    if frac is None:
        return None
    det = view.detector
    opts = RenderOptions(collimation=frac, collimator_edge_mm=1e-3)
    rpos = np.arange(det.rows, dtype=float)
    cpos = np.arange(det.columns, dtype=float)
    mid_r = np.array([(det.rows - 1) / 2])
    mid_c = np.array([(det.columns - 1) / 2])
    along_r = _collimator(view, nominal, _ray_dirs(view, rpos, mid_c, np.float64)[0], opts)
    along_c = _collimator(view, nominal, _ray_dirs(view, mid_r, cpos, np.float64)[0], opts)
    rr = np.flatnonzero(along_r[:, 0] > 0.5)
    cc = np.flatnonzero(along_c[0] > 0.5)
    if len(rr) == 0 or len(cc) == 0:
        return (0, -1, 0, -1)
    return int(rr[0]), int(rr[-1]), int(cc[0]), int(cc[-1])


def render_view(
    view: ViewGeometry,
    nominal: ViewGeometry,
    solids: list[Solid],
    markers: Markers,
    technique: dict,
    opts: RenderOptions,
    rng: np.random.Generator,
) -> RenderResult:
    """Render one radiograph; see the module docstring for the signal chain."""
    det = view.detector
    kv, mas = float(technique["kv"]), float(technique["mas"])
    shape = (det.rows, det.columns)
    rng_tex, rng_noise, rng_dead = rng.spawn(3)

    def up(a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)

    lay = line_integrals(view, solids, kv, opts.coarse_step)
    tau = up(lay["tau_fine"])
    tau += up(lay["tau_coarse"])
    if opts.texture:
        # Trabeculae crossed along a ray add up like independent events: the
        # texture's optical-depth fluctuation grows as sqrt(path length / 1 mm).
        canc = up(np.sqrt(np.maximum(lay["canc"], 0)))
        canc *= _texture(rng_tex, shape)
        tau += canc * np.float32(mu("cancellous", kv) * opts.texture_amplitude)
    np.negative(tau, out=tau)
    transmission = cv2.exp(tau)
    metal = metal_full(view, solids, kv, shape, opts.focal_spot_mm if opts.blur else 0.0)
    if metal is not None:
        (r0, r1, c0, c1), trans = metal
        transmission[r0:r1, c0:c1] *= trans

    n_mk = len(markers.xyz_mm) if opts.include_markers else 0
    if n_mk:
        top, win, _ = marker_windows(
            view, markers, kv, opts.supersample, opts.focal_spot_mm, opts.blur
        )
        size = win.shape[1]
        inside = (
            (top[:, 0] >= 0)
            & (top[:, 1] >= 0)
            & (top[:, 0] + size <= shape[0])
            & (top[:, 1] + size <= shape[1])
        )
        # The background each marker lies on (before any marker is drawn).
        base = np.ones((n_mk, size, size), np.float32)
        for i in np.flatnonzero(inside):
            r0, c0 = top[i]
            base[i] = transmission[r0 : r0 + size, c0 : c0 + size]
        for (r0, c0), t in zip(top, win, strict=True):
            ra, ca = max(r0, 0), max(c0, 0)
            rb, cb = min(r0 + size, shape[0]), min(c0 + size, shape[1])
            if ra < rb and ca < cb:
                transmission[ra:rb, ca:cb] *= t[ra - r0 : rb - r0, ca - c0 : cb - c0]

    centre_dist = float(np.linalg.norm(det.center_mm - view.focus_mm))
    pixel_mm = float(np.sqrt(np.prod(det.pixel_spacing_mm)))
    n_open = open_field_fluence(kv, mas, centre_dist, pixel_mm)
    rel = _fluence_field(view, nominal, lay["rpos"], lay["cpos"], opts)
    rel *= np.float32(n_open)
    n0 = up(rel)
    expected = n0 * transmission
    layers: dict[str, np.ndarray] = {}
    if opts.keep_layers:
        layers["primary"] = expected.copy()
        layers["tau_patient_coarse"] = lay["tau_patient_coarse"]

    spr = 0.0
    if opts.scatter:
        scatter, spr = _scatter(lay, rel, det, opts)
        scatter = up(scatter)
        expected += scatter
        if opts.keep_layers:
            layers["scatter"] = scatter

    crb = np.full((len(markers.xyz_mm), 2), np.nan)
    snr = np.full(len(markers.xyz_mm), np.nan)
    wanted = np.zeros(len(markers.xyz_mm), bool)
    if n_mk and opts.marker_information:
        wanted = inside if markers.informative is None else inside & markers.informative
    if np.any(wanted):
        idx = np.flatnonzero(wanted)
        sub = Markers(markers.xyz_mm[idx], markers.radius_mm[idx], markers.material)
        grad = window_gradients(
            view, sub, kv, opts.supersample, opts.focal_spot_mm, opts.blur, top[idx], size // 2
        )
        scat = scatter if opts.scatter else None
        gs, lams = [], []
        for k, i in enumerate(idx):
            r0, c0 = top[i]
            w = (slice(r0, r0 + size), slice(c0, c0 + size))
            free = n0[w].astype(float) * base[i]
            lam = free * win[i] + (scat[w] if scat is not None else 0.0)
            lams.append(np.maximum(lam, 1e-6))
            gs.append(free[None] * grad[k])  # d(expected quanta)/d(image position)
            snr[i] = float(np.sqrt(np.sum((free * (1 - win[i])) ** 2 / lams[-1])))
        fishers = _fisher(
            np.array(gs), np.array(lams), _blur_matrix(size, opts), opts.read_noise_quanta**2
        )
        for i, fisher in zip(idx, fishers, strict=True):
            # No information (a marker hidden behind metal): the bound is infinite.
            if np.linalg.eigvalsh(fisher)[0] > 1e-9 * max(np.trace(fisher), 1e-30):
                crb[i] = np.sqrt(np.diag(np.linalg.inv(fisher)))

    signal = expected if opts.noiseless else poisson_noise(expected, rng_noise)
    if opts.blur and opts.detector_sigma_px > 0:
        signal = cv2.GaussianBlur(signal, (0, 0), opts.detector_sigma_px)
    if not opts.noiseless and opts.read_noise_quanta > 0:
        read = randn(int(rng_noise.integers(1 << 31)), shape)
        read *= np.float32(opts.read_noise_quanta)
        signal += read
    pixels = to_stored(signal, opts)
    if opts.dead_pixels:
        idx = rng_dead.choice(pixels.size, size=int(opts.dead_pixels), replace=False)
        pixels.ravel()[idx] = rng_dead.choice([0, (1 << opts.bits_stored) - 1], size=idx.size)
    return RenderResult(
        pixels=pixels,
        open_fluence=n_open,
        spr_behind_patient=spr,
        collimation_px=collimated_box(view, nominal, opts.collimation),
        layers=layers,
        marker_crb_px=crb,
        marker_snr=snr,
    )


def _blur_matrix(size: int, opts: RenderOptions) -> np.ndarray | None:
    """The detector blur on a window, one axis: ``W x W`` (separable), or None."""
    if not opts.blur or opts.detector_sigma_px <= 0:
        return None
    sig = float(opts.detector_sigma_px)
    ksize = round(sig * 8 + 1) | 1  # OpenCV's kernel size for float images
    k1 = cv2.getGaussianKernel(ksize, sig).ravel()
    half = ksize // 2
    idx = np.arange(size)
    off = idx[:, None] - idx[None, :] + half
    return np.where((off >= 0) & (off < ksize), k1[np.clip(off, 0, ksize - 1)], 0.0)


def _sep(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``a @ x @ a.T`` over the last two axes, as two large matrix products."""
    shape = x.shape
    y = (x.reshape(-1, shape[-1]) @ a.T).reshape(shape)
    y = np.moveaxis(y, -2, 0)
    y = (a @ y.reshape(shape[-2], -1)).reshape(y.shape)
    return np.moveaxis(y, 0, -2)


def _fisher(g: np.ndarray, lam: np.ndarray, k1: np.ndarray | None, read2: float) -> np.ndarray:
    """Fisher information of each marker's image position in its window.

    ``g`` (n, 2, W, W): derivative of the expected quanta before the blur;
    ``lam`` (n, W, W): their expected value. The detector records
    ``y = K (x + q) + r``: quantum noise ``q`` (Poisson, variance ``lam``)
    blurred with the signal by the scintillator, read noise ``r`` (variance
    ``read2``) added after. For Gaussian data the information is
    ``G^T C^-1 G`` with ``G = K g``, ``C = K diag(lam) K^T + read2 I`` (Kay,
    *Fundamentals of Statistical Signal Processing: Estimation Theory*, 1993,
    eq. 3.31), which equals ``g^T (diag(lam) + read2 (K^T K)^-1)^-1 g``: the
    blur alone loses nothing (it is invertible), read noise behind it costs
    where the blur has attenuated the signal. Solved by conjugate gradients,
    preconditioned by the exact inverse for a uniform ``lam`` (diagonal in the
    eigenbasis of the separable ``K^T K``).
    """
    if k1 is None:
        return np.einsum("njrc,nkrc->njk", g, g / (lam + read2)[:, None])
    if read2 <= 0:
        return np.einsum("njrc,nkrc->njk", g, g / lam[:, None])
    e, v = np.linalg.eigh(k1.T @ k1)
    minv = read2 / np.outer(np.maximum(e, 1e-12), np.maximum(e, 1e-12))  # read2 (K^T K)^-1
    vt = v.T
    lam4 = lam[:, None]
    weight = np.sum(g * g, axis=1)
    lam_bar = weight.sum(axis=(1, 2)) / np.maximum((weight / lam).sum(axis=(1, 2)), 1e-300)
    inv_prec = 1.0 / (lam_bar[:, None, None, None] + minv)

    def apply_a(x):
        return lam4 * x + _sep(v, minv * _sep(vt, x))

    def prec(r):
        return _sep(v, inv_prec * _sep(vt, r))

    x = prec(g)
    r = g - apply_a(x)
    z = prec(r)
    p = z.copy()
    rz = np.sum(r * z, axis=(2, 3), keepdims=True)
    norm0 = np.sqrt(np.sum(g * g, axis=(2, 3), keepdims=True)) + 1e-300
    for _ in range(200):
        if np.all(np.sqrt(np.sum(r * r, axis=(2, 3), keepdims=True)) <= 1e-4 * norm0):
            break
        ap = apply_a(p)
        alpha = rz / np.maximum(np.sum(p * ap, axis=(2, 3), keepdims=True), 1e-300)
        x += alpha * p
        r -= alpha * ap
        z = prec(r)
        rz_new = np.sum(r * z, axis=(2, 3), keepdims=True)
        p = z + (rz_new / np.maximum(rz, 1e-300)) * p
        rz = rz_new
    return np.einsum("njrc,nkrc->njk", g, x)


def _scatter(lay: dict, rel: np.ndarray, det, opts: RenderOptions) -> tuple[np.ndarray, float]:
    """Scatter on the coarse grid, and its median ratio to the primary behind the patient.

    Scatter source: the primary (without markers: they are too small to
    matter) times the patient's optical depth; spread by a Gaussian of
    ``scatter_sigma_mm`` at the detector; computed on a grid 4x coarser still.
    """
    tau_all = (
        lay["tau_coarse"]
        + lay["tau_metal"]
        + cv2.resize(lay["tau_fine"], (rel.shape[1], rel.shape[0]), interpolation=cv2.INTER_AREA)
    )
    prim = rel * np.exp(-tau_all)
    src = prim * lay["tau_patient_coarse"]
    h, w = rel.shape
    small = (max(w // 4, 1), max(h // 4, 1))
    src_s = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
    px_mm = float(det.pixel_spacing_mm.mean()) * det.rows / small[1]
    scat_s = np.float32(opts.scatter_weight) * cv2.GaussianBlur(
        src_s, (0, 0), opts.scatter_sigma_mm / px_mm, borderType=cv2.BORDER_REFLECT
    )
    scat = cv2.resize(scat_s, (w, h), interpolation=cv2.INTER_LINEAR)
    thick = lay["tau_patient_coarse"] > 1.0
    spr = float(np.median(scat[thick] / np.maximum(prim[thick], 1e-6))) if thick.any() else 0.0
    return scat, spr
