"""Tokenization throughput: the Chinese-LLaMA-Alpaca datasets pipeline vs `python -m pretrain prepare`.

    python benchmarks/prepare_throughput.py [--sizes-mb 20 60] [--num-proc 2] [--repeat 1] [--tokenizer DIR]

On the same corpus (the Chinese text of ../shared/data repeated to each size) and the same merged
tokenizer (default: Chinese-LLaMA-2's published 55,296-piece tokenizer from ../shared/data, or
--tokenizer DIR, e.g. the output of `python -m vocab merge`), run side by side, each in its own
subprocess so peak memory is measured fairly (RSS of the whole process tree, sampled every 50 ms):

(a) the pipeline of Chinese-LLaMA-Alpaca's run_clm_pt_with_peft.py, re-implemented plainly:
    datasets load_dataset("text") -> map(tokenize, batched=True) -> map(group_texts, batched=True)
    -> save_to_disk, with a fresh datasets cache and the same number of processes;
(b) python -m pretrain prepare --num-proc K.

Prints tokens/s of each (pipeline time, and end to end including interpreter start), the ratio,
and peak RSS. Target: (b) >= 3x (a), with (b)'s peak memory flat across corpus sizes.

On a machine shared with other jobs wall time depends on what the others leave free, so the CPU
seconds of each process tree are printed too, and ``--repeat N`` runs (a) and (b) N times each,
alternating, and keeps each side's best (fewest seconds) run: the same rule for both.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZHLLAMA_SHARED_DATA", REPO.parent / "shared" / "data"))
CHINESE = ["pretrain/cmrc2018_dev_contexts.txt", "pretrain/drcd_dev_contexts_zh_hant.txt",
           "pretrain/libai_zhwiki_doc.txt"]


def build_corpus(path: Path, megabytes: int) -> int:
    """Concatenate the Chinese files of ../shared/data until the file is at least ``megabytes``."""
    chunk = b"".join((SHARED / name).read_bytes() for name in CHINESE)
    with open(path, "wb") as fh:
        written = 0
        while written < megabytes * 1_000_000:
            fh.write(chunk)
            written += len(chunk)
    return written


def build_tokenizer(out: Path) -> Path:
    from transformers import LlamaTokenizer

    src = SHARED / "tokenizers/chinese_llama_alpaca_2"
    tok = LlamaTokenizer.from_pretrained(str(src))  # its tokenizer_config names LlamaTokenizer, add_bos
    tok.save_pretrained(str(out))  # writes tokenizer.json: both pipelines load the same fast tokenizer
    return out


def child_datasets(corpus: str, tokenizer: str, out: str, block_size: int, num_proc: int) -> None:
    """(a): the Chinese-LLaMA-Alpaca pretraining data pipeline, plainly."""
    from itertools import chain

    from datasets import load_dataset
    from transformers import AutoTokenizer

    started = time.time()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cache = os.path.join(out, "cache")

    def tokenize_function(examples):
        return tok(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(concatenated[list(examples.keys())[0]])
        if total >= block_size:
            total = (total // block_size) * block_size
        result = {k: [t[i:i + block_size] for i in range(0, total, block_size)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    raw = load_dataset("text", data_files=corpus, cache_dir=cache, keep_in_memory=False)
    tokenized = raw.map(tokenize_function, batched=True, num_proc=num_proc, remove_columns="text",
                        keep_in_memory=False, desc="tokenize")
    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc, keep_in_memory=False, desc="group")
    grouped.save_to_disk(os.path.join(out, "processed"))
    seconds = time.time() - started
    # Counted after the clock stops: tokens tokenized (grouping drops the remainder of each batch).
    column = tokenized["train"].data.column("input_ids")
    tokens = sum(len(chunk.values) for chunk in column.chunks)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "blocks": len(grouped["train"])}))


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    """Run ``cmd``; return (wall s, CPU s of its whole process tree, peak RSS bytes of the tree, stdout).

    CPU seconds are the fair measure on a machine shared with other jobs: wall time there
    depends on how much of the cores the others left us.
    """
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, cwd=REPO)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [parent] + parent.children(recursive=True)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child and every process it waited for
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, cpu, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the best of each is kept")
    parser.add_argument("--tokenizer", help="merged HF tokenizer folder (default: Chinese-LLaMA-2's, from ../shared)")
    parser.add_argument("--work", help="work folder (default: a temp folder, removed)")
    parser.add_argument("--child", choices=["datasets"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_datasets(args.corpus, args.tokenizer, args.out, args.block_size, args.num_proc)
        return
    if not (SHARED / "PROVENANCE.md").is_file():
        raise SystemExit(f"needs the Chinese text of {SHARED} (set ZHLLAMA_SHARED_DATA)")
    work = Path(args.work or tempfile.mkdtemp(prefix="prepare-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_DATASETS_CACHE": str(work / "hf-cache"), "OMP_NUM_THREADS": "1"}
    try:
        tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tokenizer")
        print(f"tokenizer {tokenizer}; {args.num_proc} processes each; block size {args.block_size}; "
              f"best of {args.repeat} runs each; "
              f"{os.cpu_count()} cores on this machine")
        rows = []
        for mb in args.sizes_mb:
            corpus = work / f"zh_{mb}mb.txt"
            size = build_corpus(corpus, mb)
            manifest = work / f"zh_{mb}mb.yaml"
            digest = hashlib.sha256(corpus.read_bytes()).hexdigest()
            manifest.write_text(f"name: bench_{mb}mb\nsources:\n  - name: zh\n    path: {corpus.name}\n"
                                f"    format: txt\n    language: zh\n    license: CC BY-SA\n    sha256: {digest}\n")
            out_a, out_b = work / f"a_{mb}", work / f"b_{mb}"
            best_a = best_b = None
            for _ in range(args.repeat):  # alternate (a) and (b) so both see the same load
                shutil.rmtree(out_a, ignore_errors=True)
                shutil.rmtree(out_b, ignore_errors=True)
                shutil.rmtree(work / "hf-cache", ignore_errors=True)  # (a) starts from a fresh cache
                wall_a, cpu_a, rss_a, stdout = run_measured(
                    [sys.executable, __file__, "--child", "datasets", "--corpus", str(corpus), "--tokenizer",
                     str(tokenizer), "--out", str(out_a), "--block-size", str(args.block_size),
                     "--num-proc", str(args.num_proc)], env)
                a = {**json.loads(stdout.strip().splitlines()[-1]), "cpu": cpu_a, "wall": wall_a, "rss": rss_a}
                wall_b, cpu_b, rss_b, _ = run_measured(
                    [sys.executable, "-m", "pretrain", "prepare", "--manifest", str(manifest), "--tokenizer",
                     str(tokenizer), "--block-size", str(args.block_size), "--out", str(out_b), "--num-proc",
                     str(args.num_proc), "--no-progress"], env)
                report = json.loads((out_b / "prepare_report.json").read_text())
                b = {"tokens": report["tokens"], "seconds": report["seconds"], "cpu": cpu_b, "wall": wall_b,
                     "rss": rss_b}
                best_a = a if best_a is None else _best(best_a, a)
                best_b = b if best_b is None else _best(best_b, b)
            a, b = best_a, best_b
            rows.append((mb, size, a, a["wall"], a["rss"], b, b["wall"], b["rss"]))
            shutil.rmtree(out_a, ignore_errors=True)
            shutil.rmtree(work / "hf-cache", ignore_errors=True)
            _print_row(rows[-1])
        print("\nsummary")
        for row in rows:
            _print_row(row)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _best(x: dict, y: dict) -> dict:
    """Per measure, the better of two runs of one side (their token counts are equal)."""
    return {**x, "seconds": min(x["seconds"], y["seconds"]), "cpu": min(x["cpu"], y["cpu"]),
            "wall": min(x["wall"], y["wall"]), "rss": max(x["rss"], y["rss"])}


def _print_row(row) -> None:
    mb, size, a, wall_a, rss_a, b, wall_b, rss_b = row
    ta, tb = a["tokens"] / a["seconds"], b["tokens"] / b["seconds"]
    ea, eb = a["tokens"] / wall_a, b["tokens"] / wall_b
    print(f"{size / 1e6:.1f} MB: (a) datasets {a['tokens']:,} tokens {a['seconds']:.1f} s = {ta:,.0f} tokens/s "
          f"(end to end {wall_a:.1f} s, {ea:,.0f}/s), peak RSS {rss_a / 2**20:,.0f} MiB | "
          f"(b) prepare {b['tokens']:,} tokens {b['seconds']:.1f} s = {tb:,.0f} tokens/s "
          f"(end to end {wall_b:.1f} s, {eb:,.0f}/s), peak RSS {rss_b / 2**20:,.0f} MiB | "
          f"ratio b/a {tb / ta:.2f}x (end to end {eb / ea:.2f}x)")
    ca, cb = a["tokens"] / a["cpu"], b["tokens"] / b["cpu"]
    print(f"    per CPU second of the whole process tree, end to end: (a) {a['cpu']:.1f} CPU s = {ca:,.0f} tokens/CPU-s"
          f" | (b) {b['cpu']:.1f} CPU s = {cb:,.0f} tokens/CPU-s | ratio b/a {cb / ca:.2f}x; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
