"""Reading and writing the station's JSON files.

Reading turns every failure into a one-line :class:`InputError` that names the
file and the problem; writing is atomic (temporary file, fsync, rename) so a
crash never leaves a half-written result next to a good one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from reconstruction.errors import InputError


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load a JSON file; raise :class:`InputError` naming ``path`` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, expected a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read {what}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{p}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


def load_model(path: str | os.PathLike, parse, what: str):
    """Load a JSON file and parse it with ``parse`` (e.g. ``Station.from_dict``).

    A parse error is re-raised with the file name in front of it.
    """
    data = load_json(path, what)
    try:
        return parse(data)
    except InputError as exc:
        raise InputError(f"{path}: not a valid {what}: {exc}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """JSON text with numpy values converted; non-finite floats become null."""
    return json.dumps(_sanitize(obj), default=_default, indent=2, allow_nan=False)


def _sanitize(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitize(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    write_bytes_atomic(path, (dumps(obj) + "\n").encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and rename."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: is a folder, cannot write the output file there")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    except OSError as exc:
        raise InputError(f"{p}: cannot write the output file: {exc.strerror or exc}") from None
    try:
        # mkstemp makes the file 0600; a result must be readable like any other file.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        # fsync the folder too, so the rename itself survives a power cut.
        dfd = os.open(p.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
