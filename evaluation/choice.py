"""Score a benchmark on a model: prompts → letter log-probabilities → per-item choices → summary."""
from __future__ import annotations

from typing import Any

from .benchmarks import Benchmark
from .prompts import build_prompt, continuations
from .results import aggregate, predictions
from .scorer import encode_requests, score_requests


def bench_prompts(bench: Benchmark) -> list[str]:
    return [build_prompt(bench.name, item, bench.dev.get(item.subject, [])) for item in bench.items]


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def evaluate_benchmark(model, tokenizer, bench: Benchmark, *, batch_size: int, device, max_length: int | None = None,
                       progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-item predictions). Collective under torch.distributed: every rank calls it."""
    requests = encode_requests(tokenizer, bench_prompts(bench), continuations(bench.name), max_length)
    logprobs = score_requests(model, requests, batch_size, device, pad_id_of(tokenizer), progress)
    preds = predictions(bench, logprobs)
    return aggregate(bench, preds), preds
