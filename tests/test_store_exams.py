"""The exam store: WAL mode, full sync, attempts, follow-up links, reopen."""

import pytest

from acquisition.service.store import Store
from acquisition.service.workflow import WorkflowError

T = {"A": {"kv": 70, "ma": 100, "ms": 10}, "B": {"kv": 70, "ma": 100, "ms": 10}}


def new(s, **kw):
    f = dict(patient_id="P", patient_name="N", region="lower", procedure_code="0350T", technique=T)
    f.update(kw)
    return s.create_exam("tech", **f)


def test_wal_and_full_sync(tmp_path):
    s = Store(tmp_path / "s.db")
    with s.tx() as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()


def test_attempts_and_reopen(tmp_path):
    s = Store(tmp_path / "s.db")
    e = new(s, series_length=2)
    s.step(e["id"], "set_technique", "tech", updates={"technique": T})
    s.step(e["id"], "arm", "tech")
    s.step(
        e["id"],
        "exposure_report",
        "station",
        new_attempt={
            "pair_index": 0,
            "status": "exposing",
            "exposure_id": 7,
            "requested": T,
            "report": {"skew_us": 3.0},
        },
    )
    s.update_attempt(e["id"], 1, {"cage_checks": {"A": {"passed": True}}})
    s.step(
        e["id"],
        "frames_stored",
        "station",
        attempt_updates=(-1, {"status": "acquired", "images": {"A": {"path": "x"}}}),
    )
    s.close()
    s = Store(tmp_path / "s.db")
    x = s.exam(e["id"])
    assert x["state"] == "processing" and x["series_length"] == 2
    (a,) = x["attempts"]
    assert a["exposure_id"] == 7 and a["report"] == {"skew_us": 3.0}
    assert a["status"] == "acquired" and a["cage_checks"] == {"A": {"passed": True}}
    assert s.active_exam()["id"] == e["id"]
    s.close()


def test_follow_up_rules(tmp_path):
    s = Store(tmp_path / "s.db")
    ref = new(s)
    with pytest.raises(WorkflowError, match="not completed"):
        new(s, reference_exam_id=ref["id"])
    with pytest.raises(LookupError, match="does not exist"):
        new(s, reference_exam_id=99)
    for a in ("set_technique", "arm"):
        s.step(ref["id"], a, "t")
    s.step(
        ref["id"],
        "exposure_report",
        "t",
        new_attempt={"pair_index": 0, "status": "x", "requested": T},
    )
    for a in ("frames_stored", "processed", "accept"):
        s.step(ref["id"], a, "t")
    with pytest.raises(WorkflowError, match="same region"):
        new(s, reference_exam_id=ref["id"], region="spine", procedure_code="0348T")
    fu = new(s, reference_exam_id=ref["id"])
    assert fu["reference_exam_id"] == ref["id"]
    s.close()


def test_duplicate_user_is_a_conflict(tmp_path):
    s = Store(tmp_path / "s.db")
    s.add_user("a", "password-a", "technician")
    with pytest.raises(WorkflowError, match="already exists"):
        s.add_user("a", "password-b", "admin")
    s.close()
