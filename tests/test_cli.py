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


def test_output_paths_that_cannot_be_written_are_one_line_exit_2(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = _run("simulate", "--region", "lower", "--seed", "1", "--out", str(a_file))
    assert out.returncode == 2 and "file.txt" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    m = tmp_path / "m.json"
    m.write_text(
        '{"method": "consistent-marker", "segments": {}, "motion": null,'
        ' "qc": {"verdict": "retake", "checks": []}}'
    )
    out = _run("precision", str(m), "-o", str(tmp_path / "p.json"))
    assert out.returncode == 2 and "m.json" in out.stderr and "at least 2" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_atomic_write_to_a_folder_is_an_input_error(tmp_path):
    import pytest

    from acquisition.jsonio import write_json
    from reconstruction.errors import InputError

    with pytest.raises(InputError, match="is a folder"):
        write_json(tmp_path, {"a": 1})
