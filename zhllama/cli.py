"""A tiny command registry: ``python -m PHASE COMMAND [args]``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``
(and a module docstring whose first line is the help). Modules are imported only when their
command runs, so ``python -m vocab merge`` never imports torch through another command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import run_cli


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop ``--local_rank=N`` that the deepspeed launcher inserts before the command name.

    The launcher also sets the LOCAL_RANK environment variable, which is what the engine reads;
    keeping the flag would make ``deepspeed --module pretrain train`` fail to find the command.
    """
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith(("--local_rank=", "--local-rank=")):
            continue
        if arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            skip = True
            continue
        out.append(arg)
    return out


def main_for(prog: str, commands: dict[str, str], description: str, argv: list[str] | None = None) -> None:
    argv = strip_launcher_args(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        lines = [f"usage: python -m {prog} COMMAND [options]", "", description, "", "commands:"]
        width = max(10, *map(len, commands))
        lines += [f"  {name:<{width}} python -m {prog} {name} --help" for name in commands]
        print("\n".join(lines), file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(commands[name])
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog} {name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    run_cli(lambda: module.run(args))
