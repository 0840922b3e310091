"""Running the station's app under uvicorn (serve and demo)."""

from __future__ import annotations

import secrets
import socket
import sys
import threading

from acquisition.service.runtime import Runtime


def seed_accounts(rt: Runtime, specs: list[str]) -> list[tuple[str, str, str]]:
    """Create the ``NAME:ROLE[:PASSWORD]`` accounts that do not exist yet.

    A missing password is generated. Returns (name, role, password) of those
    created. With no accounts at all and no spec, an ``admin`` is created.
    """
    from reconstruction.errors import InputError

    existing = {u.username for u in rt.store.users()}
    created = []
    if not specs and not existing:
        specs = ["admin:admin"]
    for spec in specs:
        parts = spec.split(":", 2)
        if len(parts) < 2 or not parts[0]:
            raise InputError(f"--user {spec!r}: expected NAME:ROLE[:PASSWORD]")
        name, role = parts[0], parts[1]
        if role not in ("technician", "physicist", "admin"):
            raise InputError(f"--user {spec!r}: role must be technician, physicist or admin")
        if name in existing:
            continue
        password = parts[2] if len(parts) == 3 and parts[2] else secrets.token_urlsafe(9)
        if len(password) < 8:
            raise InputError(f"--user {name}: the password needs at least 8 characters")
        rt.store.add_user(name, password, role)
        created.append((name, role, password))
    return created


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def serve(rt: Runtime, host: str, port: int, on_ready=None) -> int:
    """Serve until interrupted (Ctrl-C / SIGTERM); ``on_ready()`` once listening."""
    import uvicorn

    from acquisition.service.app import create_app

    app = create_app(rt)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    if on_ready is not None:

        def watch() -> None:
            import time

            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                on_ready()

        threading.Thread(target=watch, daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("station stopped", flush=True)
    sys.stdout.flush()
    return 0
