"""Benchmark contamination: what `python -m evaluation contamination` finds, beside lm-evaluation-harness's Janitor.

    python benchmarks/contamination_quality.py [--items 150]

Evaluation items: BELLE's Chinese eval questions (corpora_manifests/eval_belle.yaml) and English Alpaca
instructions, each at least 13 units long. Background: the CMRC/DRCD paragraphs of
corpora_manifests/shared_zh_pretrain.yaml and English Wikipedia cut into paragraphs (../shared/data).
Into background paragraphs the benchmark plants items in several forms: verbatim; reformatted (Chinese:
a space between Han characters, ASCII punctuation; English: upper case, punctuation doubled); the first
60% of the item (an item of under 22 units then holds no 13-unit gram, so not all can be found). Every item is registered with each tool, then every document is checked. A planted document
should be flagged, a background one should not. The peer is lm-evaluation-harness 0.4.9's decontamination
Janitor (13 whitespace-separated words, lower-cased, ASCII punctuation deleted: what lm-eval's
`decontaminate` and many pipelines use); its module is loaded alone from the pinned wheel, installed into
the cache when missing. Both run in pure Python on the same texts.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpora.manifest import iter_documents, load_manifest  # noqa: E402
from evaluation.contamination import ContaminationSettings, ItemIndex, units  # noqa: E402

PEER = "lm_eval==0.4.9"
SHARED = REPO.parent / "shared" / "data"


def reformat(text: str, zh: bool, rng: random.Random) -> str:
    if zh:  # a space between Han characters (as some scraped pages have), ASCII punctuation
        spaced = re.sub(r"(?<=[\u4e00-\u9fff])(?=[\u4e00-\u9fff])", " ", text)
        return spaced.replace("，", ",").replace("。", ". ").replace("？", "?").replace("：", ":")
    return text.upper().replace(",", ",,").replace(".", "..").replace("?", " ??")


FORMS = {
    "verbatim": lambda text, zh, rng: text,
    "reformatted": reformat,
    "first 60%": lambda text, zh, rng: text[: int(len(text) * 0.6)],
}


def load_items(count: int, rng: random.Random) -> tuple[list[str], list[str]]:
    belle = load_manifest(REPO / "corpora_manifests" / "eval_belle.yaml")
    zh = [d.text for d in iter_documents(belle.sources[0]) if len(units(d.text)) >= 20 and "\n" not in d.text]
    en_records = json.loads((SHARED / "sft" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    en = [" ".join(filter(None, (r["instruction"], r["input"]))) for r in en_records]
    en = [text for text in en if len(units(text)) >= 20 and "\n" not in text]
    return rng.sample(zh, min(count, len(zh))), rng.sample(en, min(count, len(en)))


def load_background() -> tuple[list[str], list[str]]:
    manifest = load_manifest(REPO / "corpora_manifests" / "shared_zh_pretrain.yaml")
    zh = [d.text for s in manifest.sources for d in iter_documents(s, split="all") if len(d.text) >= 100]
    en = []
    for article in (SHARED / "pretrain" / "wiki_demo_en.txt").read_text(encoding="utf-8").splitlines():
        sentences, chunk = article.split(". "), []
        for sentence in sentences:
            chunk.append(sentence)
            if sum(map(len, chunk)) > 500:
                en.append(". ".join(chunk))
                chunk = []
    return zh, en


def plant(items: list[str], background: list[str], zh: bool, rng: random.Random) -> list[tuple[str, str]]:
    """(form, document) for every item in every form, each inside a random background paragraph."""
    out = []
    for form, make in FORMS.items():
        for item in items:
            host = rng.choice(background)
            cut = rng.randrange(len(host))
            out.append((form, host[:cut] + " " + make(item, zh, rng) + " " + host[cut:]))
    return out


def ours(items: list[str], docs: list[str]) -> tuple[list[bool], float]:
    start = time.perf_counter()
    index = ItemIndex([[item] for item in items], ContaminationSettings())
    flagged = [bool(index.scan(i, doc)) for i, doc in enumerate(docs)]
    return flagged, time.perf_counter() - start


def load_janitor(cache: Path):
    target = cache / "lm_eval-0.4.9"
    path = target / "lm_eval" / "decontamination" / "janitor.py"
    if not path.is_file():
        print(f"installing {PEER} (no dependencies) into {target} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                               PEER], capture_output=True, text=True)
        if proc.returncode or not path.is_file():
            print(f"peer not available (pip: {proc.stderr.strip()[-300:]})")
            return None
    spec = importlib.util.spec_from_file_location("lm_eval_janitor", path)  # alone: lm_eval/__init__ imports torch
    module = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        spec.loader.exec_module(module)  # it prints a traceback when its C++ helper is not built
    return module


def peer(janitor_module, items: list[str], docs: list[str]) -> tuple[list[bool], float]:
    start = time.perf_counter()
    janitor = janitor_module.Janitor(ngram_n=13)
    for item in items:
        janitor.register_contaminant_python(item)
    flagged = []
    for doc in docs:  # what Janitor.clean_python checks, without cutting the document
        grams = janitor_module.word_ngrams_indices(doc, janitor.ngram_n)
        flagged.append(any(janitor.normalize_string(gram) in janitor.dirt_ngrams for gram, _ in grams))
    return flagged, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=150, help="items per language")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "zhllama" / "pinned"))
    args = parser.parse_args()
    rng = random.Random(0)
    zh_items, en_items = load_items(args.items, rng)
    zh_bg, en_bg = load_background()
    planted = [("zh", f, d) for f, d in plant(zh_items, zh_bg, True, rng)]
    planted += [("en", f, d) for f, d in plant(en_items, en_bg, False, rng)]
    docs = zh_bg + en_bg + [d for _, _, d in planted]
    background = len(zh_bg) + len(en_bg)
    chars = sum(map(len, docs))
    print(f"{len(zh_items)} Chinese + {len(en_items)} English items; {len(zh_bg)} Chinese and {len(en_bg)} English "
          f"background paragraphs; {len(planted)} planted documents; {chars:,} characters")
    rows = [("zhllama (evaluation/contamination.py)", *ours(zh_items + en_items, docs))]
    janitor = load_janitor(Path(args.cache))
    if janitor is not None:
        rows.append(("lm-eval 0.4.9 Janitor (13 words)", *peer(janitor, zh_items + en_items, docs)))
    columns = [(lang, form) for lang in ("zh", "en") for form in FORMS]
    print("| tool | chars/s | " + " | ".join(f"{lang} {form}" for lang, form in columns) + " | background flagged |")
    print("|---|---:|" + "---:|" * (len(columns) + 1))
    for name, flagged, seconds in rows:
        cells = [name, f"{chars / seconds:,.0f}"]
        for lang, form in columns:
            marks = [flagged[background + k] for k, (lg, fm, _) in enumerate(planted) if (lg, fm) == (lang, form)]
            cells.append(f"{sum(marks)}/{len(marks)}")
        cells.append(f"{sum(flagged[:background])}/{background}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
