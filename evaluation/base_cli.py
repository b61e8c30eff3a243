"""Base-model numbers for a run, computed standalone on the base folder with its OWN tokenizer.

    python -m evaluation base --model BASE_DIR --out OUTPUT_DIR/eval_base.json \
        --set zh=corpora_manifests/zh.yaml --set en=corpora_manifests/en.yaml \
        --benchmark ceval=data/ceval --shots 5 [--max-items-per-subject N] [--device cuda] [--block-size 1024] \
        [--contamination ceval=runs/contamination.keys.json] [--reading cmrc=data/cmrc2018_dev.json] \
        [--math gsm8k=data/gsm8k/test.jsonl --math-shots-from data/gsm8k/train.jsonl] [--code humaneval=humaneval]

Each ``--set NAME=MANIFEST`` scores the manifest's held-out slice (the documents ``pretrain prepare``
puts in the validation split) as ``eval/NAME/bits_per_char`` and ``eval/NAME/loss``; ``eval=...``
gives the run's own validation split (``eval/bits_per_char``). Each ``--benchmark NAME=DIR`` is
scored as in training (use the run's eval.benchmarks settings). Write the file into the run's
output_dir before training starts, or point ``eval.base`` at it: the run then compares to these
numbers instead of measuring its starting model. ``--contamination NAME=REPORT`` (a report of
``python -m evaluation contamination``, as the run's ``eval.benchmarks[].contamination``) adds
``bench/NAME/clean_accuracy`` and ``contaminated_accuracy``, so a guard on them has a base. Each
``--reading NAME=FILE`` gives ``reading/NAME/answer_bits_per_char`` and ``greedy_answer`` as the run's
``eval.reading`` does (``--reading-shots``, ``--reading-questions``, ``--reading-seed`` as its settings);
each ``--math NAME=FILE`` gives ``math/NAME/solution_bits_per_char`` and ``answer_greedy`` as ``eval.math`` does
(``--math-shots``, ``--math-shots-from``, ``--math-items``, ``--math-seed``, ``--math-max-new-tokens``); each
``--code NAME=FILE`` (``humaneval`` for the pinned HumanEval) gives ``code/NAME/solution_bits_per_char`` as
``eval.code`` does (``--code-items``, ``--code-max-new-tokens``).
Bits per character compare across tokenizers, so the base before a vocabulary extension is a fair base.
"""
from __future__ import annotations

import argparse

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the base model folder (weights + its own tokenizer)")
    parser.add_argument("--out", required=True, help="usually OUTPUT_DIR/eval_base.json of the run")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=MANIFEST")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--contamination", action="append", default=[], metavar="NAME=REPORT",
                        help="a benchmark's contamination report: its clean and contaminated accuracy too")
    parser.add_argument("--reading", action="append", default=[], metavar="NAME=FILE",
                        help="a reading set (SQuAD layout) scored as eval.reading: reference answers read")
    parser.add_argument("--reading-shots", type=int, default=1, help="as eval.reading[].shots")
    parser.add_argument("--reading-questions", type=int, default=200, help="as eval.reading[].max_questions")
    parser.add_argument("--reading-seed", type=int, default=0, help="as eval.reading[].seed")
    parser.add_argument("--math", action="append", default=[], metavar="NAME=FILE",
                        help="a math set (GSM8K, CMATH, MGSM) scored as eval.math: reference solutions read")
    parser.add_argument("--math-shots", type=int, default=3, help="as eval.math[].shots")
    parser.add_argument("--math-shots-from", default=None, metavar="FILE", help="as eval.math[].shots_from")
    parser.add_argument("--math-items", type=int, default=200, help="as eval.math[].max_items")
    parser.add_argument("--math-seed", type=int, default=0, help="as eval.math[].seed")
    parser.add_argument("--math-max-new-tokens", type=int, default=512, help="as eval.math[].max_new_tokens")
    parser.add_argument("--code", action="append", default=[], metavar="NAME=FILE",
                        help="a code set (FILE: humaneval or HumanEval-layout JSON Lines) scored as eval.code")
    parser.add_argument("--code-items", type=int, default=None, help="as eval.code[].max_items")
    parser.add_argument("--code-max-new-tokens", type=int, default=512, help="as eval.code[].max_new_tokens")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--max-items-per-subject", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=1024, help="the run's prepare --block-size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def name_pairs(values: list[str], flag: str, problems: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` command-line values as pairs; a malformed one is added to ``problems``."""
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            problems.append(f"{flag} {v!r}: expected NAME=PATH")
        else:
            out.append((name, path))
    return out


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    problems: list[str] = []
    out = name_pairs(values, flag, problems)
    if problems:
        raise UserError(problems[0])
    return out


def run(args: argparse.Namespace) -> int:
    from .benchmarks import load_benchmark
    from .text_bpc import held_out_texts

    from .contamination_cli import item_statuses

    sets, benches = _pairs(args.set, "--set"), _pairs(args.benchmark, "--benchmark")
    readings, maths = _pairs(args.reading, "--reading"), _pairs(args.math, "--math")
    codes = _pairs(args.code, "--code")
    reports = dict(_pairs(args.contamination, "--contamination"))
    if not sets and not benches and not readings and not maths and not codes:
        raise UserError("nothing to measure: give --set NAME=MANIFEST, --benchmark NAME=DIR, --reading NAME=FILE, "
                        "--math NAME=FILE and/or --code NAME=FILE")
    unknown = sorted(set(reports) - {name for name, _ in benches})
    if unknown:
        raise UserError(f"--contamination {unknown}: no --benchmark of that name")
    texts = {name: held_out_texts(path) for name, path in sets}  # every input checked before the model loads
    loaded = [(name, load_benchmark(name, path, "test" if name == "cmmlu" else "val", args.shots,
                                    args.max_items_per_subject)) for name, path in benches]
    statuses = {name: item_statuses(reports[name], name, bench.split) for name, bench in loaded if name in reports}
    from evaluation.reading_data import read_reading_set

    reading_sets = {name: read_reading_set(path) for name, path in readings}
    from .math_data import read_math_set

    for path in [p for _, p in maths] + ([args.math_shots_from] if maths and args.math_shots_from else []):
        read_math_set(path)  # checked before the model loads
    from .code_data import builtin_file, read_code_set

    code_sets = {name: read_code_set(builtin_file(path, log=lambda *_: None) if path == "humaneval" else path)
                 for name, path in codes}  # checked (and fetched) before the model loads
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zhllama.files import sha256_file, write_json_atomic

    from .choice import evaluate_benchmark
    from .results import by_contamination, metrics_of
    from .text_bpc import text_bits

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    metrics: dict[str, float] = {}
    for name, docs in texts.items():
        got = text_bits(model, tok, docs, args.block_size, args.batch_size, args.device)
        prefix = "eval/" if name == "eval" else f"eval/{name}/"
        metrics.update({prefix + "loss": got["loss"], prefix + "bits_per_char": got["bits_per_char"]})
    for name, bench in loaded:
        summary, preds = evaluate_benchmark(model, tok, bench, batch_size=args.batch_size, device=args.device,
                                            max_length=getattr(model.config, "max_position_embeddings", None))
        if name in statuses:
            summary["contamination"] = by_contamination(preds, statuses[name])
        metrics.update(metrics_of(name, summary))
    asked = {}
    for name, whole in reading_sets.items():
        got = _reading_metrics(args, model, tok, whole)
        metrics.update({f"reading/{name}/{k}": v for k, v in got.items() if k != "items" and v is not None})
        asked[name] = len(got["items"])
    math_asked = {}
    for name, path in maths:
        got = _math_metrics(args, model, tok, path)
        metrics.update({f"math/{name}/{k}": v for k, v in got.items() if k != "items" and v is not None})
        math_asked[name] = len(got["items"])
    code_asked = {}
    for name, code_set in code_sets.items():
        got = _code_metrics(args, model, tok, code_set)
        metrics.update({f"code/{name}/{k}": v for k, v in got.items() if k != "items" and v is not None})
        code_asked[name] = len(got["items"])
    base = {"source": f"{args.model} with its own tokenizer (python -m evaluation base)", "model": str(args.model),
            "reading": {name: {"file": path, "sha256": sha256_file(path), "shots": args.reading_shots,
                               "questions": asked[name], "seed": args.reading_seed} for name, path in readings},
            "math": {name: {"file": path, "sha256": sha256_file(path), "shots": args.math_shots,
                            "shots_from": args.math_shots_from, "problems": math_asked[name], "seed": args.math_seed,
                            "max_new_tokens": args.math_max_new_tokens}
                     for name, path in maths},
            "code": {name: {"file": str(c.path), "sha256": sha256_file(c.path), "tasks": code_asked[name],
                            "max_new_tokens": args.code_max_new_tokens} for name, c in code_sets.items()},
            "sets": dict(sets), "benchmarks": dict(benches), "contamination": reports, "shots": args.shots,
            "max_items_per_subject": args.max_items_per_subject, "block_size": args.block_size, "metrics": metrics}
    write_json_atomic(args.out, base)
    for key, value in metrics.items():
        print(f"{key}\t{value:.4f}")
    print(f"-> {args.out}")
    return 0


def _reading_metrics(args, model, tokenizer, whole) -> dict:
    """A reading set as the run's Watch scores it (evaluation.reading.reference_prompts)."""
    from .answer_scorer import score_answers
    from .choice import pad_id_of
    from .reading import reference_metrics, reference_prompts

    positions = getattr(model.config, "max_position_embeddings", None) or 4096
    prompts, requests = reference_prompts(tokenizer, whole, args.reading_shots, args.reading_questions,
                                          args.reading_seed, positions)
    scores = score_answers(model, requests, args.batch_size, args.device, pad_id_of(tokenizer))
    return reference_metrics(prompts, scores, whole.language)


def _math_metrics(args, model, tokenizer, path: str) -> dict:
    """A math set as the run's Watch scores it (evaluation.math_eval.reference_prompts)."""
    from .choice import pad_id_of
    from .math_data import read_math_set
    from .math_eval import reference_metrics, reference_prompts, score_references

    whole = read_math_set(path)
    source = read_math_set(args.math_shots_from) if args.math_shots_from else whole
    positions = getattr(model.config, "max_position_embeddings", None) or 4096
    prompts, requests = reference_prompts(tokenizer, whole, [i for i in source.items if i.reasoning], source is whole,
                                          args.math_shots, args.math_items, args.math_seed, positions,
                                          args.math_max_new_tokens)
    scores = score_references(model, requests, args.batch_size, args.device, pad_id_of(tokenizer))
    return reference_metrics(prompts, scores, whole.language)


def _code_metrics(args, model, tokenizer, code_set) -> dict:
    """A code set as the run's Watch scores it (evaluation.code_eval.reference_prompts)."""
    from .answer_scorer import score_answers
    from .choice import pad_id_of
    from .code_eval import reference_metrics, reference_prompts

    positions = getattr(model.config, "max_position_embeddings", None) or 4096
    prompts, requests = reference_prompts(tokenizer, code_set, args.code_items, positions, args.code_max_new_tokens)
    return reference_metrics(prompts, score_answers(model, requests, args.batch_size, args.device, pad_id_of(tokenizer)))
