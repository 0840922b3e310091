"""The station's HTTP API on fake hardware: workflow, refusals, retakes, series, errors.

The fakes (``acquisition.service.fakes``) honour the hardware and pipeline
interfaces and answer at once, so these tests exercise the workflow, the store,
the audit log and the HTTP layer; the real simulator and reconstruction are
exercised end to end in test_exam_cmd, test_durability_sigkill and test_ui_e2e.
"""

import json
import time

import pytest
from fastapi.testclient import TestClient

from acquisition.service.app import create_app
from acquisition.service.fakes import FakeHardware, FakePipeline
from acquisition.service.runtime import Runtime

TECH = {"A": {"kv": 70, "ma": 200, "ms": 40}, "B": {"kv": 72, "ma": 200, "ms": 40}}


@pytest.fixture
def station(tmp_path):
    hw = FakeHardware(skew_us=120.0)
    pipeline = FakePipeline()
    rt = Runtime(tmp_path / "data", hw, pipeline, frame_timeout_s=2.0)
    rt.store.add_user("tech", "tech-password", "technician")
    rt.store.add_user("phys", "phys-password", "physicist")
    rt.store.add_user("root", "root-password", "admin")
    with TestClient(create_app(rt)) as c:
        assert c.post(
            "/api/login", json={"username": "tech", "password": "tech-password"}
        ).is_success
        yield c, rt, hw, pipeline


def register(c, **kw):
    body = {"patient_id": "P-1", "patient_name": "Doe^Jane", "region": "lower", **kw}
    r = c.post("/api/exams", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def wait_state(c, eid, states, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        e = c.get(f"/api/exams/{eid}").json()
        if e["state"] in states:
            return e
        time.sleep(0.02)
    raise AssertionError(f"exam {eid} stuck in {e['state']}")


def wait_file(c, url, timeout=5.0):
    """GET url until it is there (200) or the timeout passes; the last response."""
    end = time.monotonic() + timeout
    while True:
        r = c.get(url)
        if r.status_code != 404 or time.monotonic() > end:
            return r
        time.sleep(0.02)


def expose(c, eid):
    assert c.put(f"/api/exams/{eid}/technique", json=TECH).status_code in (200, 409)
    r = c.post(f"/api/exams/{eid}/arm")
    assert r.status_code == 200, r.text
    assert c.post(f"/api/exams/{eid}/hold").status_code == 200
    return wait_state(c, eid, {"review", "ready"})


def test_region_sets_procedure_code_and_preset(station):
    c, *_ = station
    for region, code in (("spine", "0348T"), ("upper", "0349T"), ("lower", "0350T")):
        e = register(c, region=region)
        assert e["procedure_code"] == code
        assert e["state"] == "registered"
        assert set(e["technique"]) == {"A", "B"} and e["technique"]["A"]["kv"] > 40
        assert e["actions"] == ["set_technique", "cancel"]


def test_whole_exam_records_requested_and_actual_technique(station):
    c, _rt, _hw, _ = station
    eid = register(c)["id"]
    e = expose(c, eid)
    assert e["state"] == "review"
    (a,) = e["attempts"]
    assert a["status"] == "processed"
    assert a["requested"] == json.loads(json.dumps(TECH))
    assert a["report"]["skew_us"] == 120.0
    assert set(a["cage_checks"]) == {"A", "B"} and all(
        cc["passed"] and cc["latency_s"] < 1.0 for cc in a["cage_checks"].values()
    )
    # the exposure's skew joins the QC as tube_skew
    skew = [ch for ch in a["result"]["qc"]["checks"] if ch["code"] == "tube_skew"]
    assert skew == [
        {
            "code": "tube_skew",
            "view": None,
            "passed": True,
            "value": 120.0,
            "limit": 500.0,
            "message": "tubes started 120 µs apart (limit 500 µs)",
        }
    ]
    assert a["result"]["tube_skew_us"] == 120.0
    # images on disk with the recorded hashes, overlays served (they follow the
    # verdict, announced by an "overlay" event: wait for them as the page does)
    for v in "AB":
        r = wait_file(c, f"/api/exams/{eid}/attempts/1/result-{v}.png")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        assert wait_file(c, f"/api/exams/{eid}/attempts/1/cage-{v}.png").status_code == 200
    r = c.post(f"/api/exams/{eid}/accept")
    assert r.status_code == 200 and r.json()["state"] == "completed"
    assert r.json()["used_attempts"] == [1]
    # audit: who, requested and actual technique, verdict; chain intact
    assert c.post("/api/login", json={"username": "phys", "password": "phys-password"}).is_success
    log = c.get(f"/api/audit?exam_id={eid}").json()
    actions = [x["action"] for x in log]
    for needed in ("exam_registered", "set_technique", "arm", "exposure_report", "accept"):
        assert needed in actions
    rep = next(x for x in log if x["action"] == "exposure_report")
    assert rep["details"]["requested_technique"]["A"]["kv"] == 70
    assert rep["details"]["report"]["tubes"]["B"]["kv"] == 72
    assert next(x for x in log if x["action"] == "arm")["operator"] == "tech"
    assert c.get("/api/audit/verify").json()["ok"] is True


def test_out_of_order_calls_get_409_with_a_sentence(station):
    c, *_ = station
    eid = register(c)["id"]
    for method, path in (
        ("post", "arm"),
        ("post", "hold"),
        ("post", "accept"),
        ("post", "retake"),
        ("post", "disarm"),
    ):
        r = getattr(c, method)(f"/api/exams/{eid}/{path}")
        assert r.status_code == 409, (path, r.text)
        detail = r.json()["detail"]
        assert detail.endswith(".") and "registered" in detail
    assert c.put(f"/api/exams/{eid}/technique", json=TECH).status_code == 200
    assert c.post(f"/api/exams/{eid}/arm").status_code == 200
    r = c.put(f"/api/exams/{eid}/technique", json=TECH)
    assert r.status_code == 409 and "before arming" in r.json()["detail"]
    r = c.post(f"/api/exams/{eid}/cancel")
    assert r.status_code == 409 and "disarm" in r.json()["detail"]
    # the station has one exam at a time
    other = register(c, patient_id="P-2")["id"]
    c.put(f"/api/exams/{other}/technique", json=TECH)
    r = c.post(f"/api/exams/{other}/arm")
    assert r.status_code == 409 and f"busy with exam {eid}" in r.json()["detail"]
    assert c.post(f"/api/exams/{eid}/disarm").json()["state"] == "ready"
    assert c.post(f"/api/exams/{other}/arm").json()["state"] == "armed"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda hw: hw.set_interlock("door", False), "the room door is open"),
        (lambda hw: hw.set_interlock("collimator", False), "the collimator is not in place"),
        (
            lambda hw: hw.cache.update(detectors={"B": {"ready": False, "source": "fake"}}),
            "detector B is not ready",
        ),
        (lambda hw: hw.set_heat("A", 93.0), "tube A is over its heat limit"),
    ],
)
def test_arm_refused_with_the_reason(station, setup, reason):
    c, rt, hw, _ = station
    eid = register(c)["id"]
    c.put(f"/api/exams/{eid}/technique", json=TECH)
    setup(hw)
    r = c.post(f"/api/exams/{eid}/arm")
    assert r.status_code == 409
    assert r.json()["detail"].startswith("Arming refused: ") and reason in r.json()["detail"]
    assert c.get(f"/api/exams/{eid}").json()["state"] == "ready"
    assert not hw.armed
    refused = [e for e in rt.store.audit_entries(eid) if e.action == "arm_refused"]
    assert len(refused) == 1 and reason in refused[0].details["reasons"][0]


def test_retake_keeps_every_attempt_and_records_the_one_used(station):
    c, rt, _hw, pipeline = station
    eid = register(c)["id"]
    pipeline.verdict_pass = False
    e = expose(c, eid)
    assert e["attempts"][0]["result"]["qc"]["verdict"] == "retake"
    r = c.post(f"/api/exams/{eid}/retake", json={"reason": "patient moved"})
    assert r.status_code == 200 and r.json()["state"] == "ready"
    pipeline.verdict_pass = True
    e = expose(c, eid)
    assert [a["status"] for a in e["attempts"]] == ["superseded", "processed"]
    assert [a["pair_index"] for a in e["attempts"]] == [0, 0]
    assert e["attempts"][1]["result"]["qc"]["verdict"] == "pass"
    # the technician may still choose the first attempt
    r = c.post(f"/api/exams/{eid}/accept", json={"attempt": 1})
    assert r.status_code == 200 and r.json()["used_attempts"] == [1]
    log = [x for x in rt.store.audit_entries(eid)]
    retake = next(x for x in log if x.action == "retake")
    assert retake.details["reason"] == "patient moved"
    assert retake.details["superseded_attempt"] == 1


def test_accept_refuses_an_attempt_without_result(station):
    c, *_ = station
    eid = register(c)["id"]
    expose(c, eid)
    r = c.post(f"/api/exams/{eid}/accept", json={"attempt": 7})
    assert r.status_code == 409 and "Attempt 7" in r.json()["detail"]


def test_dynamic_series_takes_n_pairs(station):
    c, *_ = station
    eid = register(c, series_length=3)["id"]
    states = []
    for _ in range(3):
        states.append(expose(c, eid)["state"])
    assert states == ["ready", "ready", "review"]
    e = c.post(f"/api/exams/{eid}/accept").json()
    assert e["used_attempts"] == [1, 2, 3]
    assert [a["pair_index"] for a in e["attempts"]] == [0, 1, 2]


def test_fault_while_armed_aborts_and_is_audited(station):
    c, rt, hw, _ = station
    eid = register(c)["id"]
    c.put(f"/api/exams/{eid}/technique", json=TECH)
    c.post(f"/api/exams/{eid}/arm")
    hw.fault("interlock opened")
    e = wait_state(c, eid, {"ready"})
    assert e["attempts"] == []
    log = rt.store.audit_entries(eid)
    assert any(x.action == "fault" and x.details["message"] == "interlock opened" for x in log)
    assert any(x.action == "exposure_aborted" for x in log)


def test_missing_frame_aborts_the_attempt(station):
    c, _rt, hw, _ = station
    hw.deliver = False
    eid = register(c)["id"]
    e = expose(c, eid)
    assert e["state"] == "ready"
    (a,) = e["attempts"]
    assert a["status"] == "aborted" and "detector frame missing" in a["error"]


def test_follow_up_links_reference_and_gets_migration(station):
    c, *_ = station
    seg = {
        "reference_segment": "bone",
        "moving_segment": "implant",
        "segments": {"bone": [[0, 0, 0]] * 3, "implant": [[1, 1, 1]] * 3},
    }
    ref = register(c, segments=seg)["id"]
    r = c.post("/api/exams", json={**_exam_body(), "reference_exam_id": ref})
    assert r.status_code == 409 and "not completed" in r.json()["detail"]
    expose(c, ref)
    c.post(f"/api/exams/{ref}/accept")
    r = c.post("/api/exams", json={**_exam_body(), "region": "spine", "reference_exam_id": ref})
    assert r.status_code == 409 and "same region" in r.json()["detail"]
    r = c.post("/api/exams", json={**_exam_body(), "reference_exam_id": 999})
    assert r.status_code == 404
    fu = c.post("/api/exams", json={**_exam_body(), "reference_exam_id": ref}).json()["id"]
    e = expose(c, fu)
    assert e["attempts"][0]["migration"]["method"] == "consistent-marker"
    e = c.post(f"/api/exams/{fu}/accept").json()
    assert e["migration"]["method"] == "consistent-marker"


def _exam_body():
    return {"patient_id": "P-1", "patient_name": "Doe^Jane", "region": "lower"}


def test_bad_input_gets_one_clear_error(station):
    c, *_ = station
    r = c.post(
        "/api/exams", content=b'{"patient_id": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["detail"].startswith("The request body is not valid JSON")
    r = c.post("/api/exams", json={**_exam_body(), "region": "skull"})
    assert r.status_code == 422 and r.json()["detail"].startswith("region: ")
    r = c.put("/api/exams/1/technique", json={"A": {"kv": 500, "ma": 1, "ms": 1}, "B": TECH["B"]})
    assert r.status_code == 422 and r.json()["detail"].startswith("A.kv: ")
    assert c.get("/api/exams/424242").status_code == 404
    assert c.get("/api/exams/424242").json() == {"detail": "Exam 424242 does not exist."}


def test_session_required_except_public_paths(station, tmp_path):
    c, _rt, *_ = station
    anon = TestClient(c.app)
    for path in (
        "/api/health",
        "/",
        "/static/app.js",
        "/static/style.css",
        "/openapi.json",
        "/docs",
    ):
        assert anon.get(path).status_code == 200, path
    for method, path in (
        ("get", "/api/status"),
        ("get", "/api/events"),
        ("get", "/api/exams"),
        ("get", "/api/exams/1"),
        ("post", "/api/exams/1/arm"),
        ("get", "/api/audit"),
        ("get", "/api/me"),
    ):
        r = getattr(anon, method)(path)
        assert r.status_code == 401, path
        assert r.json() == {"detail": "Log in first."}
    bad = anon.post("/api/login", json={"username": "tech", "password": "nope-nope"})
    assert bad.status_code == 401
    assert anon.get("/api/me", headers={"Cookie": "rsa_session=forged"}).status_code == 401


def test_roles(station):
    c, _rt, *_ = station
    assert c.get("/api/audit").status_code == 403  # a technician
    assert c.get("/api/users").status_code == 403
    c.post("/api/login", json={"username": "root", "password": "root-password"})
    r = c.post(
        "/api/users", json={"username": "ann", "password": "ann-password", "role": "physicist"}
    )
    assert r.status_code == 201
    assert (
        c.post(
            "/api/users", json={"username": "ann", "password": "ann-password", "role": "admin"}
        ).status_code
        == 409
    )
    assert {"username": "ann", "role": "physicist"} in c.get("/api/users").json()
    c.post("/api/logout")
    assert c.get("/api/me").status_code == 401


def test_event_stream_starts_with_current_status(station):
    c, _rt, _hw, _ = station
    eid = register(c)["id"]
    r = c.get("/api/events?limit=2")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [b for b in r.text.split("\n\n") if b.strip()]
    kinds = [next(ln[7:] for ln in b.splitlines() if ln.startswith("event: ")) for b in events]
    assert kinds == ["status", "exam"]
    data = [
        json.loads(next(ln[6:] for ln in b.splitlines() if ln.startswith("data: "))) for b in events
    ]
    assert data[0]["interlocks"] == {"door": True, "collimator": True}
    assert data[0]["tube_heat"] == {"A": 10.0, "B": 10.0}
    assert data[1]["exam_id"] == eid and data[1]["state"] == "registered"


def test_progress_events_cover_exposure_and_processing(station):
    c, rt, _hw, _ = station
    seen = []
    rt.bus.add_listener(lambda ev: seen.append((ev.kind, ev.data.get("stage"))))
    eid = register(c)["id"]
    expose(c, eid)
    stages = [s for k, s in seen if k == "progress"]
    for s in ("exposing", "exposed", "frame", "cage_check", "reconstruction", "done"):
        assert s in stages
    assert stages.index("exposed") < stages.index("reconstruction") < stages.index("done")
    assert sum(1 for k, _ in seen if k == "cage_check") == 2


def test_simulator_controls_drive_the_refusal(station):
    c, *_ = station
    eid = register(c)["id"]
    c.put(f"/api/exams/{eid}/technique", json=TECH)
    st = c.post("/api/simulator", json={"interlock": "door", "closed": False}).json()
    assert st["interlocks"]["door"] is False
    assert "door is open" in c.post(f"/api/exams/{eid}/arm").json()["detail"]


def test_link_lost_while_armed_returns_to_ready(station):
    c, rt, hw, _ = station
    eid = register(c)["id"]
    c.put(f"/api/exams/{eid}/technique", json=TECH)
    c.post(f"/api/exams/{eid}/arm")
    hw.emit("link_lost", reason="the link to the sync controller was lost (timeout)")
    e = wait_state(c, eid, {"ready"})
    assert e["attempts"] == []
    kinds = [x.action for x in rt.store.audit_entries(eid)]
    assert "link_lost" in kinds and kinds[-1] == "exposure_aborted"
