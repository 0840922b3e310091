"""Local operator accounts: salted scrypt password hashes, sessions, roles.

Passwords are stored as ``scrypt$N$r$p$salt_hex$hash_hex`` (RFC 7914 via
:func:`hashlib.scrypt`, 16-byte random salt, N=2**14, r=8, p=1: the parameters
RFC 7914 section 2 gives for interactive logins). Session tokens are random
(``secrets.token_urlsafe``) and only their SHA-256 is stored, so a copy of the
database does not let anyone log in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

ROLES = ("technician", "physicist", "admin")

# What each role may do. A physicist reviews and verifies; an admin manages accounts.
PERMISSIONS: dict[str, frozenset[str]] = {
    "technician": frozenset({"exam", "view"}),
    "physicist": frozenset({"exam", "view", "audit"}),
    "admin": frozenset({"exam", "view", "audit", "users"}),
}

_N, _R, _P = 2**14, 8, 1
SESSION_COOKIE = "rsa_session"
SESSION_HOURS = 12.0


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(16) if salt is None else salt
    dk = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${dk.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt_hex, hash_hex = stored.split("$")
        if kind != "scrypt":
            return False
        dk = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(hash_hex) // 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk.hex(), hash_hex)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allowed(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


# Brute-force protection of the login: after MAX_FAILED_LOGINS wrong passwords
# for one user name within LOGIN_WINDOW_S, further
# attempts are refused, without checking the password, until the oldest failure
# leaves the window (OWASP Authentication Cheat Sheet: "login throttling"). Kept
# in memory: the station is one process, and a restart that clears it is rare
# and logged.
MAX_FAILED_LOGINS = 5
LOGIN_WINDOW_S = 15 * 60.0


class LoginThrottle:
    """Failed-login counter per key (e.g. a user name) with a sliding window."""

    def __init__(
        self,
        max_failures: int = MAX_FAILED_LOGINS,
        window_s: float = LOGIN_WINDOW_S,
        clock=None,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock or time.monotonic
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, *keys: str) -> float:
        """Seconds until an attempt for these keys is allowed again (0: allowed now)."""
        with self._lock:
            now = self._clock()
            wait = 0.0
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[-self.max_failures] + self.window_s - now)
            return wait

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = self._clock()
            for key in keys:
                self._failures.setdefault(key, []).append(now)
                self._recent(key, now)

    def succeeded(self, *keys: str) -> None:
        """A right password clears the count."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
