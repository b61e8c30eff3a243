"""The old name of ``python -m corpora check``: ``python -m vocab manifest check X.yaml`` still works.

    python -m vocab manifest check corpora_manifests/shared_zh_vocab.yaml [--json]
"""
from __future__ import annotations

import argparse

from corpora.check_cli import add_arguments as _add_check_arguments
from corpora.check_cli import run  # noqa: F401 - the command registry calls it


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check"], help="what to do (only: check)")
    _add_check_arguments(parser)
