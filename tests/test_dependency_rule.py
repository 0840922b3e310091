"""The dependency rule of docs/architecture.md, checked in fresh interpreters.

Importing every module of a package must not load the packages it may not
depend on (nor, for reconstruction, the web stack or serial library).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "reconstruction": {
        "acquisition",
        "simulator",
        "firmware_bridge",
        "fastapi",
        "serial",
        "pydicom",
        "uvicorn",
    },
    "firmware_bridge": {"acquisition", "simulator", "reconstruction", "numpy", "fastapi"},
    "simulator": {"acquisition", "fastapi", "uvicorn", "pydicom"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_may(package):
    code = f"""
import importlib, pkgutil, sys
import {package}
for mod in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(mod.name)
print(sorted({{m.split('.')[0] for m in sys.modules}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert not (loaded & FORBIDDEN[package]), f"{package} pulls in {loaded & FORBIDDEN[package]}"
