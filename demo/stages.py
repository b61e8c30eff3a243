"""Content-keyed stages: run a few commands, record what they did, reuse them when nothing changed.

A stage is a list of shell-free commands (argv lists) with the files it reads and the folder it
writes. Its cache key is the sha256 of its settings, of every input file's bytes and of the
source code of the packages it runs, so a changed corpus, tokenizer, setting or program reruns it
and anything else is reused. ``WORK/NN_name/stage.json`` records the key, each exact command
(shell-quoted, ready to paste), its wall time and exit status, and the metrics the stage
extracted; the report is built from these files only.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from zhllama.files import sha256_file, sha256_json, write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGE_FILE = "stage.json"
SKIPPED = "skipped"  # an input was not produced because an earlier stage failed


@dataclasses.dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # added to the environment
    stdout_to: Path | None = None  # save stdout to this file (e.g. a --json report)

    def shell(self) -> str:
        """The command as a user would paste it (``python`` = the interpreter running the demo)."""
        argv = ["python" if a == sys.executable else a for a in self.argv]
        text = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        text = (text + " " if text else "") + shlex.join(argv)
        return text + (f" > {shlex.quote(str(self.stdout_to))}" if self.stdout_to else "")


@dataclasses.dataclass
class Stage:
    name: str  # folder name under WORK, e.g. "02_vocab"
    title: str  # a line for the console and the report
    folder: Path
    settings: dict[str, Any]  # everything that changes the result and is not an input file
    inputs: dict[str, Path]  # files or folders read (hashed into the key)
    commands: list[Command]
    code: list[str]  # packages or files whose source is part of the key, e.g. ["vocab", "demo/split.py"]
    collect: Callable[["Stage"], dict[str, Any]] = lambda stage: {}  # metrics read from the outputs
    prepare: Callable[["Stage"], None] | None = None  # writes generated inputs (manifests, configs)

    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)


def digest_path(path: Path) -> str:
    """sha256 of a file, or of a folder's (relative path, sha256) listing; logs and caches excluded."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return "missing"
    listing = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_file() and not _ignored(rel):
            listing.append([rel, sha256_file(p)])
    return sha256_json(listing)


def _ignored(rel: str) -> bool:
    parts = rel.split("/")
    return any(part.startswith(".") or part in ("__pycache__", "wandb", "tensorboard", "logs") for part in parts)


def code_digest(paths: list[str]) -> str:
    """sha256 of the source files (packages or single files, relative to the repo) a stage runs."""
    files = []
    for rel in sorted(paths):
        root = REPO_ROOT / rel
        for p in [root] if root.is_file() else sorted(root.rglob("*")):
            if p.is_file() and p.suffix in (".py", ".yaml", ".json") and "__pycache__" not in p.parts:
                files.append([p.relative_to(REPO_ROOT).as_posix(), sha256_file(p)])
    return sha256_json(files)


def stage_key(stage: Stage) -> str:
    return sha256_json({
        "stage": stage.name,
        "settings": stage.settings,
        "inputs": {k: digest_path(v) for k, v in sorted(stage.inputs.items())},
        "code": code_digest([*stage.code, "zhllama"]),
        "commands": [c.shell().replace(str(stage.folder), "<stage>") for c in stage.commands],
    })


def load_record(folder: Path) -> dict[str, Any] | None:
    import json

    path = folder / STAGE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


class Runner:
    """Runs stages in order, printing progress; keeps every record for the report."""

    def __init__(self, work: Path, force: bool = False, log: Callable[[str], None] = print):
        self.work = work
        self.force = force
        self.log = log
        self.records: dict[str, dict[str, Any]] = {}

    def skip(self, stage: Stage, reason: str) -> dict[str, Any]:
        record = {"name": stage.name, "title": stage.title, "status": SKIPPED, "reason": reason,
                  "commands": [c.shell() for c in stage.commands], "seconds": 0.0, "metrics": {}}
        self._clear(stage)  # outputs of an older run must not look current
        stage.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stage.folder / STAGE_FILE, record)
        self.records[stage.name] = record
        self.log(f"[demo] {stage.name}: {SKIPPED} ({reason})")
        return record

    def run(self, stage: Stage) -> dict[str, Any]:
        absent = [k for k, v in stage.inputs.items() if not Path(v).exists()]
        if absent:
            return self.skip(stage, f"inputs {', '.join(absent)} were not produced by an earlier stage")
        if stage.prepare is not None:
            stage.folder.mkdir(parents=True, exist_ok=True)
            stage.prepare(stage)
        key = stage_key(stage)
        old = load_record(stage.folder)
        if not self.force and old and old.get("key") == key and old.get("status") == "done":
            self.log(f"[demo] {stage.name}: inputs unchanged (key {key[:12]}), reusing {stage.folder}")
            old["reused"] = True
            self.records[stage.name] = old
            return old
        self._clear(stage)
        self.log(f"\n[demo] ===== {stage.name}: {stage.title} =====")
        record: dict[str, Any] = {"name": stage.name, "title": stage.title, "key": key, "status": "running",
                                  "settings": stage.settings,
                                  "inputs": {k: str(v) for k, v in stage.inputs.items()},
                                  "commands": [], "seconds": 0.0, "metrics": {}, "reused": False}
        start = time.time()
        for i, cmd in enumerate(stage.commands):
            log_path = stage.path("logs", f"{i:02d}.log")
            self.log(f"[demo] $ {cmd.shell()}")
            t0 = time.time()
            code = run_command(cmd, log_path)
            entry = {"command": cmd.shell(), "seconds": round(time.time() - t0, 1), "exit_code": code,
                     "log": str(log_path)}
            record["commands"].append(entry)
            if code != 0:
                record.update(status="failed", seconds=round(time.time() - start, 1),
                              error=f"command {i + 1} exited with {code}; see {log_path}")
                write_json_atomic(stage.folder / STAGE_FILE, record)
                self.records[stage.name] = record
                self.log(f"[demo] {stage.name}: FAILED ({record['error']})")
                return record
        record["metrics"] = stage.collect(stage)
        record["seconds"] = round(time.time() - start, 1)
        record["status"] = "done"
        write_json_atomic(stage.folder / STAGE_FILE, record)
        self.records[stage.name] = record
        self.log(f"[demo] {stage.name}: done in {record['seconds']:.0f} s")
        return record

    def _clear(self, stage: Stage) -> None:
        """Forget stale outputs: the phase CLIs refuse existing folders, and resume must not pick them up."""
        if stage.folder.exists():
            for child in stage.folder.iterdir():
                if child.name in ("inputs",):  # generated by prepare() just now
                    continue
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def run_command(cmd: Command, log_path: Path) -> int:
    """Run one command, streaming its output to the console and to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **cmd.env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    out_fh = open(cmd.stdout_to, "wb") if cmd.stdout_to else None
    try:
        with open(log_path, "wb") as log_fh:
            proc = subprocess.Popen(cmd.argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE if out_fh else subprocess.STDOUT)
            stream = proc.stderr if out_fh else proc.stdout
            if out_fh:  # stdout is data (JSON): save it; stream stderr for progress
                import threading

                def copy_stdout():
                    for block in iter(lambda: proc.stdout.read(65536), b""):
                        out_fh.write(block)

                reader = threading.Thread(target=copy_stdout, daemon=True)
                reader.start()
            for block in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
                log_fh.write(block)
                log_fh.flush()  # the log is readable while the command runs
                sys.stdout.buffer.write(block)
                sys.stdout.flush()
            code = proc.wait()
            if out_fh:
                reader.join()
    finally:
        if out_fh:
            out_fh.close()
    return code
