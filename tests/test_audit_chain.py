"""The audit log: append-only (the database refuses edits) and hash-chained (edits are found)."""

import itertools
import sqlite3

import pytest

from acquisition.service import audit
from acquisition.service.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "station.db")
    with s.tx() as c:
        for i in range(5):
            audit.append(c, "tech", "step", i + 1, {"i": i, "text": "ä µs"})
    yield s
    s.close()


def test_chain_verifies_and_links(store):
    res = store.verify_audit()
    assert res.ok and res.entries == 5 and res.first_bad_seq is None
    es = store.audit_entries()
    assert es[0].prev_hash == audit.GENESIS
    for a, b in itertools.pairwise(es):
        assert b.prev_hash == a.hash and b.seq == a.seq + 1


def test_database_refuses_update_and_delete(store):
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), store.tx() as c:
        c.execute("UPDATE audit SET operator='mallory' WHERE seq=2")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), store.tx() as c:
        c.execute("DELETE FROM audit WHERE seq=5")
    assert store.verify_audit().ok


def _tamper(path, sql):
    con = sqlite3.connect(path)
    con.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;" + sql)
    con.close()


@pytest.mark.parametrize(
    ("sql", "bad", "words"),
    [
        ("UPDATE audit SET operator='mallory' WHERE seq=3;", 3, "altered"),
        ("""UPDATE audit SET details='{"i":9}' WHERE seq=2;""", 2, "altered"),
        ("DELETE FROM audit WHERE seq=4;", 5, "missing"),
        ("UPDATE audit SET time='2020-01-01' WHERE seq=1;", 1, "altered"),
    ],
)
def test_verify_finds_edits_made_behind_the_station(tmp_path, store, sql, bad, words):
    store.close()
    _tamper(tmp_path / "station.db", sql)
    s = Store(tmp_path / "station.db")
    res = s.verify_audit()
    assert not res.ok and res.first_bad_seq == bad and words in res.message
    s.close()


def test_rehashing_one_entry_breaks_the_next_link(tmp_path, store):
    """A forger who recomputes the edited entry's own hash is still caught by the next link."""
    store.close()
    con = sqlite3.connect(tmp_path / "station.db")
    seq, t, _op, act, eid, dj, prev, _h = con.execute("SELECT * FROM audit WHERE seq=2").fetchone()
    h = audit.entry_hash(prev, seq, t, "mallory", act, eid, dj)
    con.executescript("DROP TRIGGER audit_no_update;")
    con.execute("UPDATE audit SET operator='mallory', hash=? WHERE seq=2", (h,))
    con.commit()
    con.close()
    s = Store(tmp_path / "station.db")
    res = s.verify_audit()
    assert not res.ok and res.first_bad_seq == 3 and "does not link" in res.message
    s.close()


def test_refused_step_leaves_no_entry(tmp_path):
    from acquisition.service.workflow import WorkflowError

    s = Store(tmp_path / "s.db")
    e = s.create_exam(
        "tech",
        patient_id="P",
        patient_name="N",
        region="lower",
        procedure_code="0350T",
        technique={"A": {}, "B": {}},
    )
    n = len(s.audit_entries())
    with pytest.raises(WorkflowError):
        s.step(e["id"], "arm", "tech")
    assert len(s.audit_entries()) == n
    assert s.exam(e["id"])["state"] == "registered"
    s.close()
