"""Stand-ins with the same interfaces as the real hardware and numeric core.

For the service's fast API and workflow tests only: they answer instantly and
deterministically, so those tests exercise the workflow, the store and the
HTTP layer without rendering or reconstructing images. The end-to-end tests
use the real simulator (``--simulate``).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acquisition.jsonio import write_bytes_atomic
from acquisition.service.hardware import VIEWS, Hardware, StatusCache
from acquisition.service.processing import Pipeline, sha256_file, tube_skew_check
from reconstruction.image import RawImage


@dataclass
class FakeFrame:
    view: str
    exposure_id: int
    pixels: np.ndarray

    def to_raw_image(self) -> RawImage:
        return RawImage(self.pixels)


class FakeHardware(Hardware):
    """A controller that fires ``expose_after`` s after the first hold while armed."""

    def __init__(self, skew_us: float = 120.0, expose_after: float = 0.05, deliver=True):
        super().__init__()
        self.cache = StatusCache()
        self.cache.update(
            controller={"connected": True, "state": "idle", "url": "fake://"},
            interlocks={k: True for k in ("door", "collimator")},
            tube_heat={"A": 10.0, "B": 10.0},
            detectors={v: {"ready": True, "source": "fake"} for v in VIEWS},
        )
        self.skew_us = skew_us
        self.expose_after = expose_after
        self.deliver = deliver
        self.armed = False
        self.exposure_id = 0
        self.frames: dict[str, list[FakeFrame]] = {v: [] for v in VIEWS}
        self._cv = threading.Condition()
        self.holds = 0
        self.technique = None

    def status(self) -> dict:
        return self.cache.get()

    def set_interlock(self, name: str, closed: bool) -> None:
        self.emit("status", **self.cache.update(interlocks={name: closed}))

    simulated = True

    def simulator_control(self, interlock, closed, hand_switch):
        if interlock is not None:
            self.set_interlock(interlock, closed)
        if hand_switch == "expose" and self.armed:
            self.hold()

    def set_heat(self, tube: str, pct: float) -> None:
        self.emit("status", **self.cache.update(tube_heat={tube: pct}))

    def arm(self, technique: dict) -> None:
        self.technique = technique
        self.armed = True
        self.emit("status", **self.cache.update(controller={"state": "armed"}))

    def disarm(self) -> None:
        self.armed = False
        self.emit("status", **self.cache.update(controller={"state": "idle"}))

    def hold(self) -> None:
        self.holds += 1
        if self.armed:
            self.armed = False
            threading.Timer(self.expose_after, self._fire).start()

    def release(self) -> None:
        pass

    def _fire(self) -> None:
        self.exposure_id += 1
        eid = self.exposure_id
        self.emit("exposure_started", exposure_id=eid)
        t = self.technique or {}
        self.emit(
            "exposure_report",
            exposure_id=eid,
            skew_us=self.skew_us,
            tubes={
                v: {
                    **t.get(v, {}),
                    "mas": t.get(v, {}).get("ma", 0) * t.get(v, {}).get("ms", 0) / 1000.0,
                    "fired": True,
                }
                for v in VIEWS
            },
        )
        if self.deliver:
            with self._cv:
                for v in VIEWS:
                    rng = np.random.default_rng(eid * 10 + ord(v))
                    px = rng.integers(0, 4096, (64, 48), dtype=np.uint16)
                    self.frames[v].append(FakeFrame(v, eid, px))
                self._cv.notify_all()
        self.emit("status", **self.cache.update(controller={"state": "idle"}))

    def fault(self, message: str) -> None:
        self.armed = False
        self.emit("fault", code="test", message=message)

    def wait_frame(self, view: str, exposure_id, timeout: float):
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                for f in self.frames[view]:
                    if exposure_id is None or f.exposure_id == exposure_id:
                        self.frames[view].remove(f)
                        return f
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no frame from detector {view} within {timeout:.0f} s")
                self._cv.wait(left)


class FakePipeline(Pipeline):
    """Instant results in the contract's shapes; files written as .npy."""

    def __init__(self, verdict_pass: bool = True):
        super().__init__(geometry=lambda region: (None, None))
        self.verdict_pass = verdict_pass

    def write_pair(self, frames: dict, folder: Path, exam: dict, attempt: int) -> dict:
        out = {}
        for v in VIEWS:
            buf = io.BytesIO()
            np.save(buf, frames[v].to_raw_image().pixels)
            p = folder / f"{v}.npy"
            write_bytes_atomic(p, buf.getvalue())
            out[v] = {"path": str(p), "sha256": sha256_file(p)}
        return out

    def read_raw(self, path: str):
        return RawImage(np.load(path))

    def cage_check(self, region: str, view: str, raw):
        return {
            "view": view,
            "cage_markers_expected": 10,
            "cage_markers_found": 10,
            "passed": True,
            "value": 1.0,
            "limit": 0.8,
            "message": "10 of 10 cage markers found",
            "missing": [],
        }, True

    def reconstruct(self, region: str, raws: dict):
        checks = [
            {
                "code": "marker_count",
                "view": None,
                "passed": self.verdict_pass,
                "value": 6 if self.verdict_pass else 1,
                "limit": 3,
                "message": "patient markers",
            }
        ]
        return {
            "views": {v: {"focus_mm": [0, 0, 1000], "calibration_rms_px": 0.1} for v in VIEWS},
            "markers": [],
            "ambiguous": [],
            "qc": {"verdict": "pass" if self.verdict_pass else "retake", "checks": checks},
        }, raws

    def migrate(self, segments: dict, reference: dict, followup: dict) -> dict:
        return {"method": "consistent-marker", "motion": None, "qc": {"verdict": "retake"}}

    def cage_overlay_png(self, raw, res) -> bytes:
        return _png(raw.pixels)

    def result_overlay_png(self, raw, res, view, result=None) -> bytes:
        return _png(raw.pixels)


def _png(px: np.ndarray) -> bytes:
    import cv2

    _ok, buf = cv2.imencode(".png", (px >> 4).astype(np.uint8))
    return buf.tobytes()


__all__ = ["FakeFrame", "FakeHardware", "FakePipeline", "tube_skew_check"]
