"""Did the context extension work? Loss by position on held-out text and passkey retrieval, per length.

    python -m evaluation long-context --model outputs/pt-16k/final --lengths 2048,4096,8192,16384 \
        --set zh=corpora_manifests/shared_zh_pretrain.yaml --out runs/long_context.json \
        [--windows 4] [--whole-documents] [--depths 0,0.25,0.5,0.75,1] [--trials 4] [--language zh|en] \
        [--passkey-lengths 4096,16384 | --passkey-lengths none] [--chat] [--rope-scaling '{rope_type: linear, factor: 4}'] \
        [--device cuda] [--dtype bfloat16] [--batch-size 1]

Run it on the model before and after the extension (the same keys and text are used): the base's
loss rises sharply past its positions and its passkey answers fail there; the extended model's loss
keeps falling with more context and it finds the key at every depth. ``--rope-scaling`` reads a
model at a scaling it was not saved with (linear or yarn, as ``model.rope_scaling`` in training), to
see where training starts from. Lengths past the positions the model covers are evaluated and
marked ``*``. Every setting and text is checked, and every prompt built, before the model loads;
the results JSON (settings, per-length and per-stretch loss, every passkey answer) is written whole.
"""
from __future__ import annotations

import argparse

from zhllama.errors import raise_if_problems

DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model folder (weights + tokenizer)")
    parser.add_argument("--lengths", required=True, help="context lengths in tokens, ascending: 2048,4096,8192")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=MANIFEST",
                        help="loss by position on the manifest's held-out slice (repeatable)")
    parser.add_argument("--windows", type=int, default=4, help="windows of the longest length per set")
    parser.add_argument("--whole-documents", action="store_true",
                        help="one window per document at least that long, instead of documents joined")
    parser.add_argument("--passkey-lengths", default=None,
                        help="prompt lengths for passkey retrieval (default: --lengths; 'none' to skip)")
    parser.add_argument("--depths", default=DEFAULT_DEPTHS, help="where the key sits: 0 = start, 1 = end")
    parser.add_argument("--trials", type=int, default=4, help="keys per length and depth")
    parser.add_argument("--digits", type=int, default=5, help="digits of a key")
    parser.add_argument("--language", default="zh", choices=["zh", "en"], help="language of the passkey text")
    parser.add_argument("--chat", action="store_true",
                        help="ask in a user turn of the model's chat template (SFT / instruct models)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the keys")
    parser.add_argument("--rope-scaling", default=None, metavar="YAML",
                        help="read the model with this RoPE scaling, e.g. '{rope_type: linear, factor: 4}' "
                             "or another base frequency, '{rope_theta: 1000000}'")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--no-progress", action="store_true")


def _ints(text: str, flag: str, problems: list[str]) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        problems.append(f"{flag} {text!r}: expected comma-separated whole numbers, e.g. 2048,4096")
        return []
    if not values or any(v < 2 for v in values) or values != sorted(set(values)):
        problems.append(f"{flag} {text!r}: expected ascending, distinct lengths of at least 2 tokens")
        return []
    return values


def parse_depths(text: str, problems: list[str]) -> list[float]:
    """``--depths`` as numbers from 0 (start) to 1 (end); a bad value is added to ``problems``."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 <= v <= 1 for v in values) or len(set(values)) != len(values):
        problems.append(f"--depths {text!r}: expected distinct numbers from 0 (start) to 1 (end), e.g. 0,0.5,1")
        return []
    return values


def _rope_scaling(text: str | None, problems: list[str]) -> dict:
    import yaml

    from zhllama.rope import validate

    if text is None:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problems.append(f"--rope-scaling {text!r}: not YAML ({e.__class__.__name__})")
        return {}
    if not isinstance(value, dict):
        problems.append(f"--rope-scaling {text!r}: expected a mapping, e.g. '{{rope_type: linear, factor: 4}}'")
        return {}
    found = validate(value, None, training=False)
    problems += [f"--rope-scaling: {p.removeprefix('rope_scaling.')}" for p in found]
    return value


def _settings(args: argparse.Namespace) -> dict:
    from .base_cli import name_pairs

    problems: list[str] = []
    lengths = _ints(args.lengths, "--lengths", problems)
    skip = args.passkey_lengths is not None and args.passkey_lengths.strip().lower() == "none"
    passkey = [] if skip else (_ints(args.passkey_lengths, "--passkey-lengths", problems)
                               if args.passkey_lengths is not None else lengths)
    depths = parse_depths(args.depths, problems)
    sets = name_pairs(args.set, "--set", problems)
    for flag, value, low in (("--windows", args.windows, 1), ("--trials", args.trials, 1),
                             ("--batch-size", args.batch_size, 1), ("--digits", args.digits, 1)):
        if value < low:
            problems.append(f"{flag} must be >= {low}, got {value}")
    if args.digits > 18:
        problems.append(f"--digits must be <= 18, got {args.digits}")
    if not sets and not passkey:
        problems.append("nothing to measure: give --set NAME=MANIFEST and/or passkey lengths")
    scaling = _rope_scaling(args.rope_scaling, problems)
    raise_if_problems("long-context settings", problems)
    return {"lengths": lengths, "passkey_lengths": passkey, "depths": depths, "sets": sets, "rope_scaling": scaling}


def _inputs(args: argparse.Namespace, settings: dict, tokenizer) -> tuple[dict, list]:
    """Every window and prompt, built before any weight loads (a short text or length fails here)."""
    from .long_context import passkey_prompts, text_windows
    from .text_bpc import held_out_texts

    windows, problems = {}, []
    longest = settings["lengths"][-1]
    for name, manifest in settings["sets"]:
        got, available = text_windows(tokenizer, held_out_texts(manifest), longest, args.windows, args.whole_documents)
        if not got:
            kind = "documents of" if args.whole_documents else "windows of"
            problems.append(f"--set {name}: the held-out slice of {manifest} holds no {kind} {longest} tokens")
        elif available < args.windows:
            print(f"set {name}: {available} of the {args.windows} windows of {longest} tokens asked for")
        windows[name] = got
    raise_if_problems("long-context inputs", problems)
    prompts = passkey_prompts(tokenizer, settings["passkey_lengths"], settings["depths"], args.trials,
                              args.language, args.digits, args.seed, args.chat)
    return windows, prompts


def _load(args: argparse.Namespace, scaling: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from zhllama.rope import scaled_config

    config = scaled_config(str(args.model), scaling, None)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    return AutoModelForCausalLM.from_pretrained(args.model, config=config, dtype=dtype).to(args.device).eval(), config


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from zhllama.model_folder import require_model_folder

    settings = _settings(args)
    require_model_folder(args.model, "--model")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    windows, prompts = _inputs(args, settings, tokenizer)
    model, config = _load(args, settings["rope_scaling"])
    text = getattr(config, "text_config", None) or config
    positions = getattr(text, "max_position_embeddings", None)
    from zhllama.model_fingerprint import model_fingerprint

    result = {"model": str(args.model), "model_fingerprint": model_fingerprint(args.model), "positions": positions,
              "rope_scaling": settings["rope_scaling"] or None,
              "settings": {k: v for k, v in vars(args).items() if k not in ("model", "out", "no_progress")},
              "loss": _losses(args, settings, model, windows, positions)}
    if prompts:
        result["passkey"] = _passkey(args, settings, model, tokenizer, prompts)
    from zhllama.files import write_json_atomic

    write_json_atomic(args.out, result)
    print(table(result))
    print(f"-> {args.out}")
    return 0


def _losses(args, settings, model, windows: dict, positions: int | None) -> dict:
    from tqdm import tqdm

    from .long_context import loss_by_position

    out = {}
    for name, got in windows.items():
        with tqdm(total=len(got), desc=f"loss {name}", disable=args.no_progress) as bar:
            out[name] = loss_by_position(model, got, settings["lengths"], positions, args.batch_size,
                                         args.device, bar)
    return out


def _passkey(args, settings, model, tokenizer, prompts) -> dict:
    from tqdm import tqdm

    from .long_context import greedy_answers, passkey_summary

    # the key's tokens and a few more: an answer may open with a space or a word (a chat reply: a sentence)
    room = len(tokenizer(" " + "9" * args.digits, add_special_tokens=False).input_ids) + (16 if args.chat else 4)
    with tqdm(total=len(prompts), desc="passkey", disable=args.no_progress) as bar:
        answers = greedy_answers(model, tokenizer, [p.ids for p in prompts], room, args.batch_size, args.device, bar)
    summary = passkey_summary(prompts, answers, settings["depths"])
    summary["language"] = args.language
    return summary



def table(result: dict) -> str:
    """The results as text: loss per length and per stretch of positions, passkey found per length and depth."""
    positions = result["positions"]
    scaling = result["rope_scaling"]
    lines = [f"{result['model']}: {positions} positions"
             + (f" (read with RoPE {scaling['rope_type']} x{scaling['factor']})" if scaling else "")
             + "; * = past them"]
    for name, got in result["loss"].items():
        lines.append(f"\nloss (nats/token) of set {name}, {got['windows']} windows, at context length:")
        lines.append("  ".join(f"{n}{'*' if row['beyond_positions'] else ''}: {row['loss']:.4f}"
                               for n, row in got["by_length"].items()))
        lines.append("per stretch of positions:")
        lines.append("  ".join(f"{a}-{b}{'*' if row['beyond_positions'] else ''}: {row['loss']:.4f}"
                               for row in got["by_position"] for a, b in [row["tokens"]]))
    passkey = result.get("passkey")
    if passkey:
        grid = passkey["by_length_and_depth"]
        depths = [k for k in next(iter(grid.values())) if k != "all"]
        lines.append(f"\npasskey found ({passkey['language']}), by prompt length and depth; overall {passkey['found']:.0%}")
        lines.append("length   " + "".join(f"{d:>7}" for d in depths) + "    all")
        for length, row in grid.items():
            star = "*" if positions is not None and int(length) > positions else " "
            lines.append(f"{length:>7}{star} " + "".join(f"{row[d]:>7.0%}" for d in depths) + f"{row['all']:>7.0%}")
    return "\n".join(lines)
