"""Quality rules: each catches the failure it names, clean Chinese text passes, and the keys file
(`python -m corpora quality`) leaves the flagged documents out through the manifest's exclude:."""
from __future__ import annotations

import argparse
import dataclasses
import random

import pytest
import yaml
from helpers_prepare import write_lines, write_manifest

from corpora.manifest import iter_documents, load_manifest
from corpora.quality import _UNIT_RE, QualitySettings, _ngram_signals, measure
from corpora.quality_cli import run
from zhllama.errors import UserError

CLEAN = ("长江是亚洲第一长河，全长约六千三百公里，流经青海、西藏、四川、云南、重庆、湖北、湖南、江西、安徽、江苏和上海。"
         "它的流域面积约一百八十万平方公里，养育了全国三分之一的人口。三峡工程位于湖北省宜昌市，是世界上规模最大的水电站之一。"
         "长江中下游平原土地肥沃，自古以来就是重要的粮食产区，被称为鱼米之乡。")
ENGLISH = ("The Yangtze is the longest river in Asia. It flows for about 6,300 kilometres from the glaciers of the "
           "Qinghai-Tibet Plateau to the East China Sea, and its basin is home to a third of the country's people.")

PLANTED = {
    "dup_line_fraction": "\n".join(["首页 | 新闻 | 体育 | 娱乐 | 财经 | 登录"] * 8 + [CLEAN]),
    "top_4gram_fraction": CLEAN + "免费下载最新电影" * 40,
    "dup_20gram_fraction": CLEAN + CLEAN[:60] * 3,
    "mojibake_fraction": CLEAN.encode("utf-8").decode("gbk", errors="replace"),
    "symbol_fraction": "🔥🔥🔥限时抢购🔥🔥🔥" * 6 + CLEAN[:80],
    "cjk_fraction": ENGLISH + " Three Gorges Dam, near Yichang in Hubei, is among the largest hydroelectric "
                    "power stations in the world; the plains of its middle and lower reaches grow much of the rice. 长江",
}


def test_units_are_han_characters_and_runs_of_other_letters():
    assert _UNIT_RE.findall("模型 learns 中文, v2!") == ["模", "型", "learns", "中", "文", "v2"]


def test_clean_text_passes_every_rule():
    assert QualitySettings().failures(CLEAN, chinese=True) == []
    assert QualitySettings().failures(ENGLISH, chinese=False) == []  # the Chinese-share rule is for zh sources
    assert [r for r, _ in QualitySettings().failures(ENGLISH, chinese=True)] == ["cjk_fraction"]


@pytest.mark.parametrize("rule", sorted(PLANTED))
def test_each_rule_catches_its_failure(rule):
    failed = dict(QualitySettings().failures(PLANTED[rule], chinese=True))
    assert rule in failed, (rule, failed)
    off = dataclasses.replace(QualitySettings(), **{("min_" if rule == "cjk_fraction" else "max_") + rule: 0.0})
    assert rule not in dict(off.failures(PLANTED[rule], chinese=True))  # 0 turns the rule off


def test_wrongly_decoded_text_is_found_through_every_codec():
    for text in (CLEAN.encode("utf-8").decode("gbk", errors="replace"),
                 CLEAN.encode("utf-8").decode("cp1252", errors="replace"),
                 CLEAN.encode("utf-8").decode("latin-1"), "锟斤拷" * 20 + CLEAN[:100]):
        assert measure(text, True)["mojibake_fraction"] > 0.2, text[:30]
    assert measure(CLEAN, True)["mojibake_fraction"] == 0.0
    assert measure("Café crème brûlée, naïve façade, Zürich.", False)["mojibake_fraction"] == 0.0


def test_a_short_document_is_not_judged_by_repetition():
    signals = measure("好的好的好的好的好的", True)
    assert all(signals[k] == 0.0 for k in signals if "gram" in k or "line" in k)


def _plain_signals(units: list[str]) -> dict[str, float]:
    total = sum(map(len, units))
    out = {}
    for n in (4, 6, 8):
        grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
        counts = {g: grams.count(g) for g in grams}
        top = max(grams, key=lambda g: (counts[g], sum(map(len, g))))  # ties: the longest
        out[f"top_{n}gram_fraction"] = counts[top] * sum(map(len, top)) / total if counts[top] > 1 else 0.0
    for n in (10, 20):
        covered, seen = [False] * len(units), set()
        for i in range(len(units) - n + 1):
            gram = tuple(units[i : i + n])
            if gram in seen:
                covered[i : i + n] = [True] * n
            seen.add(gram)
        out[f"dup_{n}gram_fraction"] = sum(len(u) for u, c in zip(units, covered) if c) / total
    return out


def test_vectorised_ngram_signals_equal_a_plain_count():
    rng = random.Random(0)
    for trial in range(30):
        words = ["长", "江", "河", "流", "水", "Yangtze", "river", "6300", "的"][: rng.randint(2, 9)]
        units = [rng.choice(words) for _ in range(rng.randint(60, 200))]
        if trial % 3 == 0:  # a long repeated stretch
            units = units + units[10:50] + units[:30]
        fast, plain = _ngram_signals(units), _plain_signals(units)
        assert fast.keys() == plain.keys()
        for key in fast:
            assert fast[key] == pytest.approx(plain[key]), (trial, key)


def test_clean_wikipedia_paragraphs_pass(shared_data):
    settings = QualitySettings()
    for name, most in (("cmrc2018_dev_contexts.txt", 1), ("drcd_dev_contexts_zh_hant.txt", 0)):
        lines = [l for l in (shared_data / "pretrain" / name).read_text(encoding="utf-8").splitlines() if l]
        flagged = [l for l in lines if settings.failures(l, chinese=True)]
        assert len(flagged) <= most, (name, [f[:60] for f in flagged])


def _args(manifest, out, **overrides) -> argparse.Namespace:
    values = {f.name: f.default for f in dataclasses.fields(QualitySettings)}
    return argparse.Namespace(manifest=str(manifest), out=str(out), workers=overrides.pop("workers", 1),
                              **{**values, **overrides})


def test_cli_lists_the_flagged_documents_and_the_exclude_leaves_them_out(tmp_path, capsys):
    rng = random.Random(1)
    sentences = [s + "。" for s in CLEAN.split("。") if s]
    clean = [f"{i}号文档：" + "".join(rng.sample(sentences, 4)) for i in range(40)]
    planted = [f"{rule}：{text}".replace("\n", " / ") if rule != "dup_line_fraction" else None
               for rule, text in PLANTED.items()]
    planted = [p for p in planted if p]  # a txt source has one line per document: no multi-line menus here
    corpus = write_lines(tmp_path / "web.txt", clean[:20] + planted + clean[20:])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "web", "file": corpus}], holdout=0.2)
    keys = tmp_path / "quality.keys"
    assert run(_args(manifest, keys, workers=2)) == 0
    report = yaml.safe_load((tmp_path / "quality.keys.json").read_text())
    assert report["totals"] == {**report["totals"], "documents": 45, "flagged": 5}
    source = report["sources"]["web"]
    for rule in ("top_4gram_fraction", "dup_20gram_fraction", "mojibake_fraction", "symbol_fraction", "cjk_fraction"):
        assert source[rule] >= 1 and report["examples"][rule][0]["value"] > 0
    assert "5 of 45 documents fail a rule" in capsys.readouterr().out

    raw = yaml.safe_load(manifest.read_text())
    raw["exclude"] = {"file": str(keys), "sha256": report["sha256"]}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    kept = [d.text for d in iter_documents(load_manifest(manifest).sources[0], split="all")]
    assert sorted(kept) == sorted(clean)

    assert run(_args(manifest, keys, min_cjk_fraction=0.0)) == 0  # that rule off: the English document stays
    assert yaml.safe_load((tmp_path / "quality.keys.json").read_text())["totals"]["flagged"] == 4


def test_bad_settings_are_refused_together(tmp_path):
    with pytest.raises(UserError, match="3 problems") as info:
        run(_args("m.yaml", tmp_path / "k", max_symbol_fraction=1.5, min_cjk_fraction=-0.1, workers=0))
    assert "--max-symbol-fraction" in str(info.value) and "--workers" in str(info.value)
