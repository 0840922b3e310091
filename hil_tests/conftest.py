"""HIL suite configuration: which serial port the board is on.

``pytest hil_tests`` starts ``rsa-station sim-controller`` as its own process on a
pseudo-terminal (once per session) and talks to it through ``/dev/pts/N``;
``pytest hil_tests --port URL`` runs the same tests against a real board (any
pyserial URL: /dev/ttyUSB0, socket://, rfc2217://, spy://; sim://NAME for the
in-process simulator). Tests that need bench mode or the simulator's fault
injection skip themselves, saying why, when the board does not offer them.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from hil_tests.board import open_board

STARTUP_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--port",
        default=None,
        metavar="URL",
        help="pyserial URL of the sync controller (default: start the simulator on a pty)",
    )


@pytest.fixture(scope="session")
def board_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    url = request.config.getoption("--port")
    if url:
        if url.lower().startswith("sim://"):
            import simulator.controller  # noqa: F401  (registers sim://)
        yield url
        return
    errlog = tmp_path_factory.mktemp("sim-controller") / "stderr.txt"
    with open(errlog, "wb") as err:  # a file, not a pipe nobody reads
        proc = subprocess.Popen(
            [sys.executable, "-m", "acquisition.cli", "sim-controller", "--seed", "3"],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("/dev/"):
            proc.kill()
            pytest.fail(
                f"sim-controller did not print a pty path (got {line!r}): {errlog.read_text()}"
            )
        yield line
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        assert rc == 0, f"sim-controller exited with {rc} on SIGTERM: {errlog.read_text()}"


@pytest.fixture
def board(board_url: str):
    """An open, prepared board (IDLE, nothing pending, clock x50 on the simulator)."""
    with open_board(board_url) as b:
        yield b


@pytest.fixture
def deadline():
    """Fail a test that takes longer than it should (generous on a loaded machine)."""
    start = time.monotonic()

    def check(limit: float) -> float:
        took = time.monotonic() - start
        assert took < limit, f"took {took:.1f} s, limit {limit} s"
        return took

    return check
