"""Detector readout: quantum noise, and detected quanta to stored pixel values.

``opts`` is any object with ``bits_stored``, ``photometric``, ``transfer`` and
``saturation_quanta`` (a :class:`simulator.render.RenderOptions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from simulator.render import RenderOptions


def randn(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal float32 noise, deterministic in ``seed``.

    OpenCV's generator (thread-local, seeded here) is five times faster than
    numpy's for the 5 MP fields a frame needs.
    """
    cv2.setRNGSeed(int(seed))
    out = np.empty(shape, np.float32)
    cv2.randn(out, 0.0, 1.0)
    return out


def poisson_noise(lam: np.ndarray, rng: np.random.Generator, threshold: float = 30.0):
    """Poisson samples of ``lam`` (float32): Gaussian approximation above ``threshold``.

    Above 30 quanta the normal approximation's error in any moment that matters
    here is below 2%; below it (behind metal, outside the field) the samples are
    exact Poisson.
    """
    out = randn(int(rng.integers(1 << 31)), lam.shape)
    out *= cv2.sqrt(lam)
    out += lam
    if float(lam.min()) < threshold:
        low = np.flatnonzero(lam.ravel() < threshold)
        out.ravel()[low] = rng.poisson(lam.ravel()[low]).astype(np.float32)
    return out


def to_stored(signal: np.ndarray, opts: RenderOptions) -> np.ndarray:
    """Detector output (quanta) to stored values; markers end up bright when displayed."""
    top = float((1 << opts.bits_stored) - 1)
    sat = opts.saturation_quanta
    if opts.transfer == "log":
        floor = 0.5
        g = top / np.log(sat / floor)
        x = np.log(np.clip(signal, floor, sat) / floor) * np.float32(g)  # 0..top, up with dose
    elif opts.transfer == "linear":
        x = np.clip(signal, 0, sat) * np.float32(top / sat)
    else:
        raise ValueError(f"transfer: expected 'log' or 'linear', got {opts.transfer!r}")
    if opts.photometric == "MONOCHROME2":
        x = top - x  # more attenuation -> higher value -> displayed bright
    elif opts.photometric != "MONOCHROME1":
        raise ValueError(
            f"photometric: expected MONOCHROME1 or MONOCHROME2, got {opts.photometric!r}"
        )
    return np.rint(x).astype(np.uint16)


def stored_to_quanta(stored: np.ndarray, opts: RenderOptions) -> np.ndarray:
    """Inverse of :func:`to_stored` (up to quantisation): detected quanta."""
    top = float((1 << opts.bits_stored) - 1)
    x = stored.astype(np.float64)
    if opts.photometric == "MONOCHROME2":
        x = top - x
    if opts.transfer == "log":
        floor = 0.5
        g = top / np.log(opts.saturation_quanta / floor)
        return floor * np.exp(x / g)
    return x * (opts.saturation_quanta / top)
