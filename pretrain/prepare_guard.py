"""Guards of ``pretrain prepare`` against inputs changing under it and leftovers of killed runs.

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
