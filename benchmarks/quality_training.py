"""Does `corpora quality` help training? The same small LLaMA trained on a corpus with junk, and on it filtered.

    python benchmarks/quality_training.py [--work DIR] [--junk 0.3] [--steps 400]

1. A corpus of the CMRC and DRCD Wikipedia paragraphs (../shared/data) plus --junk as many junk
   documents made from them (benchmarks/quality_filter.py's planted kinds: navigation lines, keyword
   spam, pasted stretches, mojibake, emoji spam, English in a Chinese source); 10% of the clean
   paragraphs are held out in a manifest of their own.
2. `python -m corpora quality` on the corpus, and the same manifest with its keys as `exclude:`; then
   `python -m corpora perplexity --drop-worst 0.25` with the model trained on the rule-filtered corpus as
   the reference (a stand-in for a small model trained on clean text).
3. A SentencePiece tokenizer (vocab 8000, trained on the clean training paragraphs) and a random
   LLaMA (hidden 128, 4 layers), trained --steps with `python -m pretrain train` (same seed, same
   steps and batch) on the corpus as it is and on each filtered one, scored on the clean held-out
   paragraphs (`eval.sets`).
Prints how many documents the filter left out (junk and clean), the tokens each run trained on,
and the held-out bits per character of both models.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from context_extension import _run, _train, small_llama  # noqa: E402  (the same single-process `pretrain train`)
from quality_filter import planted_sets  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _manifest(path: Path, name: str, text_file: Path, holdout: float, exclude: dict | None = None) -> Path:
    from zhllama.files import sha256_file

    spec = {"name": name, "holdout": {"fraction": holdout, "salt": "quality-training"},
            "sources": [{"name": name, "path": str(text_file), "format": "jsonl", "text_fields": ["text"],
                         "language": "zh", "license": "CC BY-SA", "sha256": sha256_file(text_file), "weight": 1.0}]}
    if exclude:
        spec["exclude"] = exclude
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def _model(work: Path, texts: list[str], positions: int = 256) -> Path:
    """A SentencePiece tokenizer (vocab 8000) trained on ``texts`` and a random LLaMA (hidden 128, 4 layers)."""
    return small_llama(work / "init", texts, 8000, positions)


def _left_out(keys: Path, texts: list[str]) -> int:
    from corpora.manifest import document_key

    listed = set(keys.read_text(encoding="utf-8").split())
    return sum(document_key(t.strip(), "quality-training").hex() in listed for t in texts)


def _excluding(work: Path, name: str, keys: Path) -> Path:
    sha = json.loads(keys.with_name(keys.name + ".json").read_text(encoding="utf-8"))["sha256"]
    return _manifest(work / f"{name}.yaml", "web", work / "web.jsonl", 0.0, {"file": str(keys), "sha256": sha})


def _train_scored(work: Path, name: str, init: Path, manifest: Path, steps: int) -> tuple[Path, tuple]:
    """Prepare ``manifest``, train ``init`` on it, and return (final/, (documents, tokens, clean bits/char))."""
    if not (work / f"shards_{name}" / "prepare_report.json").is_file():
        _run("-m", "pretrain", "prepare", "--manifest", str(manifest), "--tokenizer", str(init), "--block-size",
             "256", "--out", str(work / f"shards_{name}"), "--no-progress", log=work / f"prepare_{name}.log")
    final = _train(work, name, init, work / f"shards_{name}", steps, 3e-3, 8, "data.eval_split=null",
                   f"eval.sets=[{{name: clean, dir: {work / 'shards_heldout'}}}]")
    result = json.loads((final.parent / "train_report.json").read_text(encoding="utf-8"))
    prepared = json.loads((work / f"shards_{name}" / "prepare_report.json").read_text(encoding="utf-8"))
    return final, (prepared["splits"]["train"]["documents"], prepared["splits"]["train"]["tokens"],
                   result["metrics"]["eval/clean/bits_per_char"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/quality_training"))
    p.add_argument("--junk", type=float, default=0.3, help="junk documents per clean training paragraph")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--drop-worst", type=float, default=0.25, help="corpora perplexity's share left out")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clean = _lines(DATA / "pretrain" / "cmrc2018_dev_contexts.txt") + _lines(DATA / "pretrain" / "drcd_dev_contexts_zh_hant.txt")
    random.Random(0).shuffle(clean)
    held, train = clean[: len(clean) // 10], clean[len(clean) // 10 :]
    kinds = planted_sets(train, _lines(DATA / "pretrain" / "wiki_demo_en.txt"), int(len(train) * args.junk / 6) + 1)
    junk = [t for docs in kinds.values() for t in docs]
    mixed = train + junk
    random.Random(1).shuffle(mixed)
    dirty = _manifest(work / "dirty.yaml", "web", _jsonl(work / "web.jsonl", mixed), 0.0)
    heldout = _manifest(work / "heldout.yaml", "heldout", _jsonl(work / "heldout.jsonl", held), 0.999)
    init = _model(work, train)
    _run("-m", "pretrain", "prepare", "--manifest", str(heldout), "--tokenizer", str(init), "--block-size", "256",
         "--out", str(work / "shards_heldout"), "--no-progress", log=work / "prepare_heldout.log")
    rules = work / "quality.keys"
    _run("-m", "corpora", "quality", str(dirty), "--out", str(rules), "--workers", "2", log=work / "quality.log")
    rows, left = {}, {"quality": (_left_out(rules, junk), _left_out(rules, train))}
    _, rows["as it is"] = _train_scored(work, "dirty", init, dirty, args.steps)
    reference, rows["corpora quality"] = _train_scored(work, "filtered", init, _excluding(work, "filtered", rules),
                                                       args.steps)
    # the model trained on the rule-filtered corpus as the reference LM (a user would take a small clean model)
    likely = work / "perplexity.keys"
    _run("-m", "corpora", "perplexity", str(dirty), "--model", str(reference), "--out", str(likely), "--drop-worst",
         str(args.drop_worst), "--max-chars", "1000", "--no-progress", log=work / "perplexity.log")
    left["perplexity"] = (_left_out(likely, junk), _left_out(likely, train))
    _, rows[f"corpora perplexity {args.drop_worst:g}"] = _train_scored(
        work, "ppl_filtered", init, _excluding(work, "ppl_filtered", likely), args.steps)
    print(f"corpus: {len(train):,} clean paragraphs + {len(junk):,} junk documents; held out: {len(held):,} clean")
    for name, (junk_out, clean_out) in left.items():
        print(f"corpora {name} left out {junk_out:,} of {len(junk):,} junk and {clean_out:,} of {len(train):,} "
              "clean documents")
    print(f"{'training corpus':<28} {'documents':>10} {'tokens':>10} {'held-out clean bits/char':>26}")
    for name, (docs, tokens, bpc) in rows.items():
        print(f"{name:<28} {docs:>10,} {tokens:>10,} {bpc:>26.4f}")
    print(f"({args.steps} steps of 8 x 256 tokens each, same seed; work: {work})")


if __name__ == "__main__":
    main()
