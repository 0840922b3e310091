"""Overlays for the technician: what was detected, identified and missed.

Pure functions from results to an RGB ``uint8`` array (no files); the caller
encodes it (PNG) and writes it. Colours: identified cage markers green,
expected but missing cage markers red (a ring where the shadow should be),
other detected blobs yellow, patient markers cyan with their id, ambiguous
beads magenta.
"""

from __future__ import annotations

import cv2
import numpy as np

from reconstruction.image import RawImage

GREEN = (0, 200, 0)
RED = (255, 40, 40)
YELLOW = (255, 210, 0)
CYAN = (0, 220, 255)
MAGENTA = (255, 0, 255)


def display_rgb(image: RawImage | np.ndarray, max_side: int = 1200) -> tuple[np.ndarray, float]:
    """A windowed 8-bit RGB rendering of the image (markers bright), reduced to ``max_side``.

    Returns the RGB array and the scale from image pixels to overlay pixels.
    """
    from reconstruction.detect import reduced_display

    if isinstance(image, RawImage):
        rows, cols = image.pixels.shape
        k = max(1, int(np.ceil(max(rows, cols) / max_side)))
        small = reduced_display(image, k)
    else:
        rows, cols = image.shape
        k = max(1, int(np.ceil(max(rows, cols) / max_side)))
        small = cv2.resize(
            image.astype(np.float32), (cols // k, rows // k), interpolation=cv2.INTER_AREA
        )
    lo, hi = np.percentile(small[::2, ::2], [0.5, 99.5])
    u8 = np.clip((small - lo) * (255.0 / max(hi - lo, 1e-9)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_GRAY2RGB), 1.0 / k


def _pt(rc: np.ndarray, s: float) -> tuple[int, int]:
    # image position [row, col] at pixel centres -> cv2 point (x, y) in the overlay
    return round((rc[1] + 0.5) * s - 0.5), round((rc[0] + 0.5) * s - 0.5)


FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_SCALE = 0.5
LEGEND_GAP = 6  # px of panel between two legend lines, so outlines never touch


def legend_line_boxes(
    items: list[tuple[str, tuple[int, int, int]]], scale: float = LEGEND_SCALE
) -> list[tuple[int, int, int, int]]:
    """Rows of the legend lines: ``(top, bottom, baseline_y, width)`` of each, top to bottom.

    Each line's height is measured with ``cv2.getTextSize`` (ascent + descent + the 3 px
    outline), so a title with descenders never runs into the next line.
    """
    boxes = []
    top = LEGEND_GAP
    for text, _ in items:
        (w, h), base = cv2.getTextSize(text, FONT, scale, 3)
        baseline_y = top + h + 1
        bottom = baseline_y + base + 1
        boxes.append((top, bottom, baseline_y, w))
        top = bottom + LEGEND_GAP
    return boxes


def _legend(rgb: np.ndarray, items: list[tuple[str, tuple[int, int, int]]]) -> None:
    boxes = legend_line_boxes(items)
    width = max(b[3] for b in boxes) + 16
    bottom = boxes[-1][1] + LEGEND_GAP
    # a darkened panel under the text keeps it readable over bright bone and markers
    panel = rgb[:bottom, :width]
    panel[...] = (panel * 0.35).astype(np.uint8)
    for (text, colour), (_, _, y, _) in zip(items, boxes, strict=True):
        cv2.putText(rgb, text, (8, y), FONT, LEGEND_SCALE, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(rgb, text, (8, y), FONT, LEGEND_SCALE, colour, 1, cv2.LINE_AA)


def draw_cage_check(image: RawImage | np.ndarray, result) -> np.ndarray:
    """Overlay of a :class:`reconstruction.cagecheck.CageCheckResult`.

    Green: identified cage markers; red: expected but missing; yellow: other blobs.
    """
    rgb, s = display_rgb(image)
    r = max(4, round(6 * s * 2))
    ident = set(result.det_idx.tolist())
    for j, rc in enumerate(result.detections_rc):
        if j not in ident:
            cv2.circle(rgb, _pt(rc, s), max(3, r // 2), YELLOW, 1, cv2.LINE_AA)
    for j in result.det_idx:
        cv2.circle(rgb, _pt(result.detections_rc[j], s), r, GREEN, 2, cv2.LINE_AA)
    found = np.zeros(len(result.expected_mask), bool)
    found[result.marker_idx] = True
    for i in np.flatnonzero(result.expected_mask & ~found):
        p = _pt(result.predicted_rc[i], s)
        cv2.circle(rgb, p, r + 2, RED, 2, cv2.LINE_AA)
        cv2.putText(
            rgb,
            result.marker_ids[i],
            (p[0] + r + 2, p[1]),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            RED,
            1,
            cv2.LINE_AA,
        )
    status = "PASS" if result.passed else "RETAKE"
    _legend(
        rgb,
        [
            (f"view {result.view}: {result.message} ({status})", GREEN if result.passed else RED),
            ("green identified, red missing, yellow other blobs", (255, 255, 255)),
        ],
    )
    return rgb


def draw_reconstruction(image: RawImage | np.ndarray, result, view: str) -> np.ndarray:
    """Overlay of one view of a :class:`reconstruction.pipeline.ReconstructionResult`.

    Green: identified cage markers; red: expected cage markers not found; yellow:
    other blobs; cyan: the patient's markers with their ids; magenta: ambiguous.
    """
    rgb, s = display_rgb(image)
    v = result.views[view]
    det = v.detections
    r = max(4, round(6 * s * 2))
    used = set(v.found_det_idx.tolist())
    used |= {m.det_idx[view] for m in result.markers}
    for j, rc in enumerate(det.rc):
        if j not in used:
            cv2.circle(rgb, _pt(rc, s), max(3, r // 2), YELLOW, 1, cv2.LINE_AA)
    for j in v.found_det_idx:
        cv2.circle(rgb, _pt(det.rc[j], s), r, GREEN, 2, cv2.LINE_AA)
    for i in v.confirmed_marker_idx:
        # seen where the calibration puts it, too faint to be measured
        cv2.circle(rgb, _pt(v.predicted_rc[i], s), r, GREEN, 1, cv2.LINE_AA)
    for i in np.flatnonzero(v.expected & ~v.found_mask):
        cv2.circle(rgb, _pt(v.predicted_rc[i], s), r + 2, RED, 2, cv2.LINE_AA)
    for m in result.markers:
        p = _pt(m.image_px[view], s)
        cv2.circle(rgb, p, r, CYAN, 2, cv2.LINE_AA)
        cv2.putText(
            rgb,
            m.id,
            (p[0] + r + 2, p[1] - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            CYAN,
            1,
            cv2.LINE_AA,
        )
    for a in result.ambiguous:
        if view in a["image_px"]:
            p = _pt(np.array(a["image_px"][view]), s)
            cv2.drawMarker(rgb, p, MAGENTA, cv2.MARKER_TILTED_CROSS, 2 * r, 2)
    _legend(
        rgb,
        [
            (
                f"view {view}: {v.n_found} of {v.n_expected} cage markers, "
                f"{len(result.markers)} patient markers, verdict {result.verdict}",
                GREEN if result.verdict == "pass" else RED,
            ),
            (
                "green cage (thin: faint, seen at its place), red missing, cyan patient,"
                " magenta ambiguous",
                (255, 255, 255),
            ),
        ],
    )
    return rgb
