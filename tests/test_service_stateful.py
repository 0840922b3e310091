"""Random sequences of technician calls over HTTP (fake hardware): the station never
answers 5xx, refuses every out-of-order call with 409 and a sentence, keeps exactly the
state a model of the workflow predicts, holds at most one exam active, and its audit
chain verifies."""

import time

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from acquisition.service.app import create_app
from acquisition.service.fakes import FakeHardware, FakePipeline
from acquisition.service.runtime import Runtime
from acquisition.service.workflow import ACTIVE, WorkflowError, next_state

TECH = {"A": {"kv": 70, "ma": 100, "ms": 20}, "B": {"kv": 70, "ma": 100, "ms": 20}}
SETTLED = {"ready", "review", "registered", "completed", "cancelled"}


class Technician(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile

        self.rt = Runtime(
            tempfile.mkdtemp(prefix="rsa-stateful-"),
            FakeHardware(),
            FakePipeline(),
            frame_timeout_s=2.0,
        )
        self.rt.store.add_user("t", "tech-password", "technician")
        self.c = TestClient(create_app(self.rt, own_runtime=False))
        assert self.c.post("/api/login", json={"username": "t", "password": "tech-password"})
        self.model: dict[int, str] = {}

    def teardown(self):
        self.rt.close()

    def call(self, method, path, **kw):
        r = getattr(self.c, method)(path, **kw)
        assert r.status_code < 500, r.text
        if r.status_code == 409:
            d = r.json()["detail"]
            assert d[0].isupper() and d.endswith("."), d
        return r

    def expect(self, eid, action):
        try:
            return next_state(self.model[eid], action).value
        except WorkflowError:
            return None

    def settle(self, eid, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.c.get(f"/api/exams/{eid}").json()["state"]
            if s in SETTLED:
                return s
            time.sleep(0.01)
        raise AssertionError(f"exam {eid} did not settle")

    @rule(region=st.sampled_from(["spine", "upper", "lower"]), n=st.integers(1, 2))
    def register(self, region, n):
        r = self.call(
            "post",
            "/api/exams",
            json={"patient_id": "P", "patient_name": "N", "region": region, "series_length": n},
        )
        assert r.status_code == 201
        self.model[r.json()["id"]] = "registered"

    def pick(self, data):
        return data.draw(st.sampled_from(sorted(self.model)))

    @precondition(lambda self: self.model)
    @rule(
        data=st.data(),
        action=st.sampled_from(["set_technique", "disarm", "retake", "accept", "cancel"]),
    )
    def step(self, data, action):
        eid = self.pick(data)
        want = self.expect(eid, action)
        if action == "set_technique":
            r = self.call("put", f"/api/exams/{eid}/technique", json=TECH)
        else:
            r = self.call("post", f"/api/exams/{eid}/{action}")
        assert (r.status_code == 200) == (want is not None), (action, self.model[eid], r.text)
        if want:
            assert r.json()["state"] == want
            self.model[eid] = want

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def arm(self, data):
        eid = self.pick(data)
        want = self.expect(eid, "arm")
        busy = any(s in ACTIVE for k, s in self.model.items() if k != eid)
        r = self.call("post", f"/api/exams/{eid}/arm")
        assert (r.status_code == 200) == (want is not None and not busy), r.text
        if r.status_code == 200:
            self.model[eid] = "armed"

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def hold(self, data):
        eid = self.pick(data)
        r = self.call("post", f"/api/exams/{eid}/hold")
        ok = self.model[eid] == "armed"
        assert (r.status_code == 200) == ok, r.text
        if ok:
            self.model[eid] = self.settle(eid)
            e = self.c.get(f"/api/exams/{eid}").json()
            kept = sum(a["status"] == "processed" for a in e["attempts"])
            assert self.model[eid] == ("ready" if kept < e["series_length"] else "review")

    @invariant()
    def matches_model(self):
        for eid, s in self.model.items():
            assert self.c.get(f"/api/exams/{eid}").json()["state"] == s
        assert sum(s in ACTIVE for s in self.model.values()) <= 1

    @invariant()
    def audit_intact(self):
        assert self.rt.store.verify_audit().ok


Technician.TestCase.settings = settings(
    max_examples=8,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
test_technician_sequences = Technician.TestCase
