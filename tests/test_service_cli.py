"""``rsa-station serve`` and ``rsa-station demo`` as a user starts them."""

import re
import signal
import subprocess
import sys
import time

import httpx

from acquisition.service.testing import free_port

CLI = [sys.executable, "-m", "acquisition.cli"]


def run(*args, timeout=60):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_needs_a_controller(tmp_path):
    p = run("serve", "--data", str(tmp_path))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--controller" in p.stderr


def test_serve_with_a_folder_needs_the_geometry(tmp_path):
    p = run(
        "serve",
        "--controller",
        "sim://x",
        "--detectors",
        str(tmp_path),
        "--data",
        str(tmp_path / "d"),
    )
    assert p.returncode == 2 and "--station and --cage" in p.stderr


def test_serve_bad_station_file_is_one_line(tmp_path):
    p = run(
        "serve",
        "--controller",
        "sim://x",
        "--detectors",
        str(tmp_path),
        "--station",
        str(tmp_path / "none.json"),
        "--cage",
        "c.json",
        "--data",
        str(tmp_path / "d"),
    )
    assert p.returncode == 2 and "none.json: station file not found" in p.stderr
    assert "Traceback" not in p.stderr


def test_serve_bad_account_spec(tmp_path):
    p = run("serve", "--simulate", "--user", "bob:wizard:password1", "--data", str(tmp_path))
    assert p.returncode == 2 and "role must be" in p.stderr


def test_demo_prints_address_and_credentials_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "demo", "--out", str(tmp_path / "demo"), "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines, end = [], time.monotonic() + 90
        while time.monotonic() < end:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "point a browser at" in line:
                break
        text = "".join(lines)
        m = re.search(r"log in as: (\S+)\s+password: (\S+)", text)
        assert m, text
        assert f"http://127.0.0.1:{port}/" in text
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        r = c.post("/api/login", json={"username": m[1], "password": m[2]})
        assert r.status_code == 200 and r.json()["role"] == "technician"
        assert c.get("/api/status").json()["simulated"] is True
        assert "<title>RSA station</title>" in c.get("/").text
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(30)
    assert rc == 0
    assert (tmp_path / "demo" / "station.db").exists()
