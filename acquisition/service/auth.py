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
