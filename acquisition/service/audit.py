"""Append-only, hash-chained audit log.

Each entry carries the SHA-256 of the previous entry's hash and of its own
canonical JSON (sorted keys, no whitespace), so that changing, inserting or
removing any entry breaks every later link: the chain construction of
Haber & Stornetta, "How to time-stamp a digital document", J. Cryptology 1991.
SQLite triggers refuse UPDATE and DELETE on the table, so the service itself
cannot rewrite history; :func:`verify` detects anyone who edits the file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    operator TEXT NOT NULL,
    action TEXT NOT NULL,
    exam_id INTEGER,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    operator: str
    action: str
    exam_id: int | None
    details: dict
    prev_hash: str
    hash: str

    def to_dict(self) -> dict:
        return {
            "seq": self.seq,
            "time": self.time,
            "operator": self.operator,
            "action": self.action,
            "exam_id": self.exam_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None
    message: str

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "message": self.message,
        }


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    prev_hash: str,
    seq: int,
    time: str,
    operator: str,
    action: str,
    exam_id: int | None,
    details_json: str,
) -> str:
    body = canonical(
        {
            "seq": seq,
            "time": time,
            "operator": operator,
            "action": action,
            "exam_id": exam_id,
            "details": details_json,
        }
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def append(
    conn: sqlite3.Connection,
    operator: str,
    action: str,
    exam_id: int | None = None,
    details: dict | None = None,
) -> AuditEntry:
    """Append one entry inside the caller's transaction (so it commits with the change)."""
    row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    t = now_iso()
    dj = canonical(details or {})
    h = entry_hash(prev, seq, t, operator, action, exam_id, dj)
    conn.execute(
        "INSERT INTO audit(seq, time, operator, action, exam_id, details, prev_hash, hash) "
        "VALUES (?,?,?,?,?,?,?,?)",
        (seq, t, operator, action, exam_id, dj, prev, h),
    )
    return AuditEntry(seq, t, operator, action, exam_id, details or {}, prev, h)


def _row_entry(r) -> AuditEntry:
    return AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])


def entries(
    conn: sqlite3.Connection, exam_id: int | None = None, after: int = 0, limit: int = 1000
) -> list[AuditEntry]:
    q = "SELECT seq, time, operator, action, exam_id, details, prev_hash, hash FROM audit"
    args: list[Any] = [after]
    q += " WHERE seq > ?"
    if exam_id is not None:
        q += " AND exam_id = ?"
        args.append(exam_id)
    q += " ORDER BY seq LIMIT ?"
    args.append(limit)
    return [_row_entry(r) for r in conn.execute(q, args)]


def verify(conn: sqlite3.Connection) -> VerifyResult:
    """Recompute the whole chain; report the first entry that does not link."""
    prev = GENESIS
    n = 0
    expected_seq = 1
    cur = conn.execute(
        "SELECT seq, time, operator, action, exam_id, details, prev_hash, hash FROM audit "
        "ORDER BY seq"
    )
    for seq, t, op, action, exam_id, dj, prev_hash, h in cur:
        if seq != expected_seq:
            return VerifyResult(False, n, seq, f"entry {expected_seq} is missing")
        if prev_hash != prev:
            return VerifyResult(False, n, seq, f"entry {seq} does not link to entry {seq - 1}")
        if entry_hash(prev, seq, t, op, action, exam_id, dj) != h:
            return VerifyResult(False, n, seq, f"entry {seq} was altered (hash mismatch)")
        prev = h
        n += 1
        expected_seq += 1
    return VerifyResult(True, n, None, f"{n} entries, chain intact")
