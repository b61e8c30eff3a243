"""A manifest's ``exclude:`` files: document keys every phase leaves out (near-duplicates, or any list).

    exclude: {file: near_dups.keys, sha256: 3f5c…}   # relative to base_dir; made by `python -m corpora near-dups`
    exclude:                                         # or several lists, e.g. with benchmark contamination
      - {file: near_dups.keys, sha256: 3f5c…}
      - {file: contamination.keys, sha256: 9a01…}    # made by `python -m evaluation contamination`
      - {file: quality.keys, sha256: 77c2…}          # `python -m corpora quality` or `corpora perplexity`

One 32-hex-digit document key per line (``corpora.manifest.document_key``); lines starting with ``#`` are
comments, and ``# salt: S`` records the holdout salt the keys were made with — keys are salted, so a file
made under another salt would silently exclude nothing: that is refused.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from zhllama.files import describe_not_a_file, sha256_file, write_text_atomic

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
SALT_PREFIX = "# salt: "


@dataclasses.dataclass
class ExcludeSpec:
    file: str = ""  # relative to base_dir
    sha256: str | None = None  # required: the file is part of what decides the documents

    UNKNOWN_KEY = "unknown key"


def read_excludes(specs: ExcludeSpec | list[ExcludeSpec], base_dir: Path, salt: str,
                  problems: list[str]) -> tuple[frozenset[bytes], str | list[str]]:
    """(the union of the keys, the sha256 of one file or the list of them); problems go to ``problems``."""
    if isinstance(specs, ExcludeSpec):
        return read_exclude(specs, base_dir, salt, problems)
    if not specs:
        problems.append("exclude: expected a file ({file, sha256}) or a non-empty list of them, got []")
    keys: set[bytes] = set()
    digests = []
    for i, spec in enumerate(specs):
        part, digest = read_exclude(spec, base_dir, salt, problems, f"exclude[{i}]")
        keys |= part
        digests.append(digest)
    return frozenset(keys), digests


def read_exclude(spec: ExcludeSpec, base_dir: Path, salt: str, problems: list[str],
                 where: str = "exclude") -> tuple[frozenset[bytes], str]:
    """(the keys, the file's sha256); every problem goes to ``problems``, prefixed with ``where``."""
    if not spec.file:
        problems.append(f"{where}.file: expected a path, got {spec.file!r}")
        return frozenset(), ""
    path = base_dir / spec.file
    if not path.is_file():
        problems.append(f"{where}.file: {path} {describe_not_a_file(path)}")
        return frozenset(), ""
    digest = sha256_file(path)
    if spec.sha256 is None:
        problems.append(f"{where}.sha256: required (checked on every load); {spec.file} now hashes to {digest}")
    elif spec.sha256 != digest:
        problems.append(f"{where}.sha256: {spec.file} hashes to {digest}, the manifest says {spec.sha256}")
    keys, file_salt = set(), None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line.startswith(SALT_PREFIX):
            file_salt = line[len(SALT_PREFIX):]
        elif line and not line.startswith("#"):
            if not _KEY_RE.match(line):
                problems.append(f"{path}:{number}: expected a 32-hex-digit document key, got {line[:60]!r}")
                break
            keys.add(bytes.fromhex(line))
    if file_salt is not None and file_salt != salt:
        problems.append(f"{where}.file: {spec.file} was made with holdout salt {file_salt!r} but the manifest's is "
                        f"{salt!r}, so its keys match no document; make it again with this manifest")
    return frozenset(keys), digest


def publish_keys(out: Path, keys: list[bytes], salt: str, header: list[str], report: dict) -> str:
    """The keys file and its report ``OUT.json`` (with the keys file's sha256, stored in ``report``); returns
    the line to add to the manifest. Shared by near-dups, quality, perplexity and contamination."""
    from zhllama.files import write_json_atomic

    write_exclude(out, keys, salt, header)
    report["sha256"] = sha256_file(out)
    write_json_atomic(out.with_name(out.name + ".json"), report)
    return f"exclude: {{file: <{out} relative to base_dir>, sha256: {report['sha256']}}}"


def write_exclude(path: Path, keys: list[bytes], salt: str, header: list[str]) -> None:
    """The keys file (sorted) with ``header`` comment lines and the salt line, written atomically."""
    lines = [f"# {h}" for h in header] + [f"{SALT_PREFIX}{salt}"] + sorted(k.hex() for k in keys)
    write_text_atomic(path, "\n".join(lines) + "\n")
