"""Where the station's frames come from: the virtual detector pair or a watched folder.

A *detector source* gives the hardware layer two detectors behind one small
interface: ``start(hardware)``, ``prepare(exam)``, ``arm()``, ``status()``,
``wait_frame(view, exposure_id, timeout)`` and ``close()``.

- :class:`SimDetectors` attaches ``simulator.detectors.VirtualDetectorPair`` to
  the in-process virtual controller (``sim://NAME``): each exposure's actual
  technique, from the controller's trigger line, renders both frames. The
  simulated patient follows the exam being armed (region, and a seed derived
  from the patient id, so a follow-up images the same patient).
- :class:`FolderWatcher` takes the DICOM files a real detector console drops
  into a folder (``--detectors DIR``): ``DIR/A/*.dcm`` and ``DIR/B/*.dcm``, or
  files in ``DIR`` whose names start with ``A`` or ``B``. A file counts once its
  size has stopped changing; files that were there before arming are ignored.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from reconstruction.errors import InputError

log = logging.getLogger("rsa.detectors")
VIEWS = ("A", "B")


def patient_seed(patient_id: str) -> int:
    """A stable simulated patient per patient id (follow-ups image the same person)."""
    return int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:4], "big") % 100_000


class SimDetectors:
    def __init__(
        self, controller_name: str, *, full_resolution: bool = True, seed: int | None = None
    ):
        self.controller_name = controller_name
        self.full_resolution = full_resolution
        self.fixed_seed = seed
        self.pair = None
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def start(self, hardware) -> None:
        import simulator.controller  # noqa: F401  registers sim://

    def _controller(self):
        from simulator.controller import get_controller

        return get_controller(self.controller_name)

    def prepare(self, exam: dict) -> None:
        from simulator.detectors import VirtualDetectorPair

        seed = self.fixed_seed if self.fixed_seed is not None else patient_seed(exam["patient_id"])
        key = (exam["region"], seed)
        with self._lock:
            if key == self._key:
                return
            if self.pair is not None:
                self.pair.detach()
            self.pair = VirtualDetectorPair(
                exam["region"], seed, full_resolution=self.full_resolution
            )
            self.pair.attach(self._controller())
            self._key = key

    def arm(self) -> None:
        with self._lock:
            if self.pair is not None:
                self.pair.arm()

    def segments(self, exam: dict) -> dict | None:
        """The simulated patient's segment definition, in the contract's shape.

        Stands in for the file a physicist prepares from the reference exam:
        the bead positions of each rigid body of this patient.
        """
        from simulator.exam import simulate_exam

        seed = self.fixed_seed if self.fixed_seed is not None else patient_seed(exam["patient_id"])
        probe = simulate_exam(exam["region"], seed, views=(), full_resolution=self.full_resolution)
        return probe.segments_json()

    def status(self) -> dict:
        with self._lock:
            pair = self.pair
        return {
            v: {
                "ready": bool(pair is not None and pair.detectors[v].ready),
                "source": "simulator",
            }
            for v in VIEWS
        }

    def wait_frame(self, view: str, exposure_id, timeout: float):
        end = time.monotonic() + timeout
        with self._lock:
            det = self.pair.detectors[view]
        while True:
            frame = det.wait_for_frame(max(0.01, end - time.monotonic()))
            if exposure_id is None or frame.meta.exposure_id == exposure_id:
                return frame
            log.info("dropping stale frame %s of exposure %s", view, frame.meta.exposure_id)

    def close(self) -> None:
        with self._lock:
            if self.pair is not None:
                self.pair.detach()
                self.pair = None


@dataclass
class FileFrame:
    """A frame a detector console wrote as a DICOM file."""

    view: str
    path: Path
    raw: object

    def to_raw_image(self):
        return self.raw


class FolderWatcher:
    def __init__(self, folder: str | Path, poll_s: float = 0.1):
        self.folder = Path(folder)
        self.poll_s = poll_s
        self._armed_at = 0.0
        self._seen: set[Path] = set()
        self._lock = threading.Lock()

    def start(self, hardware) -> None:
        if not self.folder.is_dir():
            raise InputError(f"{self.folder}: detector folder does not exist")
        self._seen = set(self._files())

    def prepare(self, exam: dict) -> None:
        pass

    def arm(self) -> None:
        with self._lock:
            self._seen = set(self._files())
            self._armed_at = time.time()

    def status(self) -> dict:
        ok = self.folder.is_dir()
        return {v: {"ready": ok, "source": f"folder {self.folder}"} for v in VIEWS}

    def _files(self) -> list[Path]:
        out = []
        for v in VIEWS:
            sub = self.folder / v
            if sub.is_dir():
                out += sub.glob("*.dcm")
        out += [p for p in self.folder.glob("*.dcm") if p.name[:1].upper() in VIEWS]
        return out

    @staticmethod
    def _view_of(p: Path, root: Path) -> str:
        return p.parent.name if p.parent != root else p.name[:1].upper()

    def wait_frame(self, view: str, exposure_id, timeout: float):
        from acquisition.dicom_reader import read_raw_image

        end = time.monotonic() + timeout
        sizes: dict[Path, int] = {}
        while time.monotonic() < end:
            with self._lock:
                new = [
                    p
                    for p in sorted(self._files())
                    if p not in self._seen and self._view_of(p, self.folder) == view
                ]
            for p in new:
                size = p.stat().st_size
                if sizes.get(p) == size and size > 0:  # stopped growing
                    with self._lock:
                        self._seen.add(p)
                    return FileFrame(view, p, read_raw_image(p))
                sizes[p] = size
            time.sleep(self.poll_s)
        raise TimeoutError(f"no DICOM file for view {view} in {self.folder} within {timeout:g} s")

    def close(self) -> None:
        pass


def copy_file_frame(frame: FileFrame, dest: Path) -> None:
    """Keep the console's file as the station's image (byte for byte, atomically)."""
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(frame.path, tmp)
    with open(tmp, "rb") as fh:
        import os

        os.fsync(fh.fileno())
        os.replace(tmp, dest)
