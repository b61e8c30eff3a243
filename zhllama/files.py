"""Content hashing and crash-safe outputs.

Caches are keyed on content (sha256 of bytes), never on file names. Every output folder is
built under a temporary sibling name and renamed into place only when complete, so an
interrupted run never leaves a folder that looks finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

_CHUNK = 1 << 20


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, then rename over ``path``."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to a temp file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``out``; on success it replaces ``out``, on error it is removed.

    Refuses an existing ``out`` unless ``overwrite``. The temp folder is a hidden sibling so the
    final rename stays on one filesystem (atomic).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs are ordinary folders
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def check_writable_dir(folder: str | os.PathLike, setting: str, probe: str = ".write-probe") -> None:
    """Create ``folder`` and write a probe file in it: a read-only or full filesystem fails here, in one line."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{setting} {folder} is a file, expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / probe, "wb") as fh:
            fh.write(b"0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        os.unlink(folder / probe)
    except OSError as exc:
        raise UserError(f"{setting} {folder}: cannot write there: {exc.strerror or exc}") from None


def describe_not_a_file(path: str | os.PathLike) -> str:
    """'is a directory, expected a file' or 'does not exist' (the two need different fixes)."""
    return "is a directory, expected a file" if Path(path).is_dir() else "does not exist"


def save_figure_atomic(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG under a temporary name, close it, then rename over ``path``:
    a reader (a browser refreshing the plot during training) never sees a half-written image."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")  # the suffix tells matplotlib the format
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)


def json_line_objects(text: str, problems: list[str], where=lambda number: f"line {number}") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of JSON Lines ``text``; a line that is not a JSON
    object goes to ``problems`` as "<where(number)>: ..." and is skipped, so every bad line is reported."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where(number)}: not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where(number)}: expected a JSON object")
            continue
        yield number, obj
