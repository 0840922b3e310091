"""The station at work: one object that runs exams on the hardware.

Both ``rsa-station serve`` (through the HTTP routes) and ``rsa-station exam``
(headless) drive exams through this class, so the command-line exam is the
same code path as the technician's page. It owns:

- the hardware (:class:`acquisition.service.hardware.Hardware`: the single
  owner of the serial port, and the detectors),
- the exam store and audit log,
- two worker pools: ``io`` for waiting on frames and writing files, ``cpu``
  (two threads: the machine has two cores) for cage checks and
  reconstruction, so nothing blocking runs on the web server's event loop,
- the live-status :class:`~acquisition.service.events.EventBus`.

Every step of an exam is a :mod:`~acquisition.service.workflow` transition
committed with its audit entry; refused steps raise ``WorkflowError``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from acquisition.service import processing
from acquisition.service.events import EventBus
from acquisition.service.regions import PROCEDURE_CODES, preset_technique
from acquisition.service.store import Store
from acquisition.service.workflow import ACTIVE, State, WorkflowError, next_state

log = logging.getLogger("rsa.station")

VIEWS = ("A", "B")
SYSTEM = "station"  # the audit log's operator for what the station does by itself


class Runtime:
    def __init__(
        self,
        data_dir: str | Path,
        hardware,
        pipeline: processing.Pipeline,
        *,
        bus: EventBus | None = None,
        frame_timeout_s: float = 20.0,
        pacs=None,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir / "station.db")
        self.bus = bus or EventBus()
        self.hw = hardware
        self.pipeline = pipeline
        self.frame_timeout_s = frame_timeout_s
        self.pacs = pacs  # acquisition.service.pacs.PacsNode or None
        self.io = ThreadPoolExecutor(4, thread_name_prefix="rsa-io")
        self.cpu = ThreadPoolExecutor(2, thread_name_prefix="rsa-cpu")
        self._lock = threading.RLock()  # serialises workflow decisions on the active exam
        self._hold_operator: str | None = None
        self._pending: dict[int, Future] = {}
        self._closed = False
        self.hw.set_listener(self._on_hw_event)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.hw.start()
        self.recover()
        self.bus.publish("status", **self.hw.status())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.hw.close()
        finally:
            self.io.shutdown(wait=True, cancel_futures=True)
            self.cpu.shutdown(wait=True, cancel_futures=True)
            self.store.close()

    def recover(self) -> None:
        """Bring exams left mid-step by a crash or a kill back to a safe state.

        The controller does not stay armed across a restart of its host (it
        disarms when the link's heartbeat stops), so an armed or exposing exam
        returns to ``ready``; an attempt whose two images are on disk is
        processed again; one without them is recorded as aborted.
        """
        for exam in self.store.exams(limit=1000):
            st = exam["state"]
            if st not in ACTIVE:
                continue
            eid = exam["id"]
            last = exam["attempts"][-1] if exam["attempts"] else None
            if st == State.ARMED:
                self.store.step(eid, "disarm", SYSTEM, {"reason": "station restarted"})
            elif st == State.EXPOSING or (st == State.ACQUIRING and not _has_images(last)):
                self.store.step(
                    eid,
                    "exposure_aborted",
                    SYSTEM,
                    {"reason": "station restarted before both frames were stored"},
                    attempt_updates=(-1, {"status": "aborted", "error": "station restarted"})
                    if last and last["status"] == "exposing"
                    else None,
                )
            else:  # images stored: finish the work from the files
                if st == State.ACQUIRING:
                    self.store.step(eid, "frames_stored", SYSTEM, {"reason": "recovery"})
                self.store.record(SYSTEM, "processing_resumed", eid, {"attempt": last["number"]})
                self._pending[eid] = self.io.submit(self._process_from_files, eid, last["number"])

    # ------------------------------------------------------------------ queries
    def status(self) -> dict:
        st = self.hw.status()
        act = self.store.active_exam()
        st["active_exam"] = act["id"] if act else None
        st["simulated"] = bool(self.hw.simulated)
        return st

    def exam(self, exam_id: int) -> dict:
        e = self.store.exam(exam_id)
        e["actions"] = _actions(e)
        return e

    def attempt_dir(self, exam_id: int, number: int) -> Path:
        return self.data_dir / "exams" / f"{exam_id:06d}" / f"attempt-{number:02d}"

    # ------------------------------------------------------------------ operator steps
    def register(self, operator: str, p: dict) -> dict:
        region = p["region"]
        technique = p.get("technique") or preset_technique(region)
        exam = self.store.create_exam(
            operator,
            patient_id=p["patient_id"],
            patient_name=p["patient_name"],
            birth_date=p.get("birth_date"),
            region=region,
            procedure_code=PROCEDURE_CODES[region],
            reference_exam_id=p.get("reference_exam_id"),
            series_length=p.get("series_length", 1),
            technique=technique,
            segments=p.get("segments"),
        )
        self._publish_exam(exam)
        return self.exam(exam["id"])

    def set_technique(self, operator: str, exam_id: int, technique: dict) -> dict:
        old = self.store.exam(exam_id)["technique"]
        exam = self.store.step(
            exam_id,
            "set_technique",
            operator,
            {"requested": technique, "previous": old},
            updates={"technique": technique},
        )
        self._publish_exam(exam)
        return self.exam(exam_id)

    def arm(self, operator: str, exam_id: int) -> dict:
        with self._lock:
            exam = self.store.exam(exam_id)
            next_state(exam["state"], "arm")  # refuse out-of-order first
            busy = self.store.active_exam()
            if busy is not None and busy["id"] != exam_id:
                raise WorkflowError(
                    f"The station is busy with exam {busy['id']} ({busy['state']}); "
                    "finish or disarm it first."
                )
            self.hw.prepare(exam)
            reasons = self.hw.arm_refusals(exam["technique"])
            if reasons:
                self.store.record(operator, "arm_refused", exam_id, {"reasons": reasons})
                raise WorkflowError("Arming refused: " + "; ".join(reasons) + ".")
            try:
                self.hw.arm(exam["technique"])
            except Exception as exc:  # the board (or a detector) said no: its reason, on screen
                self.store.record(operator, "arm_refused", exam_id, {"reasons": [str(exc)]})
                raise WorkflowError(f"Arming refused: {str(exc).rstrip('.')}.") from None
            exam = self.store.step(
                exam_id, "arm", operator, {"requested_technique": exam["technique"]}
            )
        self._publish_exam(exam)
        return self.exam(exam_id)

    def disarm(self, operator: str, exam_id: int) -> dict:
        with self._lock:
            next_state(self.store.exam(exam_id)["state"], "disarm")
            self.hw.disarm()
            exam = self.store.step(exam_id, "disarm", operator)
        self._publish_exam(exam)
        return self.exam(exam_id)

    def hold(self, operator: str, exam_id: int) -> dict:
        """The software hand switch's keep-alive: forwarded to the board, which decides."""
        exam = self.store.exam(exam_id)
        next_state(exam["state"], "hold")
        if self._hold_operator is None:
            self._hold_operator = operator
            self.store.record(operator, "hold_to_expose_pressed", exam_id, {})
        self.hw.hold()
        return {"exam_id": exam_id, "state": exam["state"]}

    def release(self, operator: str, exam_id: int) -> dict:
        exam = self.store.exam(exam_id)
        self.hw.release()
        if self._hold_operator is not None:
            self._hold_operator = None
            self.store.record(operator, "hold_to_expose_released", exam_id, {})
        return {"exam_id": exam_id, "state": exam["state"]}

    def retake(self, operator: str, exam_id: int, reason: str = "") -> dict:
        exam = self.store.exam(exam_id)
        last = _last_processed(exam)
        exam = self.store.step(
            exam_id,
            "retake",
            operator,
            {"reason": reason, "superseded_attempt": last["number"] if last else None},
            attempt_updates=(last["number"], {"status": "superseded"}) if last else None,
        )
        self._publish_exam(exam)
        return self.exam(exam_id)

    def accept(self, operator: str, exam_id: int, attempt: int | None = None) -> dict:
        exam = self.store.exam(exam_id)
        next_state(exam["state"], "accept")
        kept = _kept_pairs(exam)
        if attempt is not None:
            chosen = next((a for a in exam["attempts"] if a["number"] == attempt), None)
            if chosen is None or chosen["status"] not in ("processed", "superseded"):
                raise WorkflowError(f"Attempt {attempt} has no result and cannot be used.")
            kept[chosen["pair_index"]] = chosen
        used = [kept[i]["number"] for i in sorted(kept)]
        migration = kept[max(kept)].get("migration") if kept else None
        exam = self.store.step(
            exam_id,
            "accept",
            operator,
            {"used_attempts": used},
            updates={"used_attempts": used, "migration": migration},
        )
        self._publish_exam(exam)
        if self.pacs is not None:
            self._pending[exam_id] = self.io.submit(self.export, SYSTEM, exam_id)
        return self.exam(exam_id)

    def export(self, operator: str, exam_id: int) -> dict:
        """Send the used images of a completed exam to the PACS (C-STORE); audited."""
        from acquisition.service import pacs

        exam = self.store.exam(exam_id)
        if self.pacs is None:
            raise WorkflowError("No PACS is configured for this station.")
        if exam["state"] != State.COMPLETED:
            raise WorkflowError("Only a completed exam is sent to the PACS.")
        paths = [
            a["images"][v]["path"]
            for a in exam["attempts"]
            if a["number"] in exam["used_attempts"]
            for v in VIEWS
        ]
        self.bus.publish(
            "progress", exam_id=exam_id, stage="pacs", message=f"sending to {self.pacs}"
        )
        try:
            stored = pacs.send(self.pacs, paths)
            value = {"node": str(self.pacs), "status": "sent", "instances": stored}
            self.store.set_exam_field(exam_id, "pacs", value, operator, "pacs_sent", value)
            msg = f"{len(stored)} images stored on {self.pacs}"
        except Exception as exc:
            value = {"node": str(self.pacs), "status": "failed", "error": str(exc)}
            self.store.set_exam_field(exam_id, "pacs", value, operator, "pacs_failed", value)
            msg = f"PACS export failed: {exc}"
        self.bus.publish("progress", exam_id=exam_id, stage="pacs", message=msg)
        self._publish_exam(self.store.exam(exam_id))
        return value

    def cancel(self, operator: str, exam_id: int, reason: str = "") -> dict:
        exam = self.store.step(exam_id, "cancel", operator, {"reason": reason})
        self._publish_exam(exam)
        return self.exam(exam_id)

    # ------------------------------------------------------------------ hardware events
    def _on_hw_event(self, kind: str, data: dict) -> None:
        """Called on the serial owner's thread: keep it short, hand work to the pools."""
        try:
            if kind == "status":
                self.bus.publish("status", **data)
                return
            act = self.store.active_exam()
            eid = act["id"] if act else None
            if kind in ("fault", "interlock", "hand_switch", "link_lost"):
                self.store.record(SYSTEM, kind, eid, data)
                self.bus.publish(kind, exam_id=eid, **data)
            if act is None:
                return
            if kind == "exposure_started" and act["state"] == State.ARMED:
                self._publish_exam(self.store.step(eid, "exposure_started", SYSTEM, data))
                self.bus.publish("progress", exam_id=eid, stage="exposing", message="X-ray on")
            elif kind == "exposure_report" and act["state"] in (State.ARMED, State.EXPOSING):
                self._on_report(act, data)
            elif (kind == "aborted" and act["state"] in (State.ARMED, State.EXPOSING)) or (
                kind in ("fault", "link_lost") and act["state"] == State.ARMED
            ):
                rep = data.get("report")
                attempt = None
                if rep is not None:
                    attempt = {
                        "pair_index": len(_kept_pairs(act)),
                        "status": "aborted",
                        "exposure_id": rep.get("exposure_id"),
                        "requested": act["technique"],
                        "report": rep,
                    }
                reason = data.get("message") or data.get("reason") or kind
                exam = self.store.step(
                    eid,
                    "exposure_aborted",
                    SYSTEM,
                    {"reason": reason, **data},
                    new_attempt=attempt,
                )
                self._publish_exam(exam)
                self.bus.publish("progress", exam_id=eid, stage="aborted", message=reason)
        except WorkflowError as exc:  # an event that no longer fits: record, never crash
            log.warning("hardware event %s ignored: %s", kind, exc)
            self.store.record(SYSTEM, "event_ignored", None, {"kind": kind, "why": str(exc)})
        except Exception:
            log.exception("hardware event %s failed", kind)

    def _on_report(self, exam: dict, report: dict) -> None:
        eid = exam["id"]
        pair = len(_kept_pairs(exam))
        fired = all(report.get("tubes", {}).get(v, {}).get("fired", True) for v in VIEWS)
        requested = exam["technique"]
        exam = self.store.step(
            eid,
            "exposure_report",
            SYSTEM,
            {"requested_technique": requested, "report": report},
            new_attempt={
                "pair_index": pair,
                "status": "exposing",
                "exposure_id": report.get("exposure_id"),
                "requested": requested,
                "report": report,
            },
        )
        number = exam["attempts"][-1]["number"]
        self._publish_exam(exam)
        self.bus.publish(
            "progress",
            exam_id=eid,
            attempt=number,
            stage="exposed",
            message=f"exposure {report.get('exposure_id')} done; skew {report.get('skew_us')} µs",
        )
        if not fired:
            self._abort_attempt(eid, "a tube did not fire")
            return
        self._pending[eid] = self.io.submit(self._acquire, eid, number, report, time.monotonic())

    # ------------------------------------------------------------------ acquisition
    def _acquire(self, exam_id: int, number: int, report: dict, t_report: float) -> None:
        exam = self.store.exam(exam_id)
        region = exam["region"]
        waits = {
            v: self.io.submit(
                self.hw.wait_frame, v, report.get("exposure_id"), self.frame_timeout_s
            )
            for v in VIEWS
        }
        frames: dict[str, Any] = {}
        checks: dict[str, Future] = {}
        arrived: dict[str, float] = {}
        try:
            for v in VIEWS:
                frames[v] = waits[v].result()
                arrived[v] = time.monotonic()
                self.bus.publish(
                    "progress",
                    exam_id=exam_id,
                    attempt=number,
                    stage="frame",
                    view=v,
                    message=f"frame {v} received",
                )
                checks[v] = self.cpu.submit(
                    self._cage_check, exam_id, number, region, v, frames[v], arrived[v]
                )
        except Exception as exc:
            self._abort_attempt(exam_id, f"detector frame missing: {exc}")
            return
        # Reconstruction starts from the frames in memory while the images are
        # written; the exam still advances only once they are on disk.
        raws = {v: processing.raw_of(frames[v]) for v in VIEWS}
        t_frames = max(arrived.values())
        recon = self.cpu.submit(self.pipeline.reconstruct, region, raws)
        adir = self.attempt_dir(exam_id, number)
        try:
            images = self.pipeline.write_pair(frames, adir, exam, number)
        except Exception as exc:
            log.exception("writing the images failed")
            self._abort_attempt(exam_id, f"the images could not be written: {exc}")
            return
        exam = self.store.step(
            exam_id,
            "frames_stored",
            SYSTEM,
            {"attempt": number, "images": images},
            attempt_updates=(number, {"status": "acquired", "images": images}),
        )
        self._publish_exam(exam)
        cage = {v: checks[v].result() for v in VIEWS}
        self._process(exam_id, number, raws, report, cage, t_report, t_frames, recon)

    def _cage_check(self, exam_id, number, region, view, frame, t_arrived) -> dict:
        self.bus.publish(
            "progress",
            exam_id=exam_id,
            attempt=number,
            stage="cage_check",
            view=view,
            message=f"cage check of view {view}",
        )
        obj = raw = None
        try:
            raw = processing.raw_of(frame)
            check, obj = self.pipeline.cage_check(region, view, raw)
        except Exception as exc:
            log.exception("cage check failed")
            check = {"view": view, "passed": False, "message": f"cage check failed: {exc}"}
        check["latency_s"] = round(time.monotonic() - t_arrived, 4)
        self._merge_cage_check(exam_id, number, view, check)
        self.bus.publish("cage_check", exam_id=exam_id, attempt=number, **check)
        if obj is not None:  # the overlay comes after the verdict is on screen
            try:
                png = self.pipeline.cage_overlay_png(raw, obj)
                processing.write_file(self.attempt_dir(exam_id, number) / f"cage-{view}.png", png)
                self.bus.publish(
                    "overlay", exam_id=exam_id, attempt=number, name=f"cage-{view}.png"
                )
            except Exception:
                log.exception("cage overlay failed")
        return check

    def _merge_cage_check(self, exam_id: int, number: int, view: str, check: dict) -> None:
        with self.store.tx() as c:
            row = c.execute(
                "SELECT cage_checks FROM attempts WHERE exam_id=? AND number=?", (exam_id, number)
            ).fetchone()
            cc = json.loads(row[0]) if row and row[0] else {}
            cc[view] = check
            c.execute(
                "UPDATE attempts SET cage_checks=? WHERE exam_id=? AND number=?",
                (json.dumps(cc), exam_id, number),
            )

    def _process_from_files(self, exam_id: int, number: int) -> None:
        exam = self.store.exam(exam_id)
        att = next(a for a in exam["attempts"] if a["number"] == number)
        raws = {v: self.pipeline.read_raw(att["images"][v]["path"]) for v in VIEWS}
        cage = att.get("cage_checks") or {}
        for v in VIEWS:
            if v not in cage:
                cage[v] = self._cage_check(
                    exam_id, number, exam["region"], v, processing.RawFrame(raws[v]), 0.0
                )
        self._process(exam_id, number, raws, att["report"] or {}, cage, time.monotonic())

    def _process(
        self, exam_id, number, raws, report, cage, t_report, t_frames=None, recon=None
    ) -> None:
        """Reconstruction, station QC, migration; store the verdict, then draw the overlays."""
        exam = self.store.exam(exam_id)
        self.bus.publish(
            "progress",
            exam_id=exam_id,
            attempt=number,
            stage="reconstruction",
            message="reconstructing",
        )
        adir = self.attempt_dir(exam_id, number)
        try:
            if recon is None:
                recon = self.cpu.submit(self.pipeline.reconstruct, exam["region"], raws)
            rdict, obj = recon.result()
            result = processing.exam_result(rdict, report)
            now = time.monotonic()
            result["timing"] = {  # seconds, this station, this exposure
                "report_to_frames_s": None if t_frames is None else round(t_frames - t_report, 3),
                "frames_to_qc_s": None if t_frames is None else round(now - t_frames, 3),
                "report_to_qc_s": round(now - t_report, 3),
                "cage_check_s": {v: (cage.get(v) or {}).get("latency_s") for v in VIEWS},
            }
            migration = None
            if exam["reference_exam_id"] is not None:
                self.bus.publish(
                    "progress",
                    exam_id=exam_id,
                    attempt=number,
                    stage="migration",
                    message="migration against the reference exam",
                )
                migration = self._migration(exam, result)
            processing.write_json(adir / "result.json", result)
            fields = {"status": "processed", "result": result, "migration": migration}
            err = None
        except Exception as exc:
            log.exception("processing failed")
            fields = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            err = str(exc)
        with self._lock:
            exam = self.store.exam(exam_id)
            kept = len(_kept_pairs(exam)) + (1 if err is None else 0)
            action = "pair_done" if err is None and kept < exam["series_length"] else "processed"
            exam = self.store.step(
                exam_id,
                action,
                SYSTEM,
                {
                    "attempt": number,
                    "verdict": fields.get("result", {}).get("qc", {}).get("verdict"),
                    "error": err,
                },
                attempt_updates=(number, fields),
            )
        self._publish_exam(exam)
        self.bus.publish(
            "progress",
            exam_id=exam_id,
            attempt=number,
            stage="done",
            message="verdict ready" if err is None else f"processing failed: {err}",
        )
        if err is None:
            for v in VIEWS:  # the verdict is on screen; the pictures follow
                try:
                    png = self.pipeline.result_overlay_png(raws[v], obj, v, fields["result"])
                    processing.write_file(adir / f"result-{v}.png", png)
                    self.bus.publish(
                        "overlay", exam_id=exam_id, attempt=number, name=f"result-{v}.png"
                    )
                except Exception:
                    log.exception("result overlay failed")

    def _migration(self, exam: dict, result: dict) -> dict:
        ref = self.store.exam(exam["reference_exam_id"])
        segments = exam.get("segments") or ref.get("segments") or self.hw.default_segments(ref)
        if not segments:
            return {"available": False, "message": "no segment definition for this patient"}
        used = ref["used_attempts"]
        ref_att = next(a for a in ref["attempts"] if a["number"] == used[0])
        return self.pipeline.migrate(segments, ref_att["result"], result)

    def _abort_attempt(self, exam_id: int, reason: str) -> None:
        exam = self.store.step(
            exam_id,
            "exposure_aborted",
            SYSTEM,
            {"reason": reason},
            attempt_updates=(-1, {"status": "aborted", "error": reason}),
        )
        self._publish_exam(exam)
        self.bus.publish("progress", exam_id=exam_id, stage="aborted", message=reason)

    def wait_idle(self, exam_id: int, timeout: float = 60.0) -> None:
        """Block until the background work of ``exam_id`` has finished (tests, CLI)."""
        fut = self._pending.get(exam_id)
        if fut is not None:
            fut.result(timeout)

    def _publish_exam(self, exam: dict) -> None:
        self.bus.publish(
            "exam",
            exam_id=exam["id"],
            state=exam["state"],
            actions=_actions(exam),
            attempts=len(exam["attempts"]),
        )


def _has_images(att: dict | None) -> bool:
    return bool(att and all(v in (att.get("images") or {}) for v in VIEWS))


def _last_processed(exam: dict) -> dict | None:
    done = [a for a in exam["attempts"] if a["status"] in ("processed", "failed")]
    return done[-1] if done else None


def _kept_pairs(exam: dict) -> dict[int, dict]:
    """The latest processed, not superseded, attempt of each pair."""
    kept: dict[int, dict] = {}
    for a in exam["attempts"]:
        if a["status"] == "processed":
            kept[a["pair_index"]] = a
    return kept


def _actions(exam: dict) -> list[str]:
    from acquisition.service.workflow import allowed_actions

    return allowed_actions(exam["state"])
