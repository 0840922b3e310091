"""The exam store: SQLite in WAL mode, one file next to the DICOM folder.

Every state change of an exam commits in the same transaction as its audit
entry (:mod:`acquisition.service.audit`), with ``synchronous=FULL`` so a
committed step survives a killed process and a power cut. Images are written
to disk (atomically, fsynced) *before* the transaction that records them, so
the database never points at a file that is not whole.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquisition.service import audit, auth
from acquisition.service.workflow import ACTIVE, State, WorkflowError, next_state

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users(username),
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS exams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    birth_date TEXT,
    region TEXT NOT NULL,
    procedure_code TEXT NOT NULL,
    reference_exam_id INTEGER REFERENCES exams(id),
    series_length INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    technique TEXT NOT NULL,
    segments TEXT,
    used_attempts TEXT NOT NULL DEFAULT '[]',
    migration TEXT,
    pacs TEXT,
    operator TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exam_id INTEGER NOT NULL REFERENCES exams(id),
    number INTEGER NOT NULL,
    pair_index INTEGER NOT NULL,
    status TEXT NOT NULL,
    exposure_id INTEGER,
    requested TEXT NOT NULL,
    report TEXT,
    images TEXT NOT NULL DEFAULT '{}',
    cage_checks TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    migration TEXT,
    error TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    UNIQUE (exam_id, number)
);
"""

# Attempt status: exposing -> acquired -> processed | failed; or aborted; superseded on retake.
JSON_COLS_EXAM = ("technique", "segments", "used_attempts", "migration", "pacs")
JSON_COLS_ATTEMPT = ("requested", "report", "images", "cage_checks", "result", "migration")


@dataclass
class User:
    username: str
    role: str


class Store:
    """Thread-safe access to the station database (one connection, one lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._conn.executescript(SCHEMA + audit.SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction under the store's lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---------------------------------------------------------------- users
    def user_count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def add_user(self, username: str, password: str, role: str, by: str = "system") -> User:
        if role not in auth.ROLES:
            raise ValueError(f"role must be one of {', '.join(auth.ROLES)}")
        hashed = auth.hash_password(password)
        with self.tx() as c:
            if c.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone():
                raise WorkflowError(f"An account named {username!r} already exists.")
            c.execute(
                "INSERT INTO users VALUES (?,?,?,?)", (username, role, hashed, audit.now_iso())
            )
            audit.append(c, by, "user_created", None, {"username": username, "role": role})
        return User(username, role)

    def users(self) -> list[User]:
        with self._lock:
            rows = self._conn.execute("SELECT username, role FROM users ORDER BY username")
            return [User(*r) for r in rows]

    def login(self, username: str, password: str) -> str | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT password FROM users WHERE username=?", (username,)
            ).fetchone()
        # Hash even for an unknown name so timing does not reveal which names exist.
        stored = row[0] if row else auth.hash_password("x", salt=b"\0" * 16)
        ok = auth.check_password(password, stored) and row is not None
        with self.tx() as c:
            if not ok:
                audit.append(c, username[:64] or "?", "login_failed", None, {})
                return None
            token = auth.new_token()
            c.execute(
                "INSERT INTO sessions VALUES (?,?,?)",
                (auth.token_digest(token), username, time.time() + auth.SESSION_HOURS * 3600),
            )
            audit.append(c, username, "login", None, {})
        return token

    def session_user(self, token: str | None) -> User | None:
        if not token:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT u.username, u.role, s.expires FROM sessions s JOIN users u "
                "ON u.username = s.username WHERE s.token_hash=?",
                (auth.token_digest(token),),
            ).fetchone()
        if row is None or row[2] < time.time():
            return None
        return User(row[0], row[1])

    def logout(self, token: str, username: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM sessions WHERE token_hash=?", (auth.token_digest(token),))
            audit.append(c, username, "logout", None, {})

    # ---------------------------------------------------------------- exams
    def create_exam(self, operator: str, **fields: Any) -> dict:
        now = audit.now_iso()
        ref = fields.get("reference_exam_id")
        with self.tx() as c:
            if ref is not None:
                r = c.execute("SELECT state, region FROM exams WHERE id=?", (ref,)).fetchone()
                if r is None:
                    raise LookupError(f"Reference exam {ref} does not exist.")
                if r[0] != State.COMPLETED:
                    raise WorkflowError(
                        f"Reference exam {ref} is not completed; only a completed exam can "
                        "be the reference of a follow-up."
                    )
                if r[1] != fields["region"]:
                    raise WorkflowError(
                        f"Reference exam {ref} is a {r[1]} exam; a follow-up must be of the "
                        "same region."
                    )
            cur = c.execute(
                "INSERT INTO exams(patient_id, patient_name, birth_date, region, procedure_code,"
                " reference_exam_id, series_length, state, technique, segments, operator,"
                " created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    fields["patient_id"],
                    fields["patient_name"],
                    fields.get("birth_date"),
                    fields["region"],
                    fields["procedure_code"],
                    ref,
                    fields.get("series_length", 1),
                    State.REGISTERED.value,
                    json.dumps(fields["technique"]),
                    json.dumps(fields.get("segments")) if fields.get("segments") else None,
                    operator,
                    now,
                    now,
                ),
            )
            exam_id = cur.lastrowid
            audit.append(
                c,
                operator,
                "exam_registered",
                exam_id,
                {
                    k: fields.get(k)
                    for k in (
                        "patient_id",
                        "region",
                        "procedure_code",
                        "reference_exam_id",
                        "series_length",
                        "technique",
                    )
                },
            )
        return self.exam(exam_id)

    def exam(self, exam_id: int) -> dict:
        with self._lock:
            c = self._conn
            c.row_factory = sqlite3.Row
            try:
                row = c.execute("SELECT * FROM exams WHERE id=?", (exam_id,)).fetchone()
                if row is None:
                    raise LookupError(f"Exam {exam_id} does not exist.")
                d = _decode(dict(row), JSON_COLS_EXAM)
                d["attempts"] = [
                    _decode(dict(a), JSON_COLS_ATTEMPT)
                    for a in c.execute(
                        "SELECT * FROM attempts WHERE exam_id=? ORDER BY number", (exam_id,)
                    )
                ]
            finally:
                c.row_factory = None
        return d

    def exams(self, limit: int = 100) -> list[dict]:
        with self._lock:
            ids = [
                r[0]
                for r in self._conn.execute(
                    "SELECT id FROM exams ORDER BY id DESC LIMIT ?", (limit,)
                )
            ]
        return [self.exam(i) for i in ids]

    def active_exam(self) -> dict | None:
        """The exam that holds the station's hardware (armed .. processing), if any."""
        marks = ",".join("?" * len(ACTIVE))
        with self._lock:
            row = self._conn.execute(
                f"SELECT id FROM exams WHERE state IN ({marks}) ORDER BY id LIMIT 1",
                [s.value for s in ACTIVE],
            ).fetchone()
        return self.exam(row[0]) if row else None

    def step(
        self,
        exam_id: int,
        action: str,
        operator: str,
        details: dict | None = None,
        *,
        updates: dict | None = None,
        attempt_updates: tuple[int, dict] | None = None,
        new_attempt: dict | None = None,
        target: State | None = None,
    ) -> dict:
        """Apply one workflow step atomically: check, update exam (+attempt), audit.

        Returns the exam after the step. Raises :class:`WorkflowError` when the
        step is not allowed in the exam's current state.
        """
        with self.tx() as c:
            row = c.execute("SELECT state FROM exams WHERE id=?", (exam_id,)).fetchone()
            if row is None:
                raise LookupError(f"Exam {exam_id} does not exist.")
            nxt = next_state(row[0], action)
            if target is not None:
                nxt = target
            sets = {"state": nxt.value, "updated": audit.now_iso()}
            for k, v in (updates or {}).items():
                sets[k] = json.dumps(v) if k in JSON_COLS_EXAM else v
            c.execute(
                f"UPDATE exams SET {', '.join(f'{k}=?' for k in sets)} WHERE id=?",
                [*sets.values(), exam_id],
            )
            if new_attempt is not None:
                self._insert_attempt(c, exam_id, new_attempt)
            if attempt_updates is not None:
                self._update_attempt(c, exam_id, *attempt_updates)
            audit.append(
                c,
                operator,
                action,
                exam_id,
                {"from": row[0], "to": nxt.value, **(details or {})},
            )
        return self.exam(exam_id)

    def update_attempt(
        self,
        exam_id: int,
        number: int,
        fields: dict,
        operator: str | None = None,
        action: str | None = None,
        details: dict | None = None,
    ) -> None:
        """Record data on an attempt without a state change (e.g. one view's cage check)."""
        with self.tx() as c:
            self._update_attempt(c, exam_id, number, fields)
            if action:
                audit.append(c, operator or "station", action, exam_id, details or {})

    def set_exam_field(
        self, exam_id: int, field: str, value: Any, operator: str, action: str, details: dict
    ) -> None:
        """Record data on an exam without a state change (e.g. its PACS export), audited."""
        if field not in ("pacs",):
            raise ValueError(f"not a free exam field: {field}")
        with self.tx() as c:
            c.execute(
                f"UPDATE exams SET {field}=?, updated=? WHERE id=?",
                (json.dumps(value), audit.now_iso(), exam_id),
            )
            audit.append(c, operator, action, exam_id, details)

    def record(self, operator: str, action: str, exam_id: int | None, details: dict) -> None:
        """An audit entry that changes nothing else (faults, refusals, interlocks)."""
        with self.tx() as c:
            audit.append(c, operator, action, exam_id, details)

    @staticmethod
    def _insert_attempt(c: sqlite3.Connection, exam_id: int, a: dict) -> None:
        now = audit.now_iso()
        number = (
            c.execute(
                "SELECT COALESCE(MAX(number), 0) FROM attempts WHERE exam_id=?", (exam_id,)
            ).fetchone()[0]
            + 1
        )
        c.execute(
            "INSERT INTO attempts(exam_id, number, pair_index, status, exposure_id, requested,"
            " report, created, updated) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                exam_id,
                number,
                a["pair_index"],
                a["status"],
                a.get("exposure_id"),
                json.dumps(a["requested"]),
                json.dumps(a.get("report")) if a.get("report") is not None else None,
                now,
                now,
            ),
        )

    @staticmethod
    def _update_attempt(c: sqlite3.Connection, exam_id: int, number: int, fields: dict) -> None:
        if number < 0:  # the latest attempt
            number = c.execute(
                "SELECT MAX(number) FROM attempts WHERE exam_id=?", (exam_id,)
            ).fetchone()[0]
        sets = {k: (json.dumps(v) if k in JSON_COLS_ATTEMPT else v) for k, v in fields.items()}
        sets["updated"] = audit.now_iso()
        c.execute(
            f"UPDATE attempts SET {', '.join(f'{k}=?' for k in sets)} WHERE exam_id=? AND number=?",
            [*sets.values(), exam_id, number],
        )

    # ---------------------------------------------------------------- audit
    def audit_entries(self, exam_id: int | None = None, after: int = 0, limit: int = 1000):
        with self._lock:
            return audit.entries(self._conn, exam_id, after, limit)

    def verify_audit(self) -> audit.VerifyResult:
        with self._lock:
            return audit.verify(self._conn)


def _decode(d: dict, cols: tuple[str, ...]) -> dict:
    for k in cols:
        if k in d and d[k] is not None:
            d[k] = json.loads(d[k])
    return d
