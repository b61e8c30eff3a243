"""Files taken from pinned package-registry artifacts, downloaded once into a cache.

    from zhllama.pinned import LLAMA_CPP, fetch_tree, fetch_all, load_sources
    root = fetch_tree(LLAMA_CPP)                                   # .../vendor/llama.cpp of an sdist
    files = fetch_all(load_sources("vocab/bpe_base_sources.yaml"))  # {save_as: path} of single members

Every artifact is downloaded with pip (the ordinary registry client, so the user's index and proxy
settings apply) and its sha256 is checked against the pin before anything is read from it. Two
kinds of pins share that path:

- ``Artifact`` (listed in a YAML source list, see demo/sources.yaml): single members of a wheel or
  sdist, each with its own sha256, saved under ``demo_inputs/NAME-VERSION/SAVE_AS``;
- ``PinnedSdist`` (in code, e.g. ``LLAMA_CPP``): folders of an sdist, extracted as a tree under
  ``pinned/NAME-VERSION/tree``.

A ``fetched.json`` marker is written last in each folder. The cache is ``$ZHLLAMA_CACHE``
(default ``~/.cache/zhllama``); a warm cache needs no network. The folder names above are the
ones existing caches use ("demo_inputs" predates other users of the source lists), so keep them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

from .errors import UserError, raise_if_problems
from .files import sha256_file, write_json_atomic

MEMBERS_DIR = "demo_inputs"  # cache subfolder of Artifact members (name kept so existing caches stay valid)
TREES_DIR = "pinned"  # cache subfolder of PinnedSdist trees


class FetchError(UserError):
    """The artifact could not be downloaded (no network, no registry access)."""


def default_cache() -> Path:
    return Path(os.environ.get("ZHLLAMA_CACHE") or Path.home() / ".cache" / "zhllama")


# ---------------------------------------------------------------- download + sha256 (both kinds)

def download(name: str, version: str, kind: str, file: str, sha256: str, into: Path, log=print,
             pinned_in: str = "") -> Path:
    """``into/file``, downloaded with pip and checked against ``sha256``. Raises FetchError when the
    registry cannot be reached, UserError when the download does not match the pin."""
    binary = "--only-binary" if kind == "wheel" else "--no-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary, ":all:",
           "--disable-pip-version-check", "-d", str(into), f"{name}=={version}"]
    log(f"[fetch] {' '.join(cmd[2:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archive = into / file
    if not archive.is_file():  # pip may fail after the download (building metadata): the file decides
        if proc.returncode == 0:
            raise FetchError(f"pip did not produce {file} (got {sorted(os.listdir(into))})")
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise FetchError(f"could not download {name}=={version} from the package index "
                         f"(is the network or the index reachable?):\n{tail}")
    digest = sha256_file(archive)
    if digest != sha256:
        where = f" ({pinned_in})" if pinned_in else ""
        raise UserError(f"{file}: sha256 {digest} does not match the pinned {sha256}{where}; refusing to use it")
    return archive


# ---------------------------------------------------------------- single members (YAML source lists)

@dataclasses.dataclass
class Member:
    path: str
    save_as: str
    sha256: str
    what: str = ""


@dataclasses.dataclass
class Artifact:
    name: str
    version: str
    kind: str
    file: str
    sha256: str
    license: str
    members: list[Member]
    pinned_in: str = dataclasses.field(default="", init=False, repr=False, compare=False)  # the YAML file

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


def load_sources(path: str | Path) -> list[Artifact]:
    """The artifacts of a YAML source list, every problem reported at once."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pinned sources file {path} does not exist")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    problems: list[str] = []
    artifacts: list[Artifact] = []
    for i, item in enumerate(raw.get("artifacts") or []):
        where = f"artifacts[{i}]"
        try:
            members = [Member(**m) for m in item.pop("members")]
            art = Artifact(members=members, **item)
        except (TypeError, KeyError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        art.pinned_in = str(path)
        if art.kind not in ("wheel", "sdist"):
            problems.append(f"{where}.kind: expected wheel or sdist, got {art.kind!r}")
        for j, m in enumerate(art.members):
            if not (isinstance(m.sha256, str) and len(m.sha256) == 64):
                problems.append(f"{where}.members[{j}].sha256: expected a 64-hex sha256")
        artifacts.append(art)
    if not artifacts and not problems:
        problems.append("no artifacts listed")
    raise_if_problems(f"{path}", problems)
    return artifacts


def cached_paths(artifacts: list[Artifact], cache: Path) -> dict[str, Path] | None:
    """Paths of every member (keyed by save_as) when the cache holds them with the right sha256."""
    out: dict[str, Path] = {}
    for art in artifacts:
        for m in art.members:
            p = cache / MEMBERS_DIR / art.folder_name / m.save_as
            if not p.is_file() or sha256_file(p) != m.sha256:
                return None
            out[m.save_as] = p
    return out


def fetch_all(artifacts: list[Artifact], cache: Path | None = None, log=print) -> dict[str, Path]:
    """Return member paths, downloading what the cache lacks. Raises FetchError without network."""
    cache = cache or default_cache()
    have = cached_paths(artifacts, cache)
    if have is not None:
        log(f"[fetch] inputs already in cache {cache / MEMBERS_DIR}")
        return have
    for art in artifacts:
        _fetch_members(art, cache, log)
    have = cached_paths(artifacts, cache)
    assert have is not None, "fetched members failed verification"
    return have


def _fetch_members(art: Artifact, cache: Path, log) -> None:
    folder = cache / MEMBERS_DIR / art.folder_name
    if all((folder / m.save_as).is_file() and sha256_file(folder / m.save_as) == m.sha256 for m in art.members):
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zhllama-fetch-") as tmp:
        archive = download(art.name, art.version, art.kind, art.file, art.sha256, Path(tmp), log, art.pinned_in)
        for m in art.members:
            data = _read_member(archive, art.kind, m.path)
            tmp_member = folder / f".{m.save_as}.partial"
            tmp_member.write_bytes(data)
            got = sha256_file(tmp_member)
            if got != m.sha256:
                tmp_member.unlink()
                raise UserError(f"{art.file}:{m.path}: sha256 {got} does not match the pinned {m.sha256}")
            os.replace(tmp_member, folder / m.save_as)
    write_json_atomic(folder / "fetched.json", {
        "artifact": f"{art.name}=={art.version}", "file": art.file, "sha256": art.sha256,
        "license": art.license, "members": [dataclasses.asdict(m) for m in art.members]})
    log(f"[fetch] {art.name}=={art.version}: sha256 ok, extracted {len(art.members)} files into {folder}")


def _read_member(archive: Path, kind: str, member: str) -> bytes:
    try:
        if kind == "wheel":
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive, "r:gz") as tf:
            fh = tf.extractfile(member)
            if fh is None:
                raise KeyError(member)
            return fh.read()
    except KeyError:
        raise UserError(f"{archive.name} has no member {member}") from None


# ---------------------------------------------------------------- folder trees of an sdist

@dataclasses.dataclass(frozen=True)
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


# llama.cpp 0c1e570 as vendored by llama-cpp-python 0.3.36 (MIT): its HF -> GGUF converter, the
# gguf-py package it was written with (PyPI's gguf 0.19 fails on it with LazyChunkedTensor), and the
# published chat templates its tests use (the Ollama template tests read them).
LLAMA_CPP = PinnedSdist(
    name="llama-cpp-python", version="0.3.36", file="llama_cpp_python-0.3.36.tar.gz",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    root="llama_cpp_python-0.3.36/vendor/llama.cpp",
    parts=("convert_hf_to_gguf.py", "conversion", "gguf-py", "models/templates", "LICENSE"),
)


def fetch_tree(pin: PinnedSdist, cache: Path | None = None, log=print) -> Path:
    """The extracted tree of ``pin`` (downloaded and checked on first use). Raises FetchError
    when the registry cannot be reached, UserError when the download does not match the pin."""
    folder = (cache or default_cache()) / TREES_DIR / pin.folder_name
    marker = folder / "fetched.json"
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("sha256") == pin.sha256 and set(pin.parts) <= set(done.get("parts", ())):
            return folder / "tree"
    with tempfile.TemporaryDirectory(prefix="zhllama-fetch-") as tmp:
        archive = download(pin.name, pin.version, "sdist", pin.file, pin.sha256, Path(tmp), log)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _extract(archive, pin, partial / "tree")
        write_json_atomic(partial / "fetched.json", {"artifact": f"{pin.name}=={pin.version}", "file": pin.file,
                                                     "sha256": pin.sha256, "parts": list(pin.parts)})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    log(f"[fetch] {pin.name}=={pin.version}: sha256 ok, extracted {', '.join(pin.parts)} into {folder}")
    return folder / "tree"


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
