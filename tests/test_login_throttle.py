"""Login throttling: five wrong passwords for a name lock that name for 15 minutes."""

from __future__ import annotations

from fastapi.testclient import TestClient

from acquisition.service import auth
from acquisition.service.app import create_app
from acquisition.service.fakes import FakeHardware, FakePipeline
from acquisition.service.runtime import Runtime


def test_throttle_window_slides_and_success_clears():
    now = [0.0]
    t = auth.LoginThrottle(max_failures=3, window_s=100.0, clock=lambda: now[0])
    for at in (0.0, 10.0):
        now[0] = at
        t.failed("user:a")
    assert t.retry_after("user:a") == 0.0
    now[0] = 20.0
    t.failed("user:a")
    assert t.retry_after("user:a") == 80.0  # until the failure at 0 leaves the window
    now[0] = 60.0
    assert t.retry_after("user:a") == 40.0
    assert t.retry_after("user:b") == 0.0  # another name is not affected
    now[0] = 100.0  # the failure at 0 left the window: two remain
    assert t.retry_after("user:a") == 0.0
    t.failed("user:a")  # 10, 20, 100: locked until 110
    assert t.retry_after("user:a") == 10.0
    t.succeeded("user:a")
    assert t.retry_after("user:a") == 0.0


def test_api_refuses_a_guessed_name_but_not_the_others(tmp_path):
    rt = Runtime(tmp_path / "data", FakeHardware(), FakePipeline(), frame_timeout_s=2.0)
    rt.store.add_user("tech", "tech-password", "technician")
    rt.store.add_user("phys", "phys-password", "physicist")
    with TestClient(create_app(rt)) as c:
        for _ in range(auth.MAX_FAILED_LOGINS):
            r = c.post("/api/login", json={"username": "tech", "password": "guess"})
            assert r.status_code == 401
        # now even the right password is refused, with a one-line reason and Retry-After
        r = c.post("/api/login", json={"username": "tech", "password": "tech-password"})
        assert r.status_code == 429
        assert "try again" in r.json()["detail"]
        assert 0 < int(r.headers["Retry-After"]) <= auth.LOGIN_WINDOW_S + 1
        # the same workstation can still log in another user
        r = c.post("/api/login", json={"username": "phys", "password": "phys-password"})
        assert r.status_code == 200
        # every wrong password is in the audit log; the refused attempt checked none
        rows = [e for e in rt.store.audit_entries() if e.action == "login_failed"]
        assert len(rows) == auth.MAX_FAILED_LOGINS
