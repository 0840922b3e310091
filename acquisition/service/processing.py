"""What the station does with a stereo pair: files, cage checks, reconstruction, QC.

:class:`Pipeline` wraps the numeric core (``reconstruction``) for the station:
it holds the station and cage geometry of each region, and turns results into
overlay PNGs (drawn by ``reconstruction.overlay``, encoded with OpenCV).
:func:`exam_result` folds the exposure report's tube start skew into the QC as
the contract's ``tube_skew`` check (CONTRACT.md, "Station exam result").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquisition.jsonio import write_bytes_atomic
from acquisition.jsonio import write_json as _write_json
from reconstruction.qc import DEFAULT_LIMITS, QCCheck, QCLimits

VIEWS = ("A", "B")


@dataclass
class RawFrame:
    """A frame rebuilt from a stored file (recovery): only its pixels are known."""

    raw: Any

    def to_raw_image(self):
        return self.raw


def raw_of(frame) -> Any:
    """The :class:`reconstruction.image.RawImage` of a detector frame."""
    return frame.to_raw_image()


def read_raw(path: str | os.PathLike):
    from acquisition.dicom_reader import read_raw_image

    return read_raw_image(path)


def write_file(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data)


def write_json(path: Path, obj: Any) -> None:
    _write_json(path, obj)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_pair(frames: dict, folder: Path, exam: dict, attempt: int) -> dict:
    """Write both frames as linked DX DICOM files, atomically; return path and SHA-256 of each.

    The writer writes each file under a temporary name, fsyncs and renames it
    (``jsonio.write_bytes_atomic``); the folder is then fsynced, so after a
    crash either the whole file is there under its name or nothing is. Frames
    that arrived as DICOM files (folder watcher) are kept byte for byte.
    """
    from acquisition.service.detectors import FileFrame, copy_file_frame

    folder.mkdir(parents=True, exist_ok=True)
    final = {v: folder / f"{v}.dcm" for v in VIEWS}
    if all(isinstance(frames[v], FileFrame) for v in VIEWS):
        for v in VIEWS:
            copy_file_frame(frames[v], final[v])
    else:
        from acquisition.dicom_writer import write_dx_pair

        write_dx_pair(
            {v: frames[v] for v in VIEWS},
            final,
            patient={
                "id": exam["patient_id"],
                "name": exam["patient_name"],
                "birth_date": (exam.get("birth_date") or "").replace("-", ""),
            },
            study={
                "region": exam["region"],
                "study_id": f"RSA{exam['id']}",
                "accession_number": f"RSA{exam['id']}",
                "description": f"RSA {exam['region']} ({exam['procedure_code']})",
            },
            series_number=attempt,
        )
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return {v: {"path": str(final[v]), "sha256": sha256_file(final[v])} for v in VIEWS}


def tube_skew_check(skew_us: float | None, limits: QCLimits = DEFAULT_LIMITS) -> QCCheck:
    """The contract's ``tube_skew`` check: |start skew between the tubes| <= limit (µs)."""
    if skew_us is None:
        return QCCheck(
            "tube_skew", None, False, None, limits.tube_skew, "the controller reported no skew"
        )
    value = abs(float(skew_us))
    ok = value <= limits.tube_skew
    msg = f"tubes started {value:.0f} µs apart (limit {limits.tube_skew:.0f} µs)"
    if not ok:
        msg += ": the two views are not simultaneous, retake"
    return QCCheck("tube_skew", None, ok, value, limits.tube_skew, msg)


def exam_result(recon: dict, report: dict, limits: QCLimits = DEFAULT_LIMITS) -> dict:
    """The station exam result: reconstruction result + exposure skew + ``tube_skew`` check."""
    out = dict(recon)
    skew = report.get("skew_us")
    check = tube_skew_check(skew, limits).to_dict()
    checks = [c for c in recon.get("qc", {}).get("checks", []) if c.get("code") != "tube_skew"]
    checks.append(check)
    out["qc"] = {
        "verdict": "pass" if checks and all(c["passed"] for c in checks) else "retake",
        "checks": checks,
    }
    out["tube_skew_us"] = skew
    out["exposure"] = report
    return out


class Pipeline:
    """The numeric core, bound to the station and cage geometry of each region."""

    def __init__(self, geometry):
        # geometry: callable region -> (reconstruction.geometry.Station, Cage)
        self.geometry = geometry

    def write_pair(self, frames: dict, folder: Path, exam: dict, attempt: int) -> dict:
        return write_pair(frames, folder, exam, attempt)

    def read_raw(self, path: str):
        return read_raw(path)

    def cage_check(self, region: str, view: str, raw) -> tuple[dict, Any]:
        """The contract cage-check dict, and the result object (for the overlay)."""
        from reconstruction.cagecheck import cage_check

        station, cage = self.geometry(region)
        res = cage_check(station, cage, view, raw)
        return res.to_dict(), res

    def reconstruct(self, region: str, raws: dict) -> tuple[dict, Any]:
        from reconstruction.pipeline import reconstruct

        station, cage = self.geometry(region)
        res = reconstruct(station, cage, raws)
        return res.to_dict(), res

    def migrate(self, segments: dict, reference: dict, followup: dict) -> dict:
        from reconstruction.migration import migrate

        return migrate(segments, reference, followup).to_dict()

    def cage_overlay_png(self, raw, res) -> bytes:
        from reconstruction.overlay import draw_cage_check

        return png_bytes(draw_cage_check(raw, res))

    def result_overlay_png(self, raw, res, view: str, result: dict | None = None) -> bytes:
        from reconstruction.overlay import draw_reconstruction

        rgb = draw_reconstruction(raw, res, view)
        if result is not None:
            rgb = verdict_banner(rgb, result, view)
        return png_bytes(rgb)


def verdict_banner(rgb, result: dict, view: str):
    """The station's verdict and the reasons of every failed check under the image."""
    import cv2
    import numpy as np

    qc = result["qc"]
    failed = [c for c in qc["checks"] if not c["passed"] and c["view"] in (None, view)]
    lines = [f"station verdict: {qc['verdict'].upper()}"] + [
        f"{c['code']}{' ' + c['view'] if c['view'] else ''}: {c['message']}" for c in failed
    ]
    lines = [ln.encode("ascii", "replace").decode() for ln in lines]  # Hershey fonts: ASCII
    h = 10 + 20 * len(lines)
    band = np.full((h, rgb.shape[1], 3), 24, np.uint8)
    colour = (40, 200, 60) if qc["verdict"] == "pass" else (230, 60, 50)
    for i, ln in enumerate(lines):
        cv2.putText(
            band,
            ln[:160],
            (8, 22 + 20 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            colour if i == 0 else (235, 235, 235),
            1,
            cv2.LINE_AA,
        )
    return np.vstack([rgb, band])


def png_bytes(rgb) -> bytes:
    """PNG of an RGB uint8 array (OpenCV wants BGR)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
