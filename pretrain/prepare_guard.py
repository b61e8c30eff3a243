"""Guards of ``pretrain prepare``: an output folder of other inputs, inputs changing under it, and
leftovers of killed runs.

The manifest's sha256 is checked when it is loaded; a file appended to while it is being read
would still be tokenized and recorded under the old digest. So the size and modification time
of every input file are taken right after that check and compared again once everything has been
read: any change fails the run (nothing is written) instead of recording the wrong digest.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from engine.packed import REPORT, list_parts, part_name
from zhllama.errors import UserError


def source_stats(manifest: Any) -> dict[str, tuple[int, int]]:
    """{file: (size, mtime_ns)} of every input file of the manifest (hub sources have none)."""
    stats = {}
    for source in manifest.sources:
        for path in source.files:
            st = Path(path).stat()
            stats[str(path)] = (st.st_size, st.st_mtime_ns)
    return stats


def check_sources_unchanged(before: dict[str, tuple[int, int]]) -> None:
    changed = []
    for path, (size, mtime) in before.items():
        try:
            st = Path(path).stat()
        except OSError:
            changed.append(f"{path} was removed")
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            changed.append(f"{path} changed while it was being read ({size:,} -> {st.st_size:,} bytes)")
    if changed:
        raise UserError("input files changed during prepare, so the data would not match the sha256 recorded in "
                        "the manifest; nothing was written. Re-run once they are stable (and update their sha256 "
                        "in the manifest)", changed)


def remove_stale_partials(out: Path, part: str) -> list[Path]:
    """Delete hidden ``.PART.partial-*``/``.PART.old-*`` folders left by killed runs (caller holds PART's lock)."""
    removed = []
    if out.is_dir():
        for path in sorted(out.glob(f".{part}.partial-*")) + sorted(out.glob(f".{part}.old-*")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            print(f"removed {path}: left by an interrupted prepare of the same part", file=sys.stderr)
    return removed


def check_out(out: Path, cache_key: str, key_inputs: dict, index: int, count: int,
               overwrite: bool) -> dict | None:
    """This part's report when it is already prepared with ``cache_key``; else clear the way."""
    if not out.is_dir():
        return None
    foreign = [p.name for p in out.iterdir()
               if not p.name.startswith(".") and p.name != REPORT and not p.name.startswith("part-")]
    if foreign:
        raise UserError(f"--out {out} holds other files ({', '.join(sorted(foreign)[:5])}); "
                        "choose an empty or a prepared-data folder")
    parts = list_parts(out)
    for folder, report in parts:
        if report.get("cache_key") == cache_key and folder.name == part_name(index, count):
            return report
    stale = [(f, r) for f, r in parts if r.get("cache_key") != cache_key]
    if stale and not overwrite:
        folder, report = stale[0]
        changes = describe_changes(report.get("key_inputs", {}), key_inputs)
        raise UserError(f"--out {out} holds data prepared from other inputs or settings ({folder.name}: "
                        f"{changes}); pass --overwrite to replace it, or choose another --out")
    for folder, report in stale:
        # Parts of another --shard count are never rewritten by this run's sibling jobs: drop them.
        # Same-count parts belong to sibling jobs (maybe running now), which replace their own.
        if report.get("part", {}).get("count") != count:
            shutil.rmtree(folder, ignore_errors=True)
    if stale and (out / REPORT).exists():
        (out / REPORT).unlink()
    return None


def describe_changes(old: dict, new: dict) -> str:
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key in ("block_size", "shard_count", "seed", "on_decode_error", "file_tokens"):
                changed.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
            elif key == "tokenizer_files":
                names = sorted(n for n in set(old.get(key, {})) | set(new.get(key, {}))
                               if old.get(key, {}).get(n) != new.get(key, {}).get(n))
                changed.append(f"tokenizer files changed ({', '.join(names)})")
            else:
                changed.append(f"{key} changed")
    return "; ".join(changed) or "another format"
