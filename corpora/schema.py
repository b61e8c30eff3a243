"""Corpus manifest loading and validation (the format is documented in corpora/manifest.py).

``load_manifest`` checks every key, type, file and sha256 and reports all problems at once as one
UserError naming the manifest and the offending key (``sources[0] (cmrc2018).sha256``).
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import describe_not_a_file, sha256_file, sha256_json

from .cleaning import Cleaning

Format = Literal["txt", "jsonl", "json", "datasets"]
Split = Literal["train", "holdout", "all"]
_TOP_KEYS = {"name", "description", "base_dir", "on_decode_error", "holdout", "sources"}
_SOURCE_KEYS = {
    "name", "path", "hf_disk", "hf_hub", "hf_config", "hf_split", "hf_revision", "format",
    "text_fields", "language", "license", "sha256", "weight", "clean",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Holdout:
    fraction: float = 0.0  # share of documents held out, decided by the document key
    salt: str = ""  # changes which documents are held out (and the shard assignment)


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    files: list[Path]  # resolved, sorted; empty for hf_hub
    format: Format
    text_fields: list[str]
    language: str
    license: str
    sha256: dict[str, str]  # file (relative to base_dir, posix) -> expected hex digest
    weight: float
    clean: Cleaning
    location: dict[str, Any]  # as written: {"path": [...]} / {"hf_disk": ...} / {"hf_hub": ...}
    base_dir: Path
    holdout: Holdout = Holdout()
    on_decode_error: Literal["fail", "skip"] = "fail"
    manifest_path: Path | None = None

    def relative(self, file: Path) -> str:
        return os.path.relpath(file, self.base_dir).replace(os.sep, "/")


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    description: str
    base_dir: Path
    holdout: Holdout
    on_decode_error: str
    sources: list[Source]
    _normalized: dict[str, Any]

    def fingerprint(self) -> str:
        """sha256 over everything that changes the documents: part of downstream cache keys.

        Covers base-relative locations, formats, fields, cleaning, weights, holdout and every
        input file's sha256 (not description/license/language, and not absolute paths, so
        moving the checkout keeps caches valid).
        """
        return sha256_json(self._normalized)

    def source(self, name: str) -> Source:
        for s in self.sources:
            if s.name == name:
                return s
        raise UserError(f"{self.path}: no source named {name!r} (have: {', '.join(s.name for s in self.sources)})")


def load_manifest(path: str | os.PathLike, *, on_decode_error: str | None = None) -> Manifest:
    """Read and validate a manifest; every problem is reported at once as a UserError.

    Checks keys, types, that every file exists and that its sha256 matches. ``on_decode_error``
    overrides the manifest's key of the same name.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} {describe_not_a_file(path)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"manifest {path}: expected a mapping with name and sources at the top level")
    problems: list[str] = []
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"{key}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"name: expected a non-empty string, got {name!r}")
    base_raw = raw.get("base_dir", ".")
    if not isinstance(base_raw, str):
        problems.append(f"base_dir: expected a folder path, got {base_raw!r}")
        base_raw = "."
    base_dir = (path.resolve().parent / base_raw).resolve()
    if not base_dir.is_dir():
        problems.append(f"base_dir: folder {base_dir} does not exist")
    mode = on_decode_error or raw.get("on_decode_error", "fail")
    if mode not in ("fail", "skip"):
        problems.append(f"on_decode_error: expected fail or skip, got {mode!r}")
        mode = "fail"
    holdout = _holdout(raw.get("holdout"), problems)
    sources_raw = raw.get("sources")
    sources: list[Source] = []
    normalized_sources: list[dict[str, Any]] = []
    if not isinstance(sources_raw, list) or not sources_raw:
        problems.append("sources: expected a non-empty list of sources")
        sources_raw = []
    seen: set[str] = set()
    for i, item in enumerate(sources_raw):
        built = _source(item, i, base_dir, holdout, mode, path, problems)
        if built is None:
            continue
        source, normalized = built
        if source.name in seen:
            problems.append(f"sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
        sources.append(source)
        normalized_sources.append(normalized)
    raise_if_problems(f"invalid manifest {path}", problems)
    normalized = {
        "name": name,
        "holdout": dataclasses.asdict(holdout),
        "sources": normalized_sources,
    }
    return Manifest(path, name, str(raw.get("description", "")), base_dir, holdout, mode, sources, normalized)


def _holdout(raw: Any, problems: list[str]) -> Holdout:
    if raw is None:
        return Holdout()
    if not isinstance(raw, dict):
        problems.append(f"holdout: expected a mapping {{fraction, salt}}, got {raw!r}")
        return Holdout()
    for key in raw:
        if key not in ("fraction", "salt"):
            problems.append(f"holdout.{key}: unknown key (known: fraction, salt)")
    fraction = raw.get("fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        problems.append(f"holdout.fraction: expected a number in [0, 1), got {fraction!r}")
        fraction = 0.0
    salt = raw.get("salt", "")
    if not isinstance(salt, str):
        problems.append(f"holdout.salt: expected a string, got {salt!r}")
        salt = ""
    return Holdout(float(fraction), salt)


def _source(item: Any, i: int, base_dir: Path, holdout: Holdout, mode: str, manifest_path: Path,
            problems: list[str]) -> tuple[Source, dict[str, Any]] | None:
    if not isinstance(item, dict):
        problems.append(f"sources[{i}]: expected a mapping, got {item!r}")
        return None
    name = item.get("name")
    key = f"sources[{i}]" + (f" ({name})" if isinstance(name, str) else "")
    before = len(problems)
    for k in item:
        if k not in _SOURCE_KEYS:
            problems.append(f"{key}.{k}: unknown key (known: {', '.join(sorted(_SOURCE_KEYS))})")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"{key}.name: expected a name of letters, digits, _ . -, got {name!r}")
        name = f"source{i}"
    kinds = [k for k in ("path", "hf_disk", "hf_hub") if k in item]
    if len(kinds) != 1:
        problems.append(f"{key}: give exactly one location key of path, hf_disk, hf_hub (got {kinds or 'none'})")
        return None
    kind = kinds[0]
    for hf_key in ("hf_config", "hf_split", "hf_revision"):
        if hf_key in item and kind == "path":
            problems.append(f"{key}.{hf_key}: only for hf_disk/hf_hub sources")
    fmt = item.get("format", "datasets" if kind != "path" else None)
    if kind == "path" and fmt not in ("txt", "jsonl", "json"):
        problems.append(f"{key}.format: expected txt, jsonl or json, got {fmt!r}")
    if kind != "path" and fmt != "datasets":
        problems.append(f"{key}.format: {kind} sources are read as datasets rows; omit format (got {fmt!r})")
    fields = item.get("text_fields")
    if isinstance(fields, str):
        fields = [fields]
    if fmt == "txt":
        if fields is not None:
            problems.append(f"{key}.text_fields: txt sources have no fields (a line is a document)")
        fields = []
    elif not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
        problems.append(f"{key}.text_fields: expected a non-empty list of field names, got {fields!r}")
        fields = []
    for k in ("language", "license"):
        if not isinstance(item.get(k), str) or not item.get(k):
            problems.append(f"{key}.{k}: required (a non-empty string), got {item.get(k)!r}")
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        problems.append(f"{key}.weight: expected a finite number >= 0, got {weight!r}")
        weight = 1.0
    clean = Cleaning.from_raw(item.get("clean"), f"{key}.clean", problems)

    files: list[Path] = []
    location: dict[str, Any]
    if kind == "hf_hub":
        location = {k: item.get(k) for k in ("hf_hub", "hf_config", "hf_split", "hf_revision")}
        if not isinstance(item["hf_hub"], str):
            problems.append(f"{key}.hf_hub: expected a dataset name, got {item['hf_hub']!r}")
        if not isinstance(item.get("hf_revision"), str):
            problems.append(f"{key}.hf_revision: required for hf_hub (a commit) so the corpus is pinned")
        if "sha256" in item:
            problems.append(f"{key}.sha256: hub datasets are pinned by hf_revision, not sha256")
    else:
        entries = item[kind]
        entries = [entries] if isinstance(entries, str) else entries
        if kind == "hf_disk" and not (isinstance(entries, list) and len(entries) == 1):
            problems.append(f"{key}.hf_disk: expected one folder, got {item[kind]!r}")
            entries = []
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            problems.append(f"{key}.{kind}: expected a path or a list of paths, got {item[kind]!r}")
            entries = []
        location = {kind: list(entries)} if kind == "path" else {kind: entries[0] if entries else None,
                                                                 "hf_split": item.get("hf_split")}
        for entry in entries:
            found = _expand(base_dir, entry)
            if not found:
                problems.append(f"{key}.{kind}: {entry!r} matches no file (looked in {base_dir / entry})")
            files.extend(found)
        files = sorted(set(files))
    expected = _expected_sha256(item, key, files, base_dir, problems) if kind != "hf_hub" else {}
    if len(problems) > before:
        return None
    source = Source(name, files, fmt, list(fields), item["language"], item["license"], expected,
                    float(weight), clean, location, base_dir, holdout, mode, manifest_path)
    normalized = {"name": name, "format": fmt, "text_fields": list(fields), "weight": float(weight),
                  "clean": clean.as_dict(), "location": location, "sha256": expected}
    return source, normalized


def _expand(base_dir: Path, entry: str) -> list[Path]:
    target = base_dir / entry
    if glob.has_magic(entry):
        matches = [Path(p) for p in glob.glob(str(target), recursive=True)]
        return [p.resolve() for p in matches if p.is_file()]
    if target.is_file():
        return [target.resolve()]
    if target.is_dir():
        return [p.resolve() for p in target.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(target).parts)]
    return []


# Hashing a 100 GB corpus takes minutes: remember digests per (path, size, mtime) in-process.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def _expected_sha256(item: dict, key: str, files: list[Path], base_dir: Path,
                     problems: list[str]) -> dict[str, str]:
    rel = {os.path.relpath(f, base_dir).replace(os.sep, "/"): f for f in files}
    raw = item.get("sha256")
    if raw is None:
        if files:
            listing = "\n".join(f"      {r}: {_sha256_cached(f)}" for r, f in rel.items())
            problems.append(f"{key}.sha256: required (checked on every load); the files now hash to:\n{listing}")
        return {}
    if isinstance(raw, str):
        if len(files) != 1:
            problems.append(f"{key}.sha256: a single digest fits one file, but the location has {len(files)}; "
                            "give a mapping {relative path: digest}")
            return {}
        raw = {next(iter(rel)): raw}
    if not isinstance(raw, dict):
        problems.append(f"{key}.sha256: expected a hex digest or a mapping {{file: digest}}, got {raw!r}")
        return {}
    expected: dict[str, str] = {}
    for name, digest in raw.items():
        name = str(name).replace(os.sep, "/")
        if not isinstance(digest, str) or not _HEX_RE.match(digest.lower()):
            problems.append(f"{key}.sha256[{name}]: expected 64 hex digits, got {digest!r}")
        elif name not in rel:
            problems.append(f"{key}.sha256[{name}]: names a file the location does not contain")
        else:
            expected[name] = digest.lower()
    for name, file in rel.items():
        if name not in raw:
            problems.append(f"{key}.sha256: no digest for {name} (it hashes to {_sha256_cached(file)})")
        elif name in expected and _sha256_cached(file) != expected[name]:
            problems.append(f"{key}.sha256[{name}]: checksum mismatch: the manifest expects {expected[name]}, "
                            f"the file {file} hashes to {_sha256_cached(file)}")
    return expected
