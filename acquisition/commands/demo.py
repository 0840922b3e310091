"""``rsa-station demo``: the station on its simulator, its page in a browser.

Starts the service with ``--simulate`` on 127.0.0.1 (port 8000, or the next
free one), creates a technician account on first use and prints the address
and the credentials, opens a browser when a display is there, and runs until
Ctrl-C. The physical hand switch of the virtual board is the page's
hold-to-expose button.
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-out", help="folder for the demo's files")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-browser", action="store_true", help="do not try to open a browser")


def run(args: argparse.Namespace) -> int:
    import os
    import shutil
    import threading
    import webbrowser
    from pathlib import Path

    from acquisition.service.server import port_free, seed_accounts, serve
    from acquisition.service.wiring import build_runtime

    host = "127.0.0.1"
    port = args.port
    while not port_free(host, port) and port < args.port + 50:
        port += 1
    out = Path(args.out)
    cred = out / "credentials.txt"
    rt = build_runtime(out, simulate=True)
    created = seed_accounts(rt, ["technician:technician"])
    if created:
        cred.write_text(f"{created[0][0]} {created[0][2]}\n")
        os.chmod(cred, 0o600)
    user, password = cred.read_text().split() if cred.exists() else ("technician", "?")
    url = f"http://{host}:{port}/"

    def ready() -> None:
        print(
            f"\nRSA station (simulated hardware) running on {url}\n"
            f"  log in as: {user}   password: {password}\n"
            f"  data (exams, DICOM, audit log): {out.resolve()}\n"
            "  Ctrl-C to stop.",
            flush=True,
        )
        has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if args.no_browser or not has_display:
            print(f"  no display here: point a browser at {url}", flush=True)
            return
        opener = shutil.which("xdg-open")
        threading.Thread(
            target=lambda: (
                webbrowser.open(url) if not opener else os.spawnlp(os.P_NOWAIT, opener, opener, url)
            ),
            daemon=True,
        ).start()

    return serve(rt, host, port, on_ready=ready)
