"""Running generated programs: each in a fresh Python process, with limits, in a folder of its own.

Why a process per program, started by a launcher that limits itself first: a completion may loop forever,
allocate without end, print without end, or exit the interpreter — none of it may stop the evaluation or take
the machine down. The launcher (``python -I``: no user site, no PYTHON* variables) sets its address space
(``memory_mb``), CPU seconds and file size limits and then runs the program as ``__main__`` in an empty
temporary folder, with a bare environment and no stdin. A program passes when it exits 0 within ``timeout``
seconds of wall time; the process group is killed at the limit.

This is not a security boundary: a program can still read files and open sockets as the user running the
evaluation. Models you do not trust, run in a throwaway container or VM (``--allow-execution`` says so).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PASSED = "passed"
TIMED_OUT = "timed out"
OUTPUT_LIMIT = 16 * 2**20  # bytes a program may write to a file (its stderr included)

LAUNCHER = """\
import resource, sys
path, memory, seconds, output, done = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
resource.setrlimit(resource.RLIMIT_FSIZE, (output, output))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = [path]
with open(path, encoding="utf-8") as fh:
    source = fh.read()
exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
open(done, "w").close()  # the program ran to its end: an exit(0) half way is no pass
"""


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """What runs for one completion: HumanEval's ``prompt + completion``, the tests, then the check call."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def _verdict(returncode: int, stderr: str, finished: bool, flooded: bool) -> str:
    if returncode == 0:
        return PASSED if finished else "failed: exited before the tests ran to their end"
    if returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        return TIMED_OUT
    if returncode == -signal.SIGXFSZ or flooded:
        return "failed: wrote more than the output limit"
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return f"failed: exit status {returncode}"
    return f"failed: {lines[-1][:300]}"


def run_program(source: str, timeout: float = 3.0, memory_mb: int = 2048) -> str:
    """``passed``, ``timed out`` or ``failed: <the last line of the error>``."""
    with tempfile.TemporaryDirectory(prefix="zhllama-code-") as work:
        program, errors, done = Path(work) / "program.py", Path(work) / "stderr.txt", Path(work) / ".done"
        program.write_text(source, encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "PYTHONHASHSEED": "0"}
        command = [sys.executable, "-I", "-B", "-c", LAUNCHER, str(program), str(memory_mb * 2**20),
                   str(int(timeout) + 1), str(OUTPUT_LIMIT), str(done)]
        with open(errors, "w", encoding="utf-8") as err:
            proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:  # children it started go too
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if returncode is None:
            return TIMED_OUT
        flooded = errors.stat().st_size >= OUTPUT_LIMIT
        with open(errors, "rb") as fh:
            fh.seek(max(0, errors.stat().st_size - 4000))
            tail = fh.read().decode("utf-8", errors="replace")
        return _verdict(returncode, tail, done.is_file(), flooded)


def run_programs(sources: list[str], timeout: float = 3.0, memory_mb: int = 2048, jobs: int | None = None,
                 progress=None) -> list[str]:
    """The verdict of every program, ``jobs`` at a time (default: the CPUs), in order."""
    jobs = max(1, jobs or os.cpu_count() or 1)

    def one(source: str) -> str:
        verdict = run_program(source, timeout, memory_mb)
        if progress is not None:
            progress.update(1)
        return verdict
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, sources))
