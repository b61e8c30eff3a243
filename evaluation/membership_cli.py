"""Was the benchmark in the model's training data? Loss-based membership scores (Min-K%++ and others),
for when the training text cannot be searched (a base model's) or to confirm what text overlap found.

    python -m evaluation membership --model runs/zh-pt/final --reference models/llama-2-7b \\
        --benchmark ceval=data/ceval --reading cmrc=data/cmrc2018_dev.json \\
        --calibrate corpora_manifests/shared_zh_pretrain.yaml --out runs/membership.json \\
        [--contamination runs/contamination.keys.json] [--labelled wikimia=wikimia.jsonl] [--eval-manifest YAML] \\
        [--k 0.2] [--max-chars 1000] [--max-items 2000] [--seed 0] [--device cuda] [--dtype bfloat16] [--batch-size 8]

Scores every item (C-Eval / CMMLU / MMLU items as question and lettered choices, every passage of a
reading set, every document of an ``--eval-manifest``) with one forward: ``loss``, ``zlib``, ``min_k``,
``min_k_plus_plus`` and, with ``--reference`` (the model the run started from), ``reference``: how
many bits per character cheaper the text became (evaluation/membership.py). A score says little on its
own; what it says is measured where the truth is known:

- ``--calibrate MANIFEST``: documents of the manifest's training part against its held-out slice (the
  run trained on the first, never saw the second): each method's AUC and the share of training
  documents it flags at 5% false positives, then each benchmark's share of items above that threshold.
  Held-out documents that share 13-unit grams with the training part are left out first (one scan of
  it, as ``evaluation contamination``; ``--calibrate-unchecked`` skips it).
  For a base model whose corpus is unknown, ``--calibrate FILE.jsonl`` of labelled texts instead (as
  WikiMIA: text from before its training cutoff as 1, from after as 0);
- ``--contamination REPORT`` (``evaluation contamination``): the items text overlap found in the
  training data against the clean ones, per benchmark;
- ``--labelled NAME=FILE``: JSON Lines ``{"text", "label": 1|0}`` of your own (WikiMIA's ``input`` too).

Every file is checked before the model loads. The results JSON holds every text's scores.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems

from .membership import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--reference", default=None, metavar="DIR",
                        help="a reference model folder (the run's base): adds the bits-per-character drop")
    parser.add_argument("--benchmark", action="append", default=[], metavar="NAME=DIR",
                        help="C-Eval / CMMLU / MMLU in its official layout (every split present); repeatable")
    parser.add_argument("--reading", action="append", default=[], metavar="NAME=FILE",
                        help="a reading set (SQuAD layout or .jsonl): each passage is a text")
    parser.add_argument("--eval-manifest", action="append", default=[], metavar="YAML",
                        help="a manifest whose every document is a text (repeatable)")
    parser.add_argument("--labelled", action="append", default=[], metavar="NAME=FILE",
                        help='JSON Lines {"text": ..., "label": 1|0} (1 = in the training data); repeatable')
    parser.add_argument("--calibrate", default=None, metavar="MANIFEST|JSONL",
                        help="the run's training manifest (its training part, seen, against its held-out slice), "
                             "or labelled JSON Lines as --labelled: the threshold at 5%% false positives")
    parser.add_argument("--calibrate-docs", type=int, default=300, help="documents of each part (300)")
    parser.add_argument("--calibrate-unchecked", action="store_true",
                        help="keep held-out documents that share text with the training part (skips a scan of it; "
                             "fine when the manifest excludes near-duplicates)")
    parser.add_argument("--workers", type=int, default=1, help="processes that scan the training part (as contamination)")
    parser.add_argument("--contamination", default=None, metavar="REPORT",
                        help="a report of `evaluation contamination` on these benchmarks: contaminated vs clean items")
    parser.add_argument("--k", type=float, default=0.2, help="Min-K%%'s share of lowest tokens (0.2)")
    parser.add_argument("--max-chars", type=int, default=1000, help="each text is cut to this many characters (1000)")
    parser.add_argument("--max-items", type=int, default=None, help="a seeded sample of each benchmark split or set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's positions)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--no-progress", action="store_true")


def _check_args(args) -> tuple[list, list, list]:
    from .base_cli import name_pairs
    from .contamination_cli import benchmark_specs

    problems: list[str] = []
    specs = benchmark_specs(args.benchmark, problems)
    readings = name_pairs(args.reading, "--reading", problems)
    labelled = name_pairs(args.labelled, "--labelled", problems)
    problems += [f"--reading {n}={f}: not a file" for n, f in readings if not Path(f).is_file()]
    problems += [f"--labelled {n}={f}: not a file" for n, f in labelled if not Path(f).is_file()]
    problems += [f"--eval-manifest {f}: not a file" for f in args.eval_manifest if not Path(f).is_file()]
    names = [n for n, _ in specs + readings + labelled] + (["calibration"] if args.calibrate else [])
    problems += [f"the name {n} is given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if not names and not args.eval_manifest:
        problems.append("give at least one --benchmark, --reading, --eval-manifest, --labelled or --calibrate")
    for flag, path in (("--calibrate", args.calibrate), ("--contamination", args.contamination),
                       ("--reference", args.reference)):
        if path and not Path(path).exists():
            problems.append(f"{flag} {path}: not found")
    if not 0 < args.k <= 1:
        problems.append(f"--k must be in (0, 1], got {args.k}")
    for flag, value, low in (("--max-chars", args.max_chars, 16), ("--calibrate-docs", args.calibrate_docs, 10),
                             ("--max-items", args.max_items, 1), ("--batch-size", args.batch_size, 1),
                             ("--workers", args.workers, 1),
                             ("--max-length", args.max_length, 8)):
        if value is not None and value < low:
            problems.append(f"{flag} must be >= {low}, got {value}")
    if Path(args.out).is_dir():
        problems.append(f"--out {args.out} is a folder; give a file path")
    raise_if_problems("membership settings", problems)
    return specs, readings, labelled


def _texts(args, specs, readings, labelled) -> tuple[list, dict, dict]:
    """Every text to score (each group sampled to --max-items), what was read, and the calibration's source."""
    from .contamination_cli import read_items
    from .membership_data import benchmark_texts, labelled_texts

    items, data = read_items(specs, args.eval_manifest, readings)
    statuses = _statuses(args.contamination, items, data) if args.contamination else None
    passages = frozenset(name for name, _ in readings)
    texts = _sampled(benchmark_texts(items, args.max_chars, statuses, passages), args.max_items, args.seed)
    for name, path in labelled:
        texts += _sampled(labelled_texts(name, path, args.max_chars), args.max_items, args.seed)
        data[name] = {"labelled": path}
    calibration, known = _calibration(args) if args.calibrate else ({}, [])
    texts += known
    if not texts:
        raise UserError("no texts to score")
    return texts, data, calibration


def _calibration(args) -> tuple[dict, list]:
    """What calibrates (its source and checksum), and its texts: labelled JSON Lines, or a manifest's training
    documents and the held-out ones that share no text with them."""
    from .membership_data import calibration_texts, labelled_texts, without_training_overlap

    if args.calibrate.endswith(".jsonl"):  # texts known in and out, e.g. from before and after a cutoff
        from zhllama.files import sha256_file

        texts = labelled_texts("calibration", args.calibrate, args.max_chars)
        return {"labelled": args.calibrate, "sha256": sha256_file(args.calibrate)}, texts
    from corpora.manifest import load_manifest

    manifest = load_manifest(args.calibrate)
    members, nonmembers = calibration_texts(manifest, args.calibrate_docs, args.max_chars, args.seed)
    dropped = None
    if not args.calibrate_unchecked:
        nonmembers, dropped = without_training_overlap(manifest, nonmembers, args.workers)
        print(f"calibration: {dropped} of {dropped + len(nonmembers)} held-out documents share text with the "
              "training part and are left out")
    if len(members) < 10 or len(nonmembers) < 10:
        raise UserError(f"--calibrate {args.calibrate}: {len(members)} training and {len(nonmembers)} held-out "
                        "documents; at least 10 of each are needed (does the manifest have a holdout slice?)")
    return {"manifest": args.calibrate, "fingerprint": manifest.fingerprint(),
            "held_out_sharing_training_text": dropped}, members + nonmembers


def _sampled(texts: list, max_items: int | None, seed: int) -> list:
    """At most ``max_items`` texts of each group, a seeded sample in their order."""
    if max_items is None:
        return texts
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        groups.setdefault(t.group, []).append(i)
    keep = set()
    for group, indices in groups.items():
        keep.update(indices if len(indices) <= max_items else random.Random(f"{seed}:{group}").sample(indices, max_items))
    return [t for i, t in enumerate(texts) if i in keep]


def _statuses(report: str, items: list, data: dict) -> dict:
    """(benchmark, split, key) -> clean | partial | contaminated; a benchmark the report did not check, or
    checked in other files, is refused (a missing check must never read as clean)."""
    import json

    from .contamination_cli import item_statuses

    try:
        checked = json.loads(Path(report).read_text(encoding="utf-8"))["data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--contamination {report}: not a report of `python -m evaluation contamination` ({e})") from None
    problems = []
    for name, read in data.items():
        theirs = checked.get(name)
        if theirs is None:
            problems.append(f"--contamination {report}: {name} was not checked (checked: {sorted(checked)})")
        elif sorted(theirs.get("sha256", {}).values()) != sorted(read.get("sha256", {}).values()) or \
                theirs.get("fingerprint") != read.get("fingerprint"):
            problems.append(f"--contamination {report}: {name} was checked in other files than these")
    raise_if_problems("membership contamination", problems)
    out = {}
    for benchmark, split in sorted({(it.benchmark, it.split) for it in items}):
        found = item_statuses(report, benchmark, split)
        out.update({(benchmark, split, it.key): found.get(it.key, "clean") for it in items
                    if (it.benchmark, it.split) == (benchmark, split)})
    return out


def run(args: argparse.Namespace) -> int:
    from zhllama.files import write_json_atomic
    from zhllama.model_fingerprint import model_fingerprint
    from zhllama.model_folder import require_model_folder

    from .membership_report import summarise, table

    specs, readings, labelled = _check_args(args)
    require_model_folder(args.model, "--model")
    if args.reference:
        require_model_folder(args.reference, "--reference")
    texts, data, calibration = _texts(args, specs, readings, labelled)
    scored = _score(args, args.model, texts)
    methods = METHODS
    if args.reference:
        scored = _with_reference(scored, _score(args, args.reference, texts, reference=True))
        methods = (*METHODS, "reference")
    try:
        groups = summarise(texts, scored, methods)
    except ValueError as e:
        raise UserError(f"--calibrate {args.calibrate}: {e}") from None
    result = {"model": str(args.model), "model_fingerprint": model_fingerprint(args.model),
              "reference": args.reference, "reference_fingerprint": args.reference and model_fingerprint(args.reference),
              "settings": {k: getattr(args, k) for k in ("k", "max_chars", "max_items", "seed", "calibrate_docs",
                                                           "max_length", "dtype")},
              "data": data, "contamination_report": args.contamination, "calibration": calibration or None,
              "groups": groups}
    write_json_atomic(args.out, result)
    print(table(groups))
    print(f"-> {args.out}")
    return 0


def _score(args, folder: str, texts: list, reference: bool = False) -> list:
    """Each text's TextScore on the model in ``folder`` (its own tokenizer), or with ``reference`` its bits per
    character only; None where it does not fit."""
    import gc

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .choice import pad_id_of
    from .membership import score_texts

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    text_config = getattr(config, "text_config", None) or config
    max_length = args.max_length or getattr(text_config, "max_position_embeddings", None) or 4096
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    print(f"scoring {len(texts):,} texts on {folder}{' (the reference)' if reference else ''}")
    strings = [t.text for t in texts]
    if reference:
        scored = _bits_per_char(model, tokenizer, strings, max_length, args)
    else:
        scored = score_texts(model, tokenizer, strings, k=args.k, batch_size=args.batch_size, device=args.device,
                             max_length=max_length, pad_id=pad_id_of(tokenizer), progress=not args.no_progress)
    del model
    gc.collect()
    return scored


def _bits_per_char(model, tokenizer, strings: list[str], max_length: int, args) -> list[float | None]:
    """Each text's bits per character (CCNet's document_bits: ``[BOS] ids``, as score_texts reads it); None
    for a text that does not fit the reference."""
    from corpora.perplexity import document_bits

    from .membership import fitting

    fits = [i for i, ok in enumerate(fitting(tokenizer, strings, max_length)) if ok]
    bits = document_bits(model, tokenizer, [strings[i] for i in fits], max_chars=max(map(len, strings)),
                         batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    out: list[float | None] = [None] * len(strings)
    for i, value in zip(fits, bits):
        out[i] = value
    return out


def _with_reference(scored: list, reference: list) -> list:
    """Adds ``reference`` = the reference's bits per character less the model's; a text that fits only one
    of the two models is left out of both."""
    import dataclasses

    out = []
    for mine, theirs in zip(scored, reference):
        if mine is None or theirs is None:
            out.append(None)
        else:
            out.append(dataclasses.replace(mine, scores={**mine.scores, "reference": theirs - mine.bits_per_char}))
    return out
