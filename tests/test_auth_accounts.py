"""Local accounts: salted scrypt hashes, sessions stored as digests, roles."""

import hashlib
import time

import pytest

from acquisition.service import auth
from acquisition.service.store import Store


def test_hash_is_salted_scrypt_and_checks():
    a = auth.hash_password("correct horse")
    b = auth.hash_password("correct horse")
    assert a != b  # salted
    kind, n, r, p, salt, dk = a.split("$")
    assert (kind, n, r, p) == ("scrypt", str(2**14), "8", "1") and len(bytes.fromhex(salt)) == 16
    # the stored value is exactly RFC 7914 scrypt of the password with that salt
    ref = hashlib.scrypt(b"correct horse", salt=bytes.fromhex(salt), n=2**14, r=8, p=1, dklen=32)
    assert dk == ref.hex()
    assert auth.check_password("correct horse", a)
    assert not auth.check_password("correct horse!", a)
    assert not auth.check_password("x", "garbage")
    assert not auth.check_password("x", "md5$1$2$3$aa$bb")


def test_sessions_are_stored_as_digests(tmp_path):
    s = Store(tmp_path / "s.db")
    s.add_user("ann", "ann-password", "physicist")
    assert s.login("ann", "wrong-password") is None
    assert s.login("nobody", "ann-password") is None
    token = s.login("ann", "ann-password")
    assert token and s.session_user(token).role == "physicist"
    with s.tx() as c:
        stored = [r[0] for r in c.execute("SELECT token_hash FROM sessions")]
        pw = c.execute("SELECT password FROM users").fetchone()[0]
    assert token not in stored and auth.token_digest(token) in stored
    assert "ann-password" not in pw
    s.logout(token, "ann")
    assert s.session_user(token) is None
    actions = [e.action for e in s.audit_entries()]
    assert actions.count("login_failed") == 2 and "login" in actions and "logout" in actions
    s.close()


def test_expired_session_is_refused(tmp_path):
    s = Store(tmp_path / "s.db")
    s.add_user("ann", "ann-password", "technician")
    token = s.login("ann", "ann-password")
    with s.tx() as c:
        c.execute("UPDATE sessions SET expires=?", (time.time() - 1,))
    assert s.session_user(token) is None
    s.close()


def test_roles_and_rights():
    assert auth.allowed("technician", "exam") and not auth.allowed("technician", "audit")
    assert auth.allowed("physicist", "audit") and not auth.allowed("physicist", "users")
    assert auth.allowed("admin", "users")
    assert not auth.allowed("visitor", "view")


def test_unknown_role_refused(tmp_path):
    s = Store(tmp_path / "s.db")
    with pytest.raises(ValueError, match="role must be one of"):
        s.add_user("x", "password-x", "surgeon")
    s.close()
