"""Files taken from a pinned package-registry artifact, downloaded once into a cache.

    from zhllama.pinned import LLAMA_CPP, fetch_tree
    root = fetch_tree(LLAMA_CPP)        # .../vendor/llama.cpp of the llama-cpp-python sdist

The artifact is downloaded with pip (the ordinary registry client, so the user's index and proxy
settings apply), its sha256 is checked against the pin, and only the listed parts are extracted.
A marker written last records the sha256, so a half-extracted folder is never used. The cache is
``$ZHLLAMA_CACHE`` (default ``~/.cache/zhllama``), shared with the demo's inputs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import sha256_file, write_json_atomic


class FetchError(UserError):
    """The artifact could not be downloaded (no network, no registry access)."""


@dataclass(frozen=True)
class PinnedSdist:
    name: str
    version: str
    file: str
    sha256: str
    root: str  # folder inside the archive that becomes the extracted tree
    parts: tuple[str, ...]  # files or folders under ``root`` to extract

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


# llama.cpp 0c1e570 as vendored by llama-cpp-python 0.3.36 (MIT): its HF -> GGUF converter and the
# gguf-py package it was written with (PyPI's gguf 0.19 fails on it with LazyChunkedTensor).
LLAMA_CPP = PinnedSdist(
    name="llama-cpp-python", version="0.3.36", file="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    root="llama_cpp_python-0.3.36/vendor/llama.cpp",
    parts=("convert_hf_to_gguf.py", "conversion", "gguf-py", "LICENSE"),
)


def default_cache() -> Path:
    return Path(os.environ.get("ZHLLAMA_CACHE") or Path.home() / ".cache" / "zhllama")


def fetch_tree(pin: PinnedSdist, cache: Path | None = None, log=print) -> Path:
    """The extracted tree of ``pin`` (downloaded and checked on first use). Raises FetchError
    when the registry cannot be reached, UserError when the download does not match the pin."""
    folder = (cache or default_cache()) / "pinned" / pin.folder_name
    marker = folder / "fetched.json"
    if marker.is_file() and pin.sha256 in marker.read_text(encoding="utf-8"):
        return folder / "tree"
    with tempfile.TemporaryDirectory(prefix="zhllama-fetch-") as tmp:
        archive = _download(pin, Path(tmp), log)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _extract(archive, pin, partial / "tree")
        write_json_atomic(partial / "fetched.json", {"artifact": f"{pin.name}=={pin.version}", "file": pin.file,
                                                     "sha256": pin.sha256, "parts": list(pin.parts)})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    log(f"[fetch] {pin.name}=={pin.version}: sha256 ok, extracted {', '.join(pin.parts)} into {folder}")
    return folder / "tree"


def _download(pin: PinnedSdist, into: Path, log) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "-d", str(into), f"{pin.name}=={pin.version}"]
    log(f"[fetch] {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archive = into / pin.file
    if not archive.is_file():  # pip may fail after the download (building metadata): the file decides
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise FetchError(f"could not download {pin.name}=={pin.version} from the package index "
                         f"(is the network or the index reachable?):\n{tail}")
    digest = sha256_file(archive)
    if digest != pin.sha256:
        raise UserError(f"{pin.file}: sha256 {digest} does not match the pinned {pin.sha256}; refusing to use it")
    return archive


def _extract(archive: Path, pin: PinnedSdist, dest: Path) -> None:
    prefixes = [f"{pin.root}/{part}" for part in pin.parts]
    with tarfile.open(archive, "r:gz") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and any(
            m.name == p or m.name.startswith(p + "/") for p in prefixes)]
        for part, prefix in zip(pin.parts, prefixes):
            if not any(m.name == prefix or m.name.startswith(prefix + "/") for m in members):
                raise UserError(f"{pin.file} has no {prefix}")
        for member in members:
            target = dest / member.name[len(pin.root) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            fh = tf.extractfile(member)
            assert fh is not None
            target.write_bytes(fh.read())
