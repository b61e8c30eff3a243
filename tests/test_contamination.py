"""Benchmark contamination: items found in a training corpus by 13-unit grams, whatever the spacing and
punctuation; the report per split; the documents to leave out, through the manifest's exclude: list."""
from __future__ import annotations

import argparse
import json
import random

import pytest
import yaml
from helpers_bench import write_ceval, write_mmlu
from helpers_prepare import write_lines, write_manifest

from corpora.exclude import write_exclude
from corpora.manifest import document_key, iter_documents, load_manifest
from evaluation.contamination import ContaminationSettings, ItemIndex, units
from evaluation.benchmarks import item_key
from evaluation.contamination_cli import item_statuses, run
from evaluation.results import by_contamination
from zhllama.errors import UserError

LONG = [  # C-Eval-like questions, long enough to be checked (>= 13 units)
    "在中华人民共和国境内设立的有限责任公司，其注册资本的最低限额应当由哪一部法律规定？",
    "下列选项中，关于光合作用的暗反应阶段所需要的物质和发生场所的描述完全正确的是哪一项？",
    "某企业二零一九年的营业收入为五百万元，营业成本为三百万元，则该企业的毛利率是多少？",
    "唐代诗人杜甫被后世尊称为诗圣，他的诗歌被称为诗史，下列作品中不属于杜甫所作的是哪一首？",
]
MMLU_Q = "Which of the following best describes the primary function of the mitochondria in eukaryotic cells?"
FILLER = "今天天气很好我们一起去公园散步看到了许多美丽的花朵和快乐的小朋友在草地上奔跑嬉戏"


def _settings(**kw) -> ContaminationSettings:
    return ContaminationSettings(**kw)


def test_units_ignore_spacing_punctuation_width_and_case():
    assert units("下列说法，正确的是？") == units("下列 说法正确 的是") == units("下列说法正确的是")
    assert units("The  Cat, sat!") == units("the cat sat") and len(units("the cat sat")) == 3
    assert units("ＡＢＣ１２３ Hello") == units("abc123 hello") and len(units("2019年")) == 2
    assert units("\U000f0001中") == units("中")  # a private-use character in the text cannot pose as a word
    assert units("cats") != units("cat") and units("猫") != units("狗")


def test_verbatim_reformatted_partial_short_and_clean_items():
    short = "秦始皇统一六国是哪一年"  # 11 units: one gram of its own length
    items = [[LONG[0], "公司法", "民法典", "刑法", "宪法"], [LONG[1]], [LONG[2]], ["一加一等于几？", "二"], [short]]
    index = ItemIndex(items, _settings())
    spaced = " ".join(LONG[0]).replace("，", "、")  # spaced out, other punctuation
    assert index.scan(0, FILLER + spaced + FILLER) == {0}
    assert index.scan(1, FILLER + LONG[1][:15] + FILLER) == {1}  # a 14-unit piece of a 40-unit question
    assert index.scan(2, FILLER + "请问：" + short + "？" + FILLER) == {4}
    assert index.scan(3, FILLER * 3) == set()
    verdicts = index.verdicts()
    assert [v.status for v in verdicts] == ["contaminated", "partial", "clean", "unchecked", "contaminated"]
    assert verdicts[0].coverage == 1.0 and verdicts[0].documents == [0]  # the short choices are not checked
    assert verdicts[1].coverage == pytest.approx(14 / 40, abs=1e-4) and len(units(LONG[1])) == 40
    assert verdicts[3].checked_units == 0 and verdicts[4].documents == [2]


def test_a_gram_many_items_share_is_a_template_and_dropped():
    stem = "以下关于中国古代历史的说法中正确的是"
    items = [[stem + tail] for tail in ("商鞅变法", "贞观之治", "郑和下西洋", "王安石变法", "张骞出使西域")]
    index = ItemIndex(items, _settings(max_items=5))
    assert index.templates > 0
    assert index.scan(0, FILLER + stem + FILLER) == set()  # the shared stem names no item
    assert index.scan(1, FILLER + stem + "郑和下西洋" + FILLER) == {2}
    assert ItemIndex(items, _settings(max_items=6)).scan(0, stem) == {0, 1, 2, 3, 4}


def _plain_found(fields: list[str], doc: str, s: ContaminationSettings) -> set[int]:
    """The covered unit positions by plain substring search (what ItemIndex must find, slowly)."""
    seq, covered, base = units(doc), set(), 0
    for field in map(units, fields):
        if len(field) < s.min_units:
            continue
        length = min(s.ngram, len(field))
        for start in range(len(field) - length + 1):
            if field[start:start + length] in seq:
                covered.update(range(base + start, base + start + length))
        base += len(field)
    return covered


def test_scan_finds_what_a_plain_substring_search_finds():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 60)] + ["apple ", "pie ", "x1 ", "，"]
    text = lambda n: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    items = [[text(rng.randint(4, 40)) for _ in range(rng.randint(1, 3))] for _ in range(60)]
    settings = _settings(ngram=9, min_units=5, max_items=100)
    index = ItemIndex(items, settings)
    docs = []
    for d in range(40):  # pieces of random items, of random lengths, inside random text
        pieces = [text(30)]
        for _ in range(3):
            field = rng.choice(rng.choice(items))
            start = rng.randrange(len(field))
            pieces += [field[start:start + rng.randint(3, 30)], text(5)]
        docs.append("".join(pieces))
        index.scan(d, docs[-1])
    for item, (fields, verdict) in enumerate(zip(items, index.verdicts())):
        covered = set().union(*(_plain_found(fields, doc, settings) for doc in docs))
        total = sum(len(units(f)) for f in fields if len(units(f)) >= settings.min_units)
        assert verdict.coverage == pytest.approx(len(covered) / total if total else 0.0, abs=1e-4), item
    assert sum(v.status == "contaminated" for v in index.verdicts()) > 5  # the test plants enough to matter


def _benchmarks(tmp_path):
    ceval = write_ceval(tmp_path / "ceval", {
        "dev": {"law": [(LONG[3], "甲", "乙", "丙", "丁", "A")]},
        "val": {"law": [(LONG[0], "公司法", "民法典", "刑法", "宪法", "A")],
                "biology": [(LONG[1], "甲", "乙", "丙", "丁", "B")]},
        "test": {"law": [(LONG[2], "百分之四十", "百分之三十", "百分之二十", "百分之十", "")]},  # no answers, as published
    })
    mmlu = write_mmlu(tmp_path / "mmlu", {"val": {"biology": [
        (MMLU_Q, "It produces energy for the cell", "It stores genes", "It makes proteins", "It digests waste", "A")]}})
    return ceval, mmlu


def _cli(manifest, ceval, mmlu, out, **kw):
    defaults = ContaminationSettings()
    base = dict(manifest=str(manifest), benchmark=[f"ceval={ceval}", f"mmlu={mmlu}"], eval_manifest=[], reading=[], math=[], out=str(out),
                workers=1,
                ngram=defaults.ngram, min_units=defaults.min_units, max_items=defaults.max_items,
                min_coverage=defaults.min_coverage, t2s=False)
    return argparse.Namespace(**{**base, **kw})


def test_cli_reports_each_split_and_its_keys_leave_the_documents_out(tmp_path, capsys):
    ceval, mmlu = _benchmarks(tmp_path)
    leaked = [FILLER + "例题：" + " ".join(LONG[0]) + "答案是A。" + FILLER,  # val, spaced out
              "期末考试 " + LONG[2] + " 解析略",  # test split: answers unpublished, still leaked
              "QUIZ: " + MMLU_Q.upper() + " Answer: A"]  # English, other case
    lines = [FILLER + str(i) for i in range(20)] + leaked + [FILLER + LONG[1][:14] + FILLER]  # a partial piece
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "web", "file": corpus}])
    out = tmp_path / "contamination.keys"
    assert run(_cli(manifest, ceval, mmlu, out)) == 0
    printed = capsys.readouterr().out
    assert "| ceval | val | 2 | 1 | 1 | 0 | 0 | 50.00% |" in printed and "3 contain a contaminated item" in printed
    report = json.loads((tmp_path / "contamination.keys.json").read_text())
    results = report["results"]
    assert results["ceval"]["test"]["contaminated"] == 1 and results["ceval"]["dev"]["clean"] == 1
    assert results["ceval"]["val"]["subjects"]["biology"] == {"items": 1, "clean": 0, "partial": 1,
                                                              "contaminated": 0, "unchecked": 0}
    assert results["mmlu"]["val"]["contaminated"] == 1
    found = {it["question"][:10]: it for it in report["items"]}
    assert found[LONG[0][:10]]["documents"] == [{"source": "web", "file": "corpus.txt", "line": 21}]
    assert found[LONG[0][:10]]["where"].endswith("law_val.csv:2")
    keys = {line for line in out.read_text().splitlines() if not line.startswith("#")}
    assert keys == {document_key(t).hex() for t in leaked}  # the partial piece stays in

    in_parallel = tmp_path / "parallel.keys"
    assert run(_cli(manifest, ceval, mmlu, in_parallel, workers=2)) == 0  # two processes, a share each: the same
    parallel = json.loads((tmp_path / "parallel.keys.json").read_text())
    assert (parallel["results"], parallel["items"]) == (report["results"], report["items"])
    assert in_parallel.read_text().splitlines()[-3:] == out.read_text().splitlines()[-3:]

    # The manifest leaves them out, next to another list (exclude: takes several files).
    other = tmp_path / "other.keys"
    write_exclude(other, [document_key(lines[0])], "", ["another list"])
    before = load_manifest(manifest)
    raw = yaml.safe_load(manifest.read_text())
    raw["exclude"] = [{"file": str(other), "sha256": _sha(other)}, {"file": str(out), "sha256": report["sha256"]}]
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    after = load_manifest(manifest)
    assert after.fingerprint() != before.fingerprint()
    kept = [d.text for d in iter_documents(after.sources[0])]
    assert len(kept) == len(lines) - 4 and not set(leaked) & set(kept) and lines[0] not in kept
    assert run(_cli(manifest, ceval, mmlu, tmp_path / "again.keys")) == 0  # the decontaminated corpus is clean
    again = json.loads((tmp_path / "again.keys.json").read_text())["results"]
    assert sum(c["contaminated"] for splits in again.values() for c in splits.values()) == 0


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_arguments_and_exclude_lists_are_reported_together(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", [FILLER])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "web", "file": corpus}])
    args = _cli(manifest, "x", "y", tmp_path / "k", benchmark=["ceval", "gsm8k=d", "mmlu=a", "mmlu=b"], ngram=1,
                min_coverage=0, workers=0)
    with pytest.raises(UserError) as info:
        run(args)
    text = str(info.value)
    assert "7 problems" in text and "--benchmark 'gsm8k=d'" in text and "--benchmark mmlu given twice" in text
    raw = yaml.safe_load(manifest.read_text())
    raw["exclude"] = [{"file": "missing.keys", "sha256": "0" * 64}, {"sha256": "0" * 64}]
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(UserError) as info:
        load_manifest(manifest)
    assert "exclude[0].file: " in str(info.value) and "exclude[1].file: expected a path" in str(info.value)


def test_clean_and_contaminated_accuracy_apart_and_unchecked_splits_refused(tmp_path):
    report = {"results": {"ceval": {"val": {}}}, "items": [
        {"benchmark": "ceval", "split": "val", "key": "k1", "status": "contaminated"},
        {"benchmark": "ceval", "split": "val", "key": "k2", "status": "partial"},
        {"benchmark": "ceval", "split": "dev", "key": "k3", "status": "contaminated"}]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    statuses = item_statuses(path, "ceval", "val")
    assert statuses == {"k1": "contaminated", "k2": "partial"}
    preds = [{"key": k, "correct": c} for k, c in [("k1", True), ("k2", False), ("k3", False), ("k4", True)]]
    assert by_contamination(preds, statuses) == {
        "clean": {"accuracy": 0.5, "correct": 1, "items": 2}, "partial": {"accuracy": 0.0, "correct": 0, "items": 1},
        "contaminated": {"accuracy": 1.0, "correct": 1, "items": 1}}
    with pytest.raises(UserError, match="mmlu val was not checked"):
        item_statuses(path, "mmlu", "val")
    path.write_text("[]")
    with pytest.raises(UserError, match="not a report of"):
        item_statuses(path, "ceval", "val")


def test_belle_eval_questions_are_found_in_the_manifest_that_holds_them(shared_data, repo_root, tmp_path):
    """The vocab manifest trains on BELLE's eval set (its training part); the SFT manifest does not."""
    vocab = load_manifest(repo_root / "corpora_manifests/shared_zh_vocab.yaml")
    trained_on = [d.text for d in iter_documents(vocab.source("belle_eval"))]  # question + answer, 90% of them
    questions = [d.text for d in iter_documents(load_manifest(repo_root / "corpora_manifests/eval_belle.yaml").sources[0])]
    in_training = [q for q in questions if len(units(q)) >= 8 and any(q in text for text in trained_on)]
    reports = {}
    for name in ("shared_zh_vocab", "sft_zh_alpaca"):
        out = tmp_path / f"{name}.keys"
        args = _cli(repo_root / f"corpora_manifests/{name}.yaml", "", "", out, benchmark=[],
                    eval_manifest=[str(repo_root / "corpora_manifests/eval_belle.yaml")])
        assert run(args) == 0
        reports[name] = json.loads(out.with_name(out.name + ".json").read_text())["results"]["belle_eval"]["all"]
    assert reports["sft_zh_alpaca"]["contaminated"] == reports["sft_zh_alpaca"]["partial"] == 0
    vocab_report = reports["shared_zh_vocab"]
    assert len(in_training) > 800 and vocab_report["partial"] == 0
    contaminated = {it["key"] for it in json.loads((tmp_path / "shared_zh_vocab.keys.json").read_text())["items"]
                    if it["status"] == "contaminated"}
    assert {item_key([q]) for q in in_training} <= contaminated
    # Two more share most of their words with a trained item ("将以下句子进行改写，使其更加简洁明了: <another
    # sentence>"): an instruction template in under max_items items still counts, as n-gram checks do.
    assert len(contaminated) - len(in_training) <= 2


def test_t2s_finds_a_copy_written_in_the_other_script():
    simplified = "这是一个关于台湾历史的问题，请问下列关于清朝时期的说法哪一项是正确的？"
    traditional = "這是一個關於臺灣歷史的問題，請問下列關於清朝時期的說法哪一項是正確的？"
    for t2s, expected in ((False, set()), (True, {0})):
        index = ItemIndex([[simplified]], _settings(t2s=t2s))
        assert index.scan(0, FILLER + traditional + FILLER) == expected, t2s
