"""Vocabulary quality on a held-out Chinese slice, at equal net added vocabulary.

    python benchmarks/vocab_quality.py [--manifest corpora_manifests/shared_zh_vocab.yaml] [--work DIR] [--threads 2]

Training text: the training split of the manifest (CMRC + DRCD paragraphs, Chinese Alpaca /
ruozhiba / BELLE questions and answers). Evaluation: its held-out slice (holdout.fraction of the
documents, chosen by a salted hash of their text; never trained on), plus English lines
(wiki_demo_en.txt and the English Alpaca demo records) for "English lines changed".

Compared, each merged into ../shared/data/tokenizers/llama2c/tokenizer.model:
  (a) the Chinese-LLaMA-Alpaca recipe re-implemented: SentencePiece Unigram, 20,000 pieces,
      character_coverage 0.9995, otherwise default trainer settings, on the same training text
      (whole lines); every new piece appended with score 0 (merge policy chinese-llama-alpaca).
      Its net number of added pieces N sets the budget of the others.
  (b) `python -m vocab train` defaults (BPE on Han runs) merged with the default policy,
  (c) the same with --jieba,
      each cut to exactly N net added pieces: all its single characters plus its first
      multi-character pieces in merge order (the same as training BPE with fewer merges).
Also printed: the shipped tokenizers llama2c (the base) and Chinese-LLaMA-Alpaca-2, and the
original Chinese-LLaMA-Alpaca chinese_sp.model merged the CLA way (49,953 pieces).
Numbers come from the sentencepiece library (vocab.stats). Takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpora.manifest import iter_documents, iter_weighted, load_manifest  # noqa: E402
from vocab.merge import merge_tokenizers  # noqa: E402
from vocab.merge_policy import han_piece  # noqa: E402
from vocab.stats import load_tokenizer, text_stats, tokenizer_stats  # noqa: E402
from vocab.train import TrainSettings, train  # noqa: E402

SHARED = Path(os.environ.get("ZHLLAMA_SHARED_DATA", REPO.parent / "shared" / "data"))
BASE = SHARED / "tokenizers" / "llama2c" / "tokenizer.model"


def heldout_lines(manifest) -> list[str]:
    return [line for s in manifest.sources for d in iter_documents(s, split="holdout")
            for line in d.text.split("\n") if line.strip()]


def english_lines() -> list[str]:
    lines = (SHARED / "pretrain" / "wiki_demo_en.txt").read_text(encoding="utf-8").split("\n")
    for record in json.loads((SHARED / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8")):
        for field in ("instruction", "input", "output"):
            lines += record[field].split("\n")
    return [line for line in lines if line.strip()]


def train_cla_recipe(manifest, out: Path, threads: int) -> Path:
    """Chinese-LLaMA-Alpaca's chinese_sp recipe: Unigram 20k, coverage 0.9995, defaults otherwise."""
    lines = (line for d in iter_weighted(manifest, seed=0) for line in d.text.split("\n") if line.strip())
    writer = io.BytesIO()
    kwargs = dict(model_type="unigram", vocab_size=20000, character_coverage=0.9995, num_threads=threads,
                  max_sentence_length=16384, minloglevel=2)  # long lines kept: the same text as ours
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=writer, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zh.model").write_bytes(writer.getvalue())
    return out / "zh.model"


def cut_to_budget(model: Path, budget: int, out: Path) -> Path:
    """Keep every single character and the first multi-character pieces: ``budget`` new Han pieces."""
    base = {p.piece for p in load_tokenizer(BASE).proto.pieces}
    proto = pb.ModelProto()
    proto.ParseFromString(model.read_bytes())
    normal = pb.ModelProto.SentencePiece.NORMAL
    new = lambda p: p.type == normal and han_piece(p.piece) and p.piece not in base  # noqa: E731
    left = budget - sum(1 for p in proto.pieces if new(p) and len(p.piece) == 1)
    if left < 0:
        raise SystemExit(f"{model}: its single characters alone exceed the budget of {budget}")
    kept = []
    for p in proto.pieces:
        if new(p) and len(p.piece) > 1:
            if left == 0:
                continue
            left -= 1
        kept.append(p)
    if left:
        raise SystemExit(f"{model}: has {left} too few new pieces for the budget of {budget}; train a bigger one")
    del proto.pieces[:]
    proto.pieces.extend(kept)
    out.write_bytes(proto.SerializeToString())
    return out


def measure(name: str, tokenizer: Path, zh: list[str], en: list[str], base) -> dict:
    tok = load_tokenizer(tokenizer)
    t = tokenizer_stats(tok, base)
    z = text_stats(tok, zh, base, with_jieba=True)
    e = text_stats(tok, en, base)
    return {"name": name, "vocab": tok.size, "added": t["added_pieces"], "tokens_per_char": z["tokens_per_char"],
            "tokens_per_cjk_char": z["tokens_per_cjk_char"], "byte_share": z["byte_fallback_share"],
            "english_changed": e["non_cjk_lines_changed"], "english_lines": e["non_cjk_lines"],
            "unreachable": t["unreachable_added"], "jieba_cross": z["jieba_cross_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(REPO / "corpora_manifests" / "shared_zh_vocab.yaml"))
    parser.add_argument("--work", help="folder for models (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if not BASE.is_file():
        raise SystemExit(f"needs the real data in {SHARED} (absent)")
    work = Path(args.work or tempfile.mkdtemp(prefix="vocab_quality."))
    started = time.time()
    manifest = load_manifest(args.manifest)
    zh, en = heldout_lines(manifest), english_lines()
    print(f"manifest {manifest.name} ({manifest.fingerprint()[:12]}); held-out slice: {len(zh)} lines, "
          f"{sum(map(len, zh))} chars; English: {len(en)} lines; work folder {work}", flush=True)

    cla_add = train_cla_recipe(manifest, work / "a_cla", args.threads)
    cla = merge_tokenizers(BASE, cla_add, work / "a_cla" / "merged", policy="chinese-llama-alpaca",
                           verify=False, overwrite=True)
    budget = cla["added"]
    print(f"(a) CLA recipe: {budget} net added pieces -> budget for (b) and (c)  [{time.time() - started:.0f} s]",
          flush=True)
    rows = {"(a) CLA recipe (unigram 20k, score 0)": work / "a_cla" / "merged"}
    for key, jieba in (("b_default", False), ("c_jieba", True)):
        settings = TrainSettings(vocab_size=budget + 2500, num_threads=args.threads, jieba=jieba)
        train(args.manifest, settings, work / key, overwrite=True)
        cut = cut_to_budget(work / key / "zh.model", budget, work / key / "zh_cut.model")
        report = merge_tokenizers(BASE, cut, work / key / "merged", overwrite=True)
        assert report["added"] == budget, (key, report["added"], budget)
        label = "(b) vocab train (default)" if not jieba else "(c) vocab train --jieba"
        rows[label] = work / key / "merged"
        print(f"{label}: trained, cut to {report['added']} added, verify ok  [{time.time() - started:.0f} s]",
              flush=True)
    cla1 = merge_tokenizers(BASE, SHARED / "tokenizers" / "chinese_llama_alpaca" / "chinese_sp.model",
                            work / "cla1_merged", policy="chinese-llama-alpaca", verify=False, overwrite=True)
    rows["shipped llama2c (base)"] = BASE
    rows["shipped Chinese-LLaMA-Alpaca-2"] = SHARED / "tokenizers" / "chinese_llama_alpaca_2" / "tokenizer.model"
    rows[f"CLA-1 chinese_sp merged CLA way ({cla1['vocab_size']})"] = work / "cla1_merged"

    base = load_tokenizer(BASE)
    results = [measure(name, path, zh, en, base) for name, path in rows.items()]
    cols = [("tokenizer", "name", "{}"), ("vocab", "vocab", "{}"), ("net added", "added", "{}"),
            ("tok/char", "tokens_per_char", "{:.4f}"), ("tok/CJK", "tokens_per_cjk_char", "{:.4f}"),
            ("bytes", "byte_share", "{:.2%}"), ("English changed", None, None),
            ("unreachable", "unreachable", "{}"), ("jieba cross", "jieba_cross", "{:.2%}")]
    table = [[c[0] for c in cols]]
    for r in results:
        table.append([f"{r['english_changed']}/{r['english_lines']}" if key is None else fmt.format(r[key])
                      for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    print()
    for row in table:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    a, b = results[0], results[1]
    ok = b["tokens_per_char"] < a["tokens_per_char"] and b["english_changed"] == 0 and b["unreachable"] == 0
    print(f"\n(b) beats (a) on tokens/char with 0 English lines changed and 0 unreachable pieces: "
          f"{'YES' if ok else 'NO'}  ({time.time() - started:.0f} s)")
    (work / "vocab_quality.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
