"""Corpus manifest loading and validation (the format is documented in corpora/manifest.py).

``load_manifest`` reads the YAML into typed dataclasses (``ManifestFile``, ``SourceSpec``,
``Holdout``, ``Cleaning``) with zhllama.config's loader, which checks keys and types; their
``validate()`` methods check values; then every file and sha256 is checked. All problems are
reported at once as one UserError naming the manifest and the offending key
(``sources[0] (cmrc2018).sha256``).
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

from zhllama.config import build
from zhllama.errors import UserError, raise_if_problems
from zhllama.files import describe_not_a_file, sha256_file, sha256_json

from .cleaning import Cleaning
from .exclude import ExcludeSpec, read_excludes

Format = Literal["txt", "jsonl", "json", "datasets"]
Split = Literal["train", "holdout", "all"]
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_LOCATIONS = ("path", "hf_disk", "hf_hub")


@dataclasses.dataclass(frozen=True)
class Holdout:
    fraction: float = 0.0  # share of documents held out, decided by the document key
    salt: str = ""  # changes which documents are held out (and the shard assignment)

    UNKNOWN_KEY = "unknown key"

    def validate(self) -> list[str]:
        return [] if 0 <= self.fraction < 1 else [f"fraction: expected a number in [0, 1), got {self.fraction!r}"]


@dataclasses.dataclass(frozen=True)
class LongDocuments:
    """Per-source length upsampling for long-context training (Fu et al. 2024, "Data Engineering for Scaling
    Language Models to 128K Context"): documents of at least ``min_chars`` characters (after cleaning) are used
    ``weight`` times instead of the source's ``weight``, so the blocks hold more text whose far context matters,
    while each source stays in the mix (lower the source's ``weight`` to keep its share)."""

    min_chars: int = 0  # the shortest document counted as long (characters after cleaning); 0 = off
    weight: float = 1.0  # the sampling weight of those documents (the source's weight applies to the rest)

    UNKNOWN_KEY = "unknown key"

    def validate(self) -> list[str]:
        problems = []
        if self.min_chars < 0:
            problems.append(f"min_chars: expected an integer >= 1 (0: off), got {self.min_chars!r}")
        if not math.isfinite(self.weight) or self.weight < 0:
            problems.append(f"weight: expected a finite number >= 0, got {self.weight!r}")
        return problems


@dataclasses.dataclass
class SourceSpec:
    """One entry of ``sources:`` as written (types checked by zhllama.config; files by load_manifest)."""

    name: str = ""  # unique; [A-Za-z0-9_.-]
    path: str | list[str] | None = None  # file, folder, glob, or a list (relative to base_dir)
    hf_disk: str | list[str] | None = None  # a datasets save_to_disk folder
    hf_hub: str | None = None  # a hub dataset name (pinned by hf_revision)
    hf_config: str | None = None
    hf_split: str | None = None
    hf_revision: str | None = None
    format: str | None = None  # txt | jsonl | json for path; datasets (implied) for hf_*
    text_fields: list[str] | None = None  # json/jsonl/datasets fields joined into the document
    language: str = ""
    license: str = ""
    sha256: str | dict[str, str] | None = None  # one digest, or {relative path: digest}
    weight: float = 1.0  # see corpora.manifest.iter_weighted
    clean: Cleaning = dataclasses.field(default_factory=Cleaning)
    long_documents: LongDocuments = dataclasses.field(default_factory=LongDocuments)  # {min_chars, weight}: long documents drawn more often (pretraining)

    UNKNOWN_KEY = "unknown key"

    @property
    def kind(self) -> str:
        """path, hf_disk or hf_hub: the one location key given (checked on the raw mapping first)."""
        return next(k for k in _LOCATIONS if getattr(self, k) is not None)

    @property
    def fmt(self) -> str | None:
        return self.format or ("datasets" if self.kind != "path" else None)

    def entries(self) -> list[str]:
        """The path / hf_disk entries as a list."""
        value = self.path if self.path is not None else self.hf_disk
        return [value] if isinstance(value, str) else list(value or [])

    def validate(self) -> list[str]:
        kind, fmt = self.kind, self.fmt
        problems = [] if _NAME_RE.match(self.name) else [
            f"name: expected a name of letters, digits, _ . -, got {self.name!r}"]
        problems += [f"{k}: only for hf_disk/hf_hub sources" for k in ("hf_config", "hf_split", "hf_revision")
                     if kind == "path" and getattr(self, k) is not None]
        if kind == "path" and fmt not in ("txt", "jsonl", "json"):
            problems.append(f"format: expected txt, jsonl or json, got {fmt!r}")
        if kind != "path" and fmt != "datasets":
            problems.append(f"format: {kind} sources are read as datasets rows; omit format (got {fmt!r})")
        if fmt == "txt" and self.text_fields is not None:
            problems.append("text_fields: txt sources have no fields (a line is a document)")
        if fmt != "txt" and (not self.text_fields or not all(self.text_fields)):
            problems.append(f"text_fields: expected a non-empty list of field names, got {self.text_fields!r}")
        problems += [f"{k}: required (a non-empty string), got {getattr(self, k)!r}"
                     for k in ("language", "license") if not getattr(self, k)]
        if not math.isfinite(self.weight) or self.weight < 0:
            problems.append(f"weight: expected a finite number >= 0, got {self.weight!r}")
        if kind == "hf_hub" and self.hf_revision is None:
            problems.append("hf_revision: required for hf_hub (a commit) so the corpus is pinned")
        if kind == "hf_hub" and self.sha256 is not None:
            problems.append("sha256: hub datasets are pinned by hf_revision, not sha256")
        if kind == "hf_disk" and len(self.entries()) != 1:
            problems.append(f"hf_disk: expected one folder, got {self.hf_disk!r}")
        elif kind != "hf_hub" and not self.entries():
            problems.append(f"{kind}: expected a path or a list of paths, got {getattr(self, kind)!r}")
        return problems


@dataclasses.dataclass
class ManifestFile:
    """A manifest file's top level as written (format: corpora/manifest.py)."""

    name: str = ""
    description: str = ""
    base_dir: str = "."  # relative to the manifest's folder
    on_decode_error: Literal["fail", "skip"] = "fail"
    holdout: Holdout = dataclasses.field(default_factory=Holdout)
    # document keys no phase reads (corpora/exclude.py): one file, or a list (near-dups, contamination, ...)
    exclude: ExcludeSpec | list[ExcludeSpec] | None = None
    sources: list[Any] = dataclasses.field(default_factory=list)  # SourceSpec mappings, built one by one

    UNKNOWN_KEY = "unknown key"

    def validate(self) -> list[str]:
        return [] if self.name else [f"name: expected a non-empty string, got {self.name!r}"]


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
    exclude: frozenset[bytes] = frozenset()  # document keys left out (the manifest's exclude: file)
    long_documents: LongDocuments | None = None  # length upsampling (LongDocuments)

    def relative(self, file: Path) -> str:
        return os.path.relpath(file, self.base_dir).replace(os.sep, "/")

    def is_long(self, text: str) -> bool:
        return self.long_documents is not None and len(text) >= self.long_documents.min_chars

    def weight_of(self, text: str) -> float:
        """The sampling weight of one (cleaned) document: ``long_documents.weight`` for long ones."""
        return self.long_documents.weight if self.is_long(text) else self.weight

    @property
    def passes(self) -> int:
        """Passes over the source that the weighted mix makes: the largest weight, rounded up."""
        return math.ceil(max(self.weight, self.long_documents.weight if self.long_documents else 0.0))


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


def load_manifest(path: str | os.PathLike, *, on_decode_error: str | None = None,
                  with_exclude: bool = True) -> Manifest:
    """Read and validate a manifest; every problem is reported at once as a UserError.

    Keys and types are checked by the typed loader (zhllama.config) against ``ManifestFile`` and
    ``SourceSpec``; then every file must exist and match its sha256. ``on_decode_error``
    overrides the manifest's key of the same name. ``with_exclude=False`` ignores the ``exclude:`` file (for
    the command that writes it anew).
    """
    path = Path(path)
    raw = _read_yaml(path)
    problems: list[str] = []
    top = build(ManifestFile, raw, problems) or ManifestFile()
    if not isinstance(top.base_dir, str):
        top.base_dir = "."
    base_dir = (path.resolve().parent / top.base_dir).resolve()
    if not base_dir.is_dir():
        problems.append(f"base_dir: folder {base_dir} does not exist")
    mode = on_decode_error or top.on_decode_error
    if mode not in ("fail", "skip"):  # the file's own value was checked by the typed loader
        if on_decode_error:
            problems.append(f"on_decode_error: expected fail or skip, got {mode!r}")
        mode = "fail"
    bad_holdout = any(p.startswith("holdout.") for p in problems)
    holdout = top.holdout if isinstance(top.holdout, Holdout) and not bad_holdout else Holdout()
    exclude, exclude_sha = frozenset(), None
    if with_exclude and top.exclude is not None and base_dir.is_dir():
        exclude, exclude_sha = read_excludes(top.exclude, base_dir, holdout.salt, problems)
    if isinstance(top.sources, list) and not top.sources:
        problems.append("sources: expected a non-empty list of sources")
    sources: list[Source] = []
    normalized_sources: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, item in enumerate(top.sources if isinstance(top.sources, list) else []):
        built = _source(item, i, base_dir, holdout, mode, path, problems)
        if built is None:
            continue
        source, normalized = built
        source = dataclasses.replace(source, exclude=exclude)
        if source.name in seen:
            problems.append(f"sources[{i}].name: duplicate source name {source.name!r}")
        seen.add(source.name)
        sources.append(source)
        normalized_sources.append(normalized)
    raise_if_problems(f"invalid manifest {path}", problems)
    normalized = {"name": top.name, "holdout": dataclasses.asdict(holdout), "sources": normalized_sources}
    if exclude_sha is not None:  # absent otherwise, so the fingerprints of older manifests stay the same
        normalized["exclude"] = exclude_sha
    return Manifest(path, top.name, top.description, base_dir, holdout, mode, sources, normalized)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"manifest {path} {describe_not_a_file(path)}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"manifest {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"manifest {path}: expected a mapping with name and sources at the top level")
    return raw


def _source(item: Any, i: int, base_dir: Path, holdout: Holdout, mode: str, manifest_path: Path,
            problems: list[str]) -> tuple[Source, dict[str, Any]] | None:
    if not isinstance(item, dict):
        problems.append(f"sources[{i}]: expected a mapping, got {item!r}")
        return None
    name = item.get("name")
    key = f"sources[{i}]" + (f" ({name})" if isinstance(name, str) else "")
    kinds = [k for k in _LOCATIONS if item.get(k) is not None]
    if len(kinds) != 1:
        problems.append(f"{key}: give exactly one location key of path, hf_disk, hf_hub (got {kinds or 'none'})")
        return None
    before = len(problems)
    spec = build(SourceSpec, item, problems, f"{key}.")
    # Files are still checked (every problem at once) unless the location or digests are unusable.
    if spec is None or any(p.startswith(tuple(f"{key}.{k}" for k in (*_LOCATIONS, "sha256")))
                           for p in problems[before:]):
        return None
    kind = spec.kind
    files: list[Path] = []
    if kind == "hf_hub":
        location = {k: getattr(spec, k) for k in ("hf_hub", "hf_config", "hf_split", "hf_revision")}
    else:
        entries = spec.entries()
        location = {kind: entries} if kind == "path" else {kind: entries[0], "hf_split": spec.hf_split}
        for entry in entries:
            found = _expand(base_dir, entry)
            if not found:
                problems.append(f"{key}.{kind}: {entry!r} matches no file (looked in {base_dir / entry})")
            files.extend(found)
        files = sorted(set(files))
    expected = _expected_sha256(spec.sha256, key, files, base_dir, problems) if kind != "hf_hub" else {}
    if len(problems) > before:
        return None
    fields = spec.text_fields or []
    source = Source(spec.name, files, spec.fmt, list(fields), spec.language, spec.license, expected,
                    float(spec.weight), spec.clean, location, base_dir, holdout, mode, manifest_path,
                    long_documents=spec.long_documents if spec.long_documents.min_chars else None)
    normalized = {"name": spec.name, "format": spec.fmt, "text_fields": list(fields), "weight": float(spec.weight),
                  "clean": spec.clean.as_dict(), "location": location, "sha256": expected}
    if source.long_documents is not None:  # absent otherwise, so the fingerprints of older manifests stay the same
        normalized["long_documents"] = dataclasses.asdict(spec.long_documents)
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


def _expected_sha256(raw: str | dict[str, str] | None, key: str, files: list[Path], base_dir: Path,
                     problems: list[str]) -> dict[str, str]:
    rel = {os.path.relpath(f, base_dir).replace(os.sep, "/"): f for f in files}
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
