"""The command line's outside face: help, version, lazy imports, one-line errors."""

import subprocess
import sys

from acquisition import __version__


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acquisition.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_contract_command():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in (
        "reconstruct",
        "cage-check",
        "migrate",
        "precision",
        "simulate",
        "sim-controller",
        "exam",
        "serve",
    ):
        assert cmd in out.stdout


def test_version():
    out = _run("--version")
    assert out.returncode == 0 and __version__ in out.stdout


def test_reconstruct_does_not_import_the_web_stack(tmp_path):
    code = (
        "import sys; from acquisition.cli import main\n"
        f"rc = main(['reconstruct', '--station', r'{tmp_path}/none.json', '--cage', 'c.json',"
        " 'a.dcm', 'b.dcm', '-o', 'r.json'])\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]\n"
        "print(rc, bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr


def test_missing_input_file_is_one_line_exit_2(tmp_path):
    out = _run(
        "reconstruct",
        "--station",
        str(tmp_path / "nope.json"),
        "--cage",
        str(tmp_path / "cage.json"),
        "a.dcm",
        "b.dcm",
        "-o",
        str(tmp_path / "r.json"),
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.json" in lines[0] and "Traceback" not in out.stderr
