"""Kill the real station process (SIGKILL) in each workflow state, restart it, and find
every exam, image and audit entry intact, and the exam in a safe state it can go on from.

One data folder, one exam after another through the states registered, ready, armed,
exposing, acquiring, processing, review and completed; a fresh ``rsa-station serve
--simulate`` process (binned detectors, for speed) after each kill.
"""

import hashlib
import threading
import time
from pathlib import Path

import pytest

from acquisition.service.testing import PHYSICIST, PHYSICIST_PASSWORD, StationProcess

pytestmark = pytest.mark.slow

PRESET = {"A": {"kv": 65, "ma": 200, "ms": 50}, "B": {"kv": 65, "ma": 200, "ms": 50}}
# A long exposure (1.5 s) so that the test can catch the board in 'exposing'.
LONG = {"A": {"kv": 65, "ma": 50, "ms": 1500}, "B": {"kv": 65, "ma": 50, "ms": 1500}}


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Station:
    def __init__(self, data: Path):
        self.data = data
        self.proc: StationProcess | None = None

    def start(self):
        self.proc = StationProcess(self.data).start()
        self.c = self.proc.client()
        self.phys = self.proc.client(PHYSICIST, PHYSICIST_PASSWORD)
        return self

    def snapshot(self):
        exams = {e["id"]: e for e in self.phys.get("/api/exams?limit=1000").json()}
        log = self.phys.get("/api/audit?limit=10000").json()
        return exams, log

    def kill_and_restart(self):
        before = self.snapshot()
        self.proc.kill()
        self.proc.stop()
        self.start()
        after = self.snapshot()
        check_intact(before, after, self.phys)
        return after[0]

    def state(self, eid):
        return self.c.get(f"/api/exams/{eid}").json()["state"]

    def wait(self, eid, states, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.state(eid)
            if st in states:
                return st
            time.sleep(0.02)
        raise AssertionError(f"exam {eid} stuck in {st}, wanted {states}")


def check_intact(before, after, client):
    exams_b, log_b = before
    exams_a, log_a = after
    # every audit entry, unchanged and in order, and the chain verifies
    assert [(x["seq"], x["hash"]) for x in log_a[: len(log_b)]] == [
        (x["seq"], x["hash"]) for x in log_b
    ]
    v = client.get("/api/audit/verify").json()
    assert v["ok"], v
    # every exam and every attempt, with the same data; every image whole
    for eid, eb in exams_b.items():
        ea = exams_a[eid]
        for key in ("patient_id", "patient_name", "region", "procedure_code", "created"):
            assert ea[key] == eb[key]
        assert len(ea["attempts"]) >= len(eb["attempts"])
        for ab, aa in zip(eb["attempts"], ea["attempts"], strict=False):
            assert (aa["number"], aa["exposure_id"], aa["report"]) == (
                ab["number"],
                ab["exposure_id"],
                ab["report"],
            )
            for view, img in ab["images"].items():
                assert aa["images"][view] == img
                assert sha(img["path"]) == img["sha256"]
            if ab["result"] is not None:
                assert aa["result"] == ab["result"]


def arm(st: Station, eid: int, timeout=30.0) -> None:
    """Arm the exam, waiting while the board refuses for a passing reason.

    Right after a restart the new process is still opening its serial link, and
    right after an aborted hold the board wants the switch released first; both
    refuse with 409 for a moment. Any other outcome fails with the station's reason.
    """
    deadline = time.monotonic() + timeout
    while True:
        r = st.c.post(f"/api/exams/{eid}/arm")
        if r.status_code == 200 and r.json()["state"] == "armed":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"exam {eid} could not be armed: {r.status_code} {r.text}")
        time.sleep(0.2)


def hold_until(st: Station, eid: int, states: set[str], timeout=30.0, tries=3) -> str:
    """Press hold-to-expose (keep-alives from a thread) until the exam reaches ``states``.

    On a loaded machine a keep-alive can come later than the board's 250 ms hold
    timeout, and the board then aborts (the exam returns to 'ready'): release,
    arm again and hold again, as the technician would.
    """
    for _ in range(tries):
        stop = threading.Event()

        def keep_alive(stop=stop):
            while not stop.is_set():
                st.c.post(f"/api/exams/{eid}/hold")
                time.sleep(0.08)

        t = threading.Thread(target=keep_alive, daemon=True)
        t.start()
        try:
            got = st.wait(eid, states | {"ready"}, timeout)
        finally:
            stop.set()
            t.join()
        if got != "ready":
            return got
        st.c.post(f"/api/exams/{eid}/release")
        time.sleep(0.3)
        arm(st, eid)
    raise AssertionError(f"exam {eid}: {tries} exposures aborted")


def test_sigkill_in_every_state(tmp_path):
    st = Station(tmp_path / "data").start()
    try:
        c = st.c
        reg = {"patient_id": "DUR-1", "patient_name": "Durable^Dora", "region": "lower"}
        eid = c.post("/api/exams", json=reg).json()["id"]
        assert st.kill_and_restart()[eid]["state"] == "registered"  # registered

        st.c.put(f"/api/exams/{eid}/technique", json=LONG)
        assert st.kill_and_restart()[eid]["state"] == "ready"  # ready

        arm(st, eid)
        exams = st.kill_and_restart()  # armed: the board disarms when its host dies
        assert exams[eid]["state"] == "ready"
        log = st.phys.get(f"/api/audit?exam_id={eid}").json()
        assert log[-1]["action"] == "disarm" and log[-1]["details"]["reason"] == "station restarted"

        arm(st, eid)
        assert hold_until(st, eid, {"exposing"}) == "exposing"
        exams = st.kill_and_restart()  # exposing
        assert exams[eid]["state"] == "ready"
        assert all(a["status"] == "aborted" for a in exams[eid]["attempts"])

        st.c.put(f"/api/exams/{eid}/technique", json=PRESET)
        arm(st, eid)
        assert hold_until(st, eid, {"acquiring", "processing"}) == "acquiring"
        exams = st.kill_and_restart()  # acquiring
        last = exams[eid]["attempts"][-1]
        if last["images"]:  # the pair got stored just before the kill: it is processed
            assert st.wait(eid, {"review"}) == "review"
            c2 = st.c.post(f"/api/exams/{eid}/retake")
            assert c2.status_code == 200
        else:
            assert exams[eid]["state"] == "ready" and last["status"] == "aborted"

        arm(st, eid)
        assert hold_until(st, eid, {"processing", "review"}, timeout=60) == "processing"
        n = len(st.c.get(f"/api/exams/{eid}").json()["attempts"])
        st.kill_and_restart()  # processing: the stored pair is processed again
        assert st.wait(eid, {"review"}) == "review"
        e = st.c.get(f"/api/exams/{eid}").json()
        assert len(e["attempts"]) == n and e["attempts"][-1]["status"] == "processed"
        assert e["attempts"][-1]["result"]["qc"]["verdict"] in ("pass", "retake")
        resumed = [x for x in st.phys.get(f"/api/audit?exam_id={eid}").json()]
        assert any(x["action"] == "processing_resumed" for x in resumed)

        assert st.kill_and_restart()[eid]["state"] == "review"  # review
        assert st.c.post(f"/api/exams/{eid}/accept").json()["state"] == "completed"
        exams = st.kill_and_restart()  # completed
        assert exams[eid]["state"] == "completed"
        assert exams[eid]["used_attempts"] == [exams[eid]["attempts"][-1]["number"]]
    finally:
        st.proc.stop()
