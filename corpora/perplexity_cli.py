"""Score every document with a reference language model and write the keys of the worst (and best) to leave out.

    python -m corpora perplexity corpora_manifests/web_zh.yaml --model Qwen2.5-0.5B --out corpora_manifests/ppl.keys \
        [--drop-worst 0.1] [--drop-best 0.0] [--max-bits-per-char B] [--max-chars 2000] [--min-chars 50] \
        [--batch-size 16] [--device cuda] [--dtype bfloat16]
    torchrun --nproc_per_node 8 -m corpora perplexity ... --device cuda      # 8 GPUs, every 8th document each
    # then, in the manifest:  exclude: {file: <path relative to base_dir>, sha256: <printed digest>}

Each document (training part and held-out slice alike, after cleaning and exact dedup) is scored in
bits per character of its first --max-chars characters by --model, any Hugging Face causal LM that
reads the corpus' language well: a small model trained on clean text (CCNet used one trained on
Wikipedia), or the base model about to be trained. Per source, the --drop-worst share with the most
bits per character (garbled, machine-made, off-language text) and the --drop-best share with the
fewest (templates, boilerplate repeated across pages) are listed, plus any document above
--max-bits-per-char. Documents shorter than --min-chars are not scored and never listed. The report
(OUT.json) gives each source's distribution (percentiles), its cut-offs, and the best and worst
examples, so the share can be chosen from what the scores look like; OUT.scores.jsonl has every score.
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import time
from pathlib import Path

import numpy as np

from zhllama.errors import UserError, raise_if_problems

from .exclude import publish_keys

EXAMPLES = 5
CHUNK_DOCS = 512  # documents read, then scored, at a time


@dataclasses.dataclass(frozen=True)
class PerplexitySettings:
    drop_worst: float = 0.1
    drop_best: float = 0.0
    max_bits_per_char: float | None = None
    max_chars: int = 2000
    min_chars: int = 50

    def problems(self) -> list[str]:
        out = [f"--{name.replace('_', '-')}: a fraction from 0 to below 1, got {value}"
               for name, value in (("drop_worst", self.drop_worst), ("drop_best", self.drop_best))
               if not 0 <= value < 1]
        if not out and self.drop_worst + self.drop_best >= 1:
            out.append(f"--drop-worst + --drop-best must be below 1, got {self.drop_worst + self.drop_best}")
        if self.max_bits_per_char is not None and self.max_bits_per_char <= 0:
            out.append(f"--max-bits-per-char must be > 0, got {self.max_bits_per_char}")
        if self.max_chars < 1 or self.min_chars < 0:
            out.append(f"--max-chars must be >= 1 and --min-chars >= 0, got {self.max_chars} and {self.min_chars}")
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PerplexitySettings()
    parser.add_argument("manifest", help="manifest YAML")
    parser.add_argument("--model", required=True, help="reference causal LM (Hugging Face folder with its tokenizer)")
    parser.add_argument("--out", required=True, help="the keys file to write (report: OUT.json, scores: OUT.scores.jsonl)")
    parser.add_argument("--drop-worst", type=float, default=defaults.drop_worst,
                        help=f"share per source with the most bits/char (default {defaults.drop_worst})")
    parser.add_argument("--drop-best", type=float, default=defaults.drop_best,
                        help=f"share per source with the fewest bits/char (default {defaults.drop_best})")
    parser.add_argument("--max-bits-per-char", type=float, default=None, help="also drop every document above this")
    parser.add_argument("--max-chars", type=int, default=defaults.max_chars, help="characters scored per document")
    parser.add_argument("--min-chars", type=int, default=defaults.min_chars, help="shorter documents are not scored")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from zhllama.model_folder import require_model_folder

    from .manifest import load_manifest

    settings = PerplexitySettings(args.drop_worst, args.drop_best, args.max_bits_per_char, args.max_chars,
                                  args.min_chars)
    problems = settings.problems() + ([f"--batch-size must be >= 1, got {args.batch_size}"]
                                      if args.batch_size < 1 else [])
    raise_if_problems("perplexity settings", problems)
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path")
    manifest = load_manifest(args.manifest, with_exclude=False)  # from scratch, whatever is excluded now
    require_model_folder(args.model, "--model")
    from .perplexity import ranks

    rank, world, device = ranks(args.device)
    model, tokenizer = _load(args, device)
    scores, seconds = _score_all(manifest, model, tokenizer, settings, args, rank, world, device)
    if rank:
        return 0  # rank 0 writes the results
    report = cut(scores, settings, seconds)
    keys = report.pop("keys")
    from zhllama.model_fingerprint import model_fingerprint

    report.update(manifest=str(args.manifest), fingerprint=manifest.fingerprint(), salt=manifest.holdout.salt,
                  model=str(args.model), model_fingerprint=model_fingerprint(args.model),
                  settings=dataclasses.asdict(settings))
    _write_scores(out.with_name(out.name + ".scores.jsonl"), scores)
    hint = publish_keys(out, keys, manifest.holdout.salt, [
        "zhllama perplexity: document keys to leave out (python -m corpora perplexity)",
        f"manifest: {args.manifest} (fingerprint {report['fingerprint'][:16]})",
        f"model: {args.model} (fingerprint {report['model_fingerprint'][:16]})",
        f"settings: {dataclasses.asdict(settings)}"], report)
    print(summary(report))
    print(f"wrote {out}; add to the manifest:\n  {hint}")
    return 0


def _load(args: argparse.Namespace, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(args.model)


@dataclasses.dataclass
class SourceScores:
    """One source's documents as (index, key, bits/char or None when too short, line), and its extreme examples."""

    rows: list = dataclasses.field(default_factory=list)
    worst: list = dataclasses.field(default_factory=list)  # min-heap of (bits, line, text): the highest kept
    best: list = dataclasses.field(default_factory=list)  # min-heap of (-bits, line, text): the lowest kept

    def add(self, index: int, key: bytes, bits: float | None, line: int, text: str) -> None:
        self.rows.append((index, key, bits, line))
        if bits is not None:  # only the examples keep text: a corpus of millions stays small in memory
            for heap, value in ((self.worst, bits), (self.best, -bits)):
                (heapq.heappush if len(heap) < EXAMPLES else heapq.heappushpop)(heap, (value, line, text[:120]))

    @classmethod
    def merged(cls, parts: list["SourceScores"]) -> "SourceScores":
        """The ranks' shares as one source, in document order."""
        out = cls(rows=sorted((r for p in parts for r in p.rows), key=lambda r: r[0]))
        out.worst = heapq.nlargest(EXAMPLES, (e for p in parts for e in p.worst))
        out.best = heapq.nlargest(EXAMPLES, (e for p in parts for e in p.best))
        heapq.heapify(out.worst)
        heapq.heapify(out.best)
        return out

    def examples(self) -> dict:
        return {"worst": [{"line": line, "bits_per_char": round(v, 4), "text": t} for v, line, t in
                          sorted(self.worst, reverse=True)],
                "best": [{"line": line, "bits_per_char": round(-v, 4), "text": t} for v, line, t in
                         sorted(self.best, reverse=True)]}


def _score_all(manifest, model, tokenizer, settings: PerplexitySettings, args, rank: int = 0, world: int = 1,
               device: str = "cpu") -> tuple[dict, float]:
    """Every source's scores (on every rank); rank r scores the documents whose index is r modulo world."""
    from tqdm import tqdm

    from .manifest import iter_documents
    from .perplexity import document_bits, gather

    started, out = time.monotonic(), {}
    for source in manifest.sources:
        scores, pending = SourceScores(), []

        def flush() -> None:
            judged = [d.text for _, d in pending if len(d.text) >= settings.min_chars]
            bits = iter(document_bits(model, tokenizer, judged, settings.max_chars, args.batch_size, device))
            for i, d in pending:
                scores.add(i, d.key, next(bits) if len(d.text) >= settings.min_chars else None, d.line, d.text)
            pending.clear()

        docs = iter_documents(source, split="all", keys=True)
        for i, doc in enumerate(tqdm(docs, desc=source.name, unit=" docs",
                                     disable=True if args.no_progress or rank else None)):
            if i % world == rank:
                pending.append((i, doc))
                if len(pending) == CHUNK_DOCS:
                    flush()
        flush()
        out[source.name] = SourceScores.merged(gather(scores, world))
    return out, time.monotonic() - started


def cut(scores: dict[str, SourceScores], settings: PerplexitySettings, seconds: float = 0.0) -> dict:
    """Cut-offs and listed keys per source (keys under "keys"), with percentiles and examples."""
    keys, sources = [], {}
    total = listed = 0
    for name, found in scores.items():
        scored = [(key, bits, line) for _, key, bits, line in found.rows if bits is not None]
        values = np.array([r[1] for r in scored], dtype=np.float64)
        high = float(np.quantile(values, 1 - settings.drop_worst)) if len(values) and settings.drop_worst else None
        low = float(np.quantile(values, settings.drop_best)) if len(values) and settings.drop_best else None
        if settings.max_bits_per_char is not None:
            high = settings.max_bits_per_char if high is None else min(high, settings.max_bits_per_char)
        out = [r for r in scored if (high is not None and r[1] > high) or (low is not None and r[1] < low)]
        keys += [r[0] for r in out]
        sources[name] = {
            "documents": len(found.rows), "scored": len(scored), "listed": len(out), "cut_above": high,
            "cut_below": low,
            "percentiles": ({f"p{q}": round(float(np.percentile(values, q)), 4) for q in (1, 10, 50, 90, 99)}
                            if len(values) else {}),
            **found.examples()}
        total, listed = total + len(found.rows), listed + len(out)
    return {"keys": keys, "sources": sources,
            "totals": {"documents": total, "listed": listed, "seconds": round(seconds, 1),
                       "docs_per_s": total / max(seconds, 1e-9)}}


def _write_scores(path: Path, scores: dict[str, SourceScores]) -> None:
    from zhllama.files import write_text_atomic

    lines = [json.dumps({"source": name, "key": key.hex(), "line": line, "bits_per_char": bits})
             for name, found in scores.items() for _, key, bits, line in found.rows]
    write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))


def summary(report: dict) -> str:
    width = max(8, *map(len, report["sources"]))
    lines = [f"{'source':<{width}} {'documents':>10} {'scored':>8} {'p10':>7} {'p50':>7} {'p90':>7} "
             f"{'cut below':>10} {'cut above':>10} {'listed':>8}   (bits per character)"]
    for name, s in report["sources"].items():
        p = s["percentiles"]

        def num(v) -> str:
            return "-" if v is None else f"{v:.3f}"

        lines.append(f"{name:<{width}} {s['documents']:>10,} {s['scored']:>8,} {num(p.get('p10')):>7} "
                     f"{num(p.get('p50')):>7} {num(p.get('p90')):>7} {num(s['cut_below']):>10} "
                     f"{num(s['cut_above']):>10} {s['listed']:>8,}")
    total = report["totals"]
    lines.append(f"{total['listed']:,} of {total['documents']:,} documents listed; {total['docs_per_s']:,.0f} docs/s")
    return "\n".join(lines)
