"""What ``evaluation reading``, ``math`` and ``code`` share: the checks before a model loads (a results file to
compare with, a contamination report), the model's tokenizer and positions, answers from a server, and whether two
results compare."""
from __future__ import annotations

import json
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems


def add_run_arguments(parser, contamination_help: str | None) -> None:
    """Where the answers come from (the model here or a server), and what the run reads and writes beside them."""
    parser.add_argument("--server", default=None, metavar="URL",
                        help="generate on an OpenAI-compatible server serving --model (vLLM: vllm serve DIR), "
                             "e.g. http://127.0.0.1:8000/v1; prompts go as token ids")
    parser.add_argument("--server-model", default=None, help="the model's name on the server (default: --model)")
    parser.add_argument("--api-key-env", default=None, metavar="VAR", help="environment variable with the API key")
    parser.add_argument("--workers", type=int, default=16, help="requests in flight with --server")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    if contamination_help is not None:
        parser.add_argument("--contamination", default=None, metavar="REPORT", help=contamination_help)
    parser.add_argument("--compare", default=None, metavar="RESULTS", help="another model's results JSON")
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--no-progress", action="store_true")


def range_problems(checks) -> list[str]:
    """``(flag, value, low, high)`` per setting (value or high None: unchecked, unbounded) -> what is out of range."""
    out = []
    for flag, value, low, high in checks:
        if value is not None and (value < low or (high is not None and value > high)):
            out.append(f"{flag} must be {low}..{high}, got {value}" if high else f"{flag} must be >= {low}, got {value}")
    return out


def sampling_problems(args, answer: str) -> list[str]:
    """The sampling and server settings `evaluation math` and `code` share (``answer``: what one sample is)."""
    problems = range_problems((("--temperature", args.temperature, 0, 2), ("--top-p", args.top_p, 0.01, 1),
                               ("--workers", args.workers, 1, None)))
    if args.samples > 1 and args.temperature == 0:
        problems.append(f"--samples {args.samples} with --temperature 0: every sample would be the greedy {answer}")
    if args.server:
        from zhllama.openai_client import check_api_key_env, check_url

        problems += check_url("--server", args.server) + check_api_key_env(args.api_key_env)
    return problems


def named_sets(args, what: str, problems: list[str]) -> list[tuple[str, str]]:
    """``--set NAME=FILE`` values as pairs: at least one, names once each, files that exist."""
    from .base_cli import name_pairs

    sets = name_pairs(args.set, "--set", problems)
    if not args.set:
        problems.append(f"--set NAME=FILE: at least one {what}")
    names = [n for n, _ in sets]
    problems += [f"--set {n}: given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"--set {n}={p}: not a file" for n, p in sets if not Path(p).is_file()]
    return sets


def read_results(path: str, command: str) -> dict:
    """Another run's results JSON for ``--compare``: refused unless ``python -m evaluation COMMAND`` wrote it."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--compare {path}: not readable as JSON ({e})") from e
    if not isinstance(old, dict) or not isinstance(old.get("sets"), dict) or old.get("task", "reading") != command:
        raise UserError(f"--compare {path}: not the results of `python -m evaluation {command}`")
    return old


def before_the_model(args, sets: list[tuple[str, str]], command: str) -> tuple[dict | None, dict | None]:
    """(the ``--compare`` results, the sets' ``--contamination`` statuses): both read and checked first."""
    compare = read_results(args.compare, command) if args.compare else None
    statuses = None
    if args.contamination:
        from .contamination_cli import set_statuses

        statuses = set_statuses(args.contamination, sets, command)
    return compare, statuses


def tokenizer_and_positions(args):
    """(the model's tokenizer, the positions prompts and answers share: ``--max-length`` or the model's)."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"--chat: {args.model} has no chat template (a base model: leave --chat out)")
    config = AutoConfig.from_pretrained(args.model)
    text_config = getattr(config, "text_config", None) or config
    return tokenizer, args.max_length or getattr(text_config, "max_position_embeddings", None) or 4096


def comparable_sets(old: dict, new: dict, where: str, same_settings: tuple[str, ...], what: str) -> list[str]:
    """The set names two results share, when they asked the same items with the same settings; otherwise one
    error listing every difference."""
    problems = [f"--compare {where}: {k} was {old.get('settings', {}).get(k)!r}, now {new['settings'].get(k)!r}"
                for k in same_settings if old.get("settings", {}).get(k) != new["settings"].get(k)]
    shared = [name for name in new["sets"] if name in old["sets"]]
    if not shared:
        problems.append(f"--compare {where}: no set of the same name (it has {sorted(old['sets'])})")
    for name in shared:
        if old["sets"][name].get("sha256") != new["sets"][name]["sha256"]:
            problems.append(f"--compare {where}: set {name} was another file (sha256 differs)")
        elif [i["key"] for i in old["sets"][name]["items"]] != [i["key"] for i in new["sets"][name]["items"]]:
            problems.append(f"--compare {where}: set {name} holds other {what}")
    raise_if_problems(f"{ {'questions': 'reading', 'problems': 'math'}.get(what, 'code')} comparison", problems)
    return shared


def server_answers(args, what: str, sample_seed):
    """A ``generate(name, prompts, stops)`` of ``args.samples`` answers per prompt (``ids``, ``item.key``) from
    ``/v1/completions``, one request per sample with its own seed; every reply kept in OUT.calls.jsonl (a rerun
    resumes)."""
    from zhllama.openai_client import Endpoint, api_key, complete_all

    endpoint = Endpoint(args.server, args.server_model or str(args.model), api_key(args.api_key_env))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def generate(name: str, prompts: list, stops: list[str]) -> list[list[str]]:
        requests = [{"prompt": p.ids, "max_tokens": args.max_new_tokens, "temperature": args.temperature,
                     "top_p": args.top_p, "skip_special_tokens": True,
                     **({"stop": stops} if stops else {}),
                     **({"seed": sample_seed(args.seed, p.item.key, k)} if args.temperature > 0 else {})}
                    for p in prompts for k in range(args.samples)]
        replies = complete_all(endpoint, requests, out.with_name(out.name + ".calls.jsonl"), args.workers,
                               f"{what} {name}", not args.no_progress)
        texts = [r["text"] for r in replies]
        return [texts[i * args.samples:(i + 1) * args.samples] for i in range(len(prompts))]
    return generate


def model_here(args):
    """``--model`` loaded on ``--device`` in ``--dtype``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()


def answers_here(model, tokenizer, args, what: str, sample_seed=None):
    """A ``generate(name, prompts, stops)`` of ``args.samples`` answers per prompt from ``model``, in batches, with a
    progress bar (math_generate.generate_answers)."""
    from tqdm import tqdm

    from .math_generate import generate_answers

    def generate(name: str, prompts: list, stops: list[str]) -> list[list[str]]:
        with tqdm(total=len(prompts), desc=f"{what} {name}", disable=args.no_progress) as bar:
            return generate_answers(model, tokenizer, prompts, args, stops, bar, sample_seed)
    return generate
