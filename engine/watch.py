"""What guards the model during training: named held-out sets, benchmarks, reading sets, the guard.

    watch = Watch(cfg)                            # eval.sets read from their prepared folders
    watch = Watch(cfg, eval_sets={"zh": (dataset, characters), "en": ...})   # or given (packed blocks)
    watch.ensure_base(engine, step, device)       # once: output_dir/eval_base.json (before step 1)
    metrics = watch.run(engine, step, device)     # eval/<set>/loss, eval/<set>/bits_per_char, bench/<name>/..., reading/<name>/...
    trips = watch.check_guard(step, metrics)      # bounds from eval.guard, relative to the base

Named sets are packed blocks (engine/packed.py: ``input_ids``, ``position_ids``, ``labels``) in
every phase: they are stacked as they are, whatever the phase's own collator does with its data
(SFT pads conversations), so pretraining and SFT score the same text the same way.
Everything that touches the model is collective: every rank calls ``run`` and ``ensure_base`` at
the same steps (ZeRO-3 gathers parameters on every forward). Benchmark files are read and checked
when the Watch is built, before the model loads, so bad data fails the run at once. Benchmark
details (per subject, per item) go to ``output_dir/evals/<name>/step-N.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

from zhllama.errors import UserError
from zhllama.files import write_json_atomic

from .config import TrainConfig
from .data import default_collate
from .evaluate import eval_mode, evaluate
from .sequence_parallel import WHOLE_ROWS
from .watch_config import guard_metric

BASE_FILE = "eval_base.json"


class Watch:
    def __init__(self, cfg: TrainConfig, eval_sets: dict[str, tuple[Any, int | None]] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.sets = dict(eval_sets) if eval_sets is not None else _read_sets(cfg)
        missing = [s.name for s in cfg.eval.sets if s.name not in self.sets]
        if missing:
            raise UserError(f"eval.sets {missing}: the caller's eval_sets do not hold them")
        self.statuses: dict[str, dict[str, str]] = {}  # benchmark -> {item key: contamination status}
        self.benches = [self._load_bench(b) for b in cfg.eval.benchmarks]
        self.readings = [self._load_reading(r) for r in cfg.eval.reading]
        self.maths = [self._load_math(m) for m in cfg.eval.math]
        self.codes = [self._load_code(c) for c in cfg.eval.code]
        self.base: dict[str, Any] | None = None
        self.trips: list[dict[str, Any]] = []
        self.split = WHOLE_ROWS  # sequence parallelism: the named sets' rows split like training's (set by the loop)
        self._cache: tuple[int, dict] | None = None
        if cfg.eval.base not in ("auto", "none"):
            self.base = _read_base(Path(cfg.eval.base))

    @property
    def active(self) -> bool:
        """Something of its own to evaluate (named sets, benchmarks, reading, math or code sets)."""
        return bool(self.sets or self.benches or self.readings or self.maths or self.codes)

    @property
    def reporting(self) -> bool:
        """Whether the run gets base numbers, guard results and the forgetting report."""
        return self.active or bool(self.cfg.eval.guard) or self.cfg.eval.base not in ("auto", "none")

    def _load_bench(self, b):
        from transformers import AutoConfig, AutoTokenizer

        from evaluation.benchmarks import load_benchmark
        from evaluation.choice import bench_prompts, pad_id_of
        from evaluation.prompts import continuations
        from evaluation.scorer import encode_requests

        from .model import tokenizer_dir

        split = b.split or ("test" if b.name == "cmmlu" else "val")
        bench = load_benchmark(b.name, b.data, split, b.shots, b.max_items_per_subject)
        if b.contamination:
            from evaluation.contamination_cli import item_statuses

            self.statuses[b.name] = item_statuses(b.contamination, b.name, split)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(self.cfg)))
        max_len = b.max_length or getattr(AutoConfig.from_pretrained(self.cfg.model.path), "max_position_embeddings", None)
        requests = encode_requests(tok, bench_prompts(bench), continuations(b.name), max_len)
        return b, bench, requests, pad_id_of(tok)

    def _load_reading(self, r):
        """The set's prompts and reference answers as tokens, built before the model loads (the same
        prompts as `evaluation reading` with these shots, max_questions and seed)."""
        from transformers import AutoConfig, AutoTokenizer

        from evaluation.choice import pad_id_of
        from evaluation.reading import reference_prompts
        from evaluation.reading_data import read_reading_set

        from .model import tokenizer_dir

        whole = read_reading_set(r.file)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(self.cfg)))
        positions = getattr(AutoConfig.from_pretrained(self.cfg.model.path), "max_position_embeddings", None) or 4096
        prompts, requests = reference_prompts(tok, whole, r.shots, r.max_questions, r.seed, positions)
        return r, whole.language, prompts, requests, pad_id_of(tok)

    def _load_math(self, m):
        """The set's prompts and reference solutions as tokens, built before the model loads (the same prompts as
        `evaluation math` with these shots, shots_from, max_items and seed)."""
        from transformers import AutoConfig, AutoTokenizer

        from evaluation.choice import pad_id_of
        from evaluation.math_data import read_math_set
        from evaluation.math_eval import reference_prompts

        from .model import tokenizer_dir

        whole = read_math_set(m.file)
        source = read_math_set(m.shots_from) if m.shots_from else whole
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(self.cfg)))
        positions = getattr(AutoConfig.from_pretrained(self.cfg.model.path), "max_position_embeddings", None) or 4096
        pool = [i for i in source.items if i.reasoning]
        prompts, requests = reference_prompts(tok, whole, pool, source is whole, m.shots, m.max_items, m.seed, positions,
                                              m.max_new_tokens)
        return m, whole.language, prompts, requests, pad_id_of(tok)

    def _load_code(self, c):
        """The set's base prompts and canonical solutions as tokens, built before the model loads (the prompts of
        `evaluation code --max-items --max-new-tokens`)."""
        from transformers import AutoConfig, AutoTokenizer

        from evaluation.choice import pad_id_of
        from evaluation.code_data import builtin_file, read_code_set
        from evaluation.code_eval import reference_prompts

        from .model import tokenizer_dir

        code_set = read_code_set(builtin_file(c.file, log=lambda *_: None) if c.file == "humaneval" else c.file)
        if not any(t.solution for t in code_set.tasks):
            raise UserError(f"eval.code {c.name}: {code_set.path} has no canonical_solution to read")
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(self.cfg)))
        positions = getattr(AutoConfig.from_pretrained(self.cfg.model.path), "max_position_embeddings", None) or 4096
        prompts, requests = reference_prompts(tok, code_set, c.max_items, positions, c.max_new_tokens)
        return c, prompts, requests, pad_id_of(tok)

    def run(self, engine, step: int, device, force_all: bool = False) -> dict[str, float]:
        """Collective. Named sets at every call; benchmarks when due (always with ``force_all``)."""
        if self._cache is not None and self._cache[0] == step:
            return dict(self._cache[1])
        ev = self.cfg.eval
        bs = ev.micro_batch_size or self.cfg.batch.micro_batch_size
        out: dict[str, float] = {}
        for name, (ds, characters) in self.sets.items():
            got = evaluate(engine, ds, default_collate, bs, ev.max_batches, characters, device, self.split)
            out.update({f"eval/{name}/{k.split('/', 1)[1]}": v for k, v in got.items()})
        final = step == 0 or force_all
        for b, bench, requests, pad in self.benches:
            if final or not b.every_steps or step % b.every_steps == 0:
                out.update(self._run_bench(engine, step, device, b, bench, requests, pad))
        for r, language, prompts, requests, pad in self.readings:
            if final or not r.every_steps or step % r.every_steps == 0:
                out.update(self._run_reading(engine, step, device, r, language, prompts, requests, pad))
        for m, language, prompts, requests, pad in self.maths:
            if final or not m.every_steps or step % m.every_steps == 0:
                out.update(self._run_math(engine, step, device, m, language, prompts, requests, pad))
        for c, prompts, requests, pad in self.codes:
            if final or not c.every_steps or step % c.every_steps == 0:
                out.update(self._run_code(engine, step, device, c, prompts, requests, pad))
        self._cache = (step, out)
        return dict(out)

    def _run_bench(self, engine, step, device, b, bench, requests, pad) -> dict[str, float]:
        from evaluation.results import aggregate, by_contamination, metrics_of, predictions
        from evaluation.scorer import score_requests

        was_training = engine.module.training
        engine.eval()
        logprobs = score_requests(engine, requests, b.batch_size, device, pad)
        if was_training:
            engine.train()
        preds = predictions(bench, logprobs)
        summary = aggregate(bench, preds)
        if b.name in self.statuses:
            summary["contamination"] = by_contamination(preds, self.statuses[b.name])
        if dist.get_rank() == 0:
            write_json_atomic(self.out / "evals" / b.name / f"step-{step:08d}.json",
                              {"benchmark": b.name, "split": bench.split, "shots": b.shots, "step": step,
                               **summary, "predictions": preds})
        return metrics_of(b.name, summary)

    def _run_reading(self, engine, step, device, r, language, prompts, requests, pad) -> dict[str, float]:
        from evaluation.answer_scorer import score_answers
        from evaluation.reading import reference_metrics

        return self._read_references("reading", r, step, lambda: reference_metrics(
            prompts, score_answers(engine, requests, r.batch_size, device, pad), language), engine)

    def _run_math(self, engine, step, device, m, language, prompts, requests, pad) -> dict[str, float]:
        from evaluation.math_eval import reference_metrics, score_references

        return self._read_references("math", m, step, lambda: reference_metrics(
            prompts, score_references(engine, requests, m.batch_size, device, pad), language), engine)

    def _run_code(self, engine, step, device, c, prompts, requests, pad) -> dict[str, float]:
        from evaluation.answer_scorer import score_answers
        from evaluation.code_eval import reference_metrics

        return self._read_references("code", c, step, lambda: reference_metrics(
            prompts, score_answers(engine, requests, c.batch_size, device, pad)), engine)

    def _read_references(self, kind: str, spec, step: int, score: Callable[[], dict], engine) -> dict[str, float]:
        """Collective. A reading, math or code set's reference answers read in eval mode: its evals/ file on rank 0
        and its metrics ``<kind>/<name>/...``."""
        with eval_mode(engine):
            result = score()
        if dist.get_rank() == 0:
            write_json_atomic(self.out / "evals" / spec.name / f"step-{step:08d}.json",
                              {kind: spec.name, "file": spec.file, "shots": getattr(spec, "shots", 0), "step": step,
                             **result})
        return {f"{kind}/{spec.name}/{k}": v for k, v in result.items() if k != "items" and v is not None}

    def _guard_metric(self, key: str) -> str | None:
        ev = self.cfg.eval
        return guard_metric(key, [s.name for s in ev.sets], [b.name for b in ev.benchmarks], [r.name for r in ev.reading],
                            [m.name for m in ev.math], [c.name for c in ev.code])

    def ensure_base(self, engine, step: int, device, validation: Callable[[], dict] | None = None) -> None:
        """Collective. Base numbers once: a stored eval_base.json, or the starting model before step 1
        (named sets, every benchmark, and the phase's validation split through ``validation``)."""
        path = self.out / BASE_FILE
        if self.base is None and self.cfg.eval.base != "none" and path.is_file():
            self.base = _read_base(path)
        if self.base is None and self.cfg.eval.base != "none" and self.reporting:
            self._compute_base(engine, step, device, validation, path)
        ev = self.cfg.eval
        unguarded = [k for k in ev.guard if self._guard_metric(k) not in (self.base or {}).get("metrics", {})]
        if unguarded and _rank() == 0:
            print(f"[zhllama] eval.guard {unguarded}: no base value for them, they cannot trip", flush=True)

    def _compute_base(self, engine, step: int, device, validation, path: Path) -> None:
        if step != 0:
            if _rank() == 0:
                print(f"[zhllama] no base numbers: {path} is missing and the run resumes at step {step}; "
                      f"eval.guard cannot compare (write it with `python -m evaluation base`)", flush=True)
            return
        metrics = {**(validation() if validation is not None else {}), **self.run(engine, step, device, force_all=True)}
        self.base = {"source": f"{self.cfg.model.path} before training (step 0, this run's forwards)",
                     "model": str(self.cfg.model.path), "metrics": metrics}
        if dist.get_rank() == 0:
            write_json_atomic(path, self.base)
        dist.barrier()

    def check_guard(self, step: int, metrics: dict[str, float]) -> list[dict[str, Any]]:
        """Bounds of eval.guard that ``metrics`` cross; printed on rank 0 and kept for the report."""
        ev = self.cfg.eval
        base = (self.base or {}).get("metrics", {})
        trips = []
        for key, delta in ev.guard.items():
            metric = self._guard_metric(key)
            if metric not in metrics or metric not in base:
                continue
            bound = base[metric] + delta
            value = metrics[metric]
            if (value > bound) if delta > 0 else (value < bound):
                trips.append({"key": key, "metric": metric, "step": step, "value": value, "base": base[metric],
                              "bound": bound, "allowed_change": delta, "action": ev.guard_action})
        if trips and _rank() == 0:
            for t in trips:
                print(f"[zhllama] guard: {t['key'].split('.')[0]} drifted at step {step}: {t['metric']} = "
                      f"{t['value']:.4f}, base {t['base']:.4f}, allowed {t['allowed_change']:+g} (bound "
                      f"{t['bound']:.4f}) -> {ev.guard_action}", flush=True)
        self.trips.extend(trips)
        return trips

    def report_fields(self) -> dict[str, Any]:
        return {"eval_base": self.base, "guard_trips": list(self.trips)}


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _read_sets(cfg: TrainConfig) -> dict[str, tuple[Any, int | None]]:
    if not cfg.eval.sets:
        return {}
    from .model import tokenizer_dir
    from .packed import named_eval_sets

    return named_eval_sets(cfg.eval.sets, tokenizer_dir(cfg))


def _read_base(path: Path) -> dict[str, Any]:
    try:
        base = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"eval.base: {path} is not readable JSON ({exc})") from None
    if not isinstance(base, dict) or not isinstance(base.get("metrics"), dict):
        raise UserError(f"eval.base: {path} has no 'metrics' mapping (write it with `python -m evaluation base`)")
    return base


def write_forgetting_report(output_dir: str | Path, base: dict[str, Any] | None, trips: list[dict]) -> dict[str, Any]:
    """Rank 0: report.md + forgetting.png from metrics.jsonl and the base; returns the table for train_report.json."""
    from evaluation.forgetting import write_report

    return write_report(Path(output_dir), base, trips)
