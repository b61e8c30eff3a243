"""Quality rules side by side with datatrove's Gopher filters: clean text kept, planted junk flagged.

    python3 -m venv /tmp/dt && /tmp/dt/bin/pip install datatrove==0.10.1 spacy jieba regex
    PYTHONPATH=. /tmp/dt/bin/python benchmarks/quality_filter.py [--planted 200]

Both tools see the same documents. zhllama: `corpora.quality.QualitySettings()` (what
`python -m corpora quality` applies). datatrove 0.10.1: GopherRepetitionFilter + GopherQualityFilter
with the thresholds FineWeb-2 tuned for Mandarin (huggingface/fineweb-2 configs/cmn_Hani.yml, commit
05e6729: repetition, word length, non-alphabetic words, its 22 stop words), the way FineWeb-2
filtered Chinese, on words from jieba through spaCy (datatrove's own "zh" tokenizer; passed as an
instance because `load_word_tokenizer("zh")` in 0.10.1 builds it without jieba and splits only at
punctuation). The English set uses both tools' English defaults. Clean sets (Wikipedia paragraphs, long GPT-4o answers,
English Wikipedia articles) should be kept; planted sets, each made from CMRC paragraphs, should be
flagged: navigation lines repeated around the text, a keyword repeated, a stretch of the text
pasted again, UTF-8 read as GBK (mojibake), emoji spam, and English text in a Chinese source. Prints
the share flagged per set and tool, and documents per second on one core.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from corpora.quality import QualitySettings  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MENU = ["首页", "新闻", "体育", "娱乐", "财经", "科技", "汽车", "房产", "登录", "注册", "联系我们", "网站地图"]
SPAM = ["免费下载", "高清在线观看", "最新电影", "点击进入", "限时优惠", "官方网站"]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def clean_sets() -> dict[str, tuple[list[str], str]]:
    ruozhiba = [r["output"] for r in json.loads((DATA / "sft" / "ruozhiba_qa2449_gpt4o.json").read_text("utf-8"))]
    return {"CMRC paragraphs": (_lines(DATA / "pretrain" / "cmrc2018_dev_contexts.txt"), "zh"),
            "DRCD paragraphs (traditional)": (_lines(DATA / "pretrain" / "drcd_dev_contexts_zh_hant.txt"), "zh"),
            "ruozhiba GPT-4o answers": ([t for t in ruozhiba if len(t) >= 100], "zh"),
            "English Wikipedia articles": (_lines(DATA / "pretrain" / "wiki_demo_en.txt"), "en")}


def planted_sets(paragraphs: list[str], english: list[str], count: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    picks = [rng.choice(paragraphs) for _ in range(count)]

    def menu() -> str:
        return " | ".join(rng.sample(MENU, 6))

    english_text = " ".join(english)
    return {
        "navigation lines repeated": ["\n".join([menu()] * rng.randint(3, 6) + [p] + [menu()] * rng.randint(3, 6))
                                      for p in picks],
        "keyword repeated": [p + rng.choice(SPAM) * rng.randint(15, 40) for p in picks],
        "stretch pasted again": [p + p[len(p) // 3 : len(p) // 3 + 80] * 3 for p in picks],
        "mojibake (UTF-8 read as GBK)": [p.encode("utf-8").decode("gbk", errors="replace") for p in picks],
        "emoji spam": ["".join(rng.choice("🔥💰🎁👉⭐") * 3 + rng.choice(SPAM) for _ in range(8)) + p[:100]
                       for p in picks],
        "English in a Chinese source": [english_text[s : s + 600] for s in
                                        (rng.randrange(len(english_text) - 600) for _ in range(count))],
    }


def run_zhllama(docs: list[str], language: str) -> tuple[float, float]:
    settings = QualitySettings()
    started = time.perf_counter()
    flagged = sum(bool(settings.failures(d, chinese=language == "zh")) for d in docs)
    return flagged / len(docs), len(docs) / (time.perf_counter() - started)


# FineWeb-2's Mandarin settings (configs/cmn_Hani.yml at 05e6729): the peer as FineWeb-2 ran it
FINEWEB2_CMN = {
    "repetition": {"dup_line_frac": 0.287, "top_n_grams": ((2, 0.256), (3, 0.201), (4, 0.171)),
                   "dup_n_grams": ((5, 0.198), (6, 0.182), (7, 0.167), (8, 0.154), (9, 0.14), (10, 0.127))},
    "quality": {"min_avg_word_length": 1, "max_avg_word_length": 5, "max_non_alpha_words_ratio": 0.735,
                "stop_words": list("的年在月是和日了於·為有被人中为他與後也而由")},
}


def run_datatrove(docs: list[str], language: str) -> tuple[float, float]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    if language == "zh":
        words = SpaCyTokenizer("zh")
        filters = [GopherRepetitionFilter(language=words, **FINEWEB2_CMN["repetition"]),
                   GopherQualityFilter(language=words, **FINEWEB2_CMN["quality"])]
    else:
        filters = [GopherRepetitionFilter(language=language), GopherQualityFilter(language=language)]
    for f in filters:  # load jieba/spaCy before the clock starts
        f.filter(Document(text="预热。" * 60, id="warm"))
    started = time.perf_counter()
    flagged = 0
    for i, text in enumerate(docs):
        doc = Document(text=text, id=str(i))
        flagged += any(f.filter(doc) is not True for f in filters)
    return flagged / len(docs), len(docs) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planted", type=int, default=200, help="documents per planted set")
    args = p.parse_args()
    clean = clean_sets()
    planted = planted_sets(clean["CMRC paragraphs"][0], clean["English Wikipedia articles"][0], args.planted)
    rows = [(name, docs, lang, "keep") for name, (docs, lang) in clean.items()]
    rows += [(name, docs, "zh", "flag") for name, docs in planted.items()]
    print(f"{'set':<32} {'docs':>5} {'want':>5} {'zhllama':>9} {'datatrove':>10} {'zhllama docs/s':>15} "
          f"{'datatrove docs/s':>17}")
    for name, docs, language, want in rows:
        ours, our_speed = run_zhllama(docs, language)
        theirs, their_speed = run_datatrove(docs, language)
        print(f"{name:<32} {len(docs):>5} {want:>5} {ours:>9.1%} {theirs:>10.1%} {our_speed:>15,.0f} "
              f"{their_speed:>17,.0f}")
    print("(share of documents flagged; 'keep' sets should be near 0%, 'flag' sets near 100%)")


if __name__ == "__main__":
    main()
