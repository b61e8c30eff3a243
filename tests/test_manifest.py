"""Corpus manifests: validation failures name path and key, readers, cleaning, holdout, shards."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from corpora.cleaning import Cleaning, cjk_count, clean_text
from corpora.manifest import (
    SourceStats,
    copies,
    iter_documents,
    iter_weighted,
    load_manifest,
)
from zhllama.errors import UserError
from zhllama.files import sha256_file

LINES = ["中文第一行。", "  second line  ", "", "中文第一行。", "短", "漢字繁體測試"]


def write_corpus(tmp_path: Path, lines=LINES) -> Path:
    path = tmp_path / "data" / "a.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_manifest(tmp_path: Path, sources: list[dict], **top) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"name": "t", "sources": sources, **top}, allow_unicode=True))
    return manifest


def write_data(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def txt_source(path: Path, **extra) -> dict:
    return {"name": "a", "path": f"data/{path.name}", "format": "txt", "language": "zh", "license": "CC0",
            "sha256": sha256_file(path), **extra}


def test_loads_and_iterates_txt_with_cleaning(tmp_path):
    corpus = write_corpus(tmp_path)
    clean = {"t2s": True, "min_chars": 2, "dedup": True}
    m = load_manifest(write_manifest(tmp_path, [txt_source(corpus, weight=2, clean=clean)]))
    (source,) = m.sources
    assert source.files == [corpus.resolve()] and source.weight == 2.0
    stats = SourceStats()
    docs = list(iter_documents(source, stats=stats))
    assert [d.text for d in docs] == ["中文第一行。", "second line", "汉字繁体测试"]
    assert [d.line for d in docs] == [1, 2, 6]
    assert (stats.records, stats.empty, stats.duplicates, stats.too_short) == (6, 1, 1, 1)
    assert stats.cjk_characters == 5 + 6


@pytest.mark.parametrize(
    "change, key",
    [
        ({"colour": "red"}, "sources[0] (a).colour: unknown key"),
        ({"path": "data/missing.txt"}, "sources[0] (a).path: 'data/missing.txt' matches no file"),
        ({"sha256": "0" * 64}, "sources[0] (a).sha256[data/a.txt]: checksum mismatch"),
        ({"sha256": None}, "sources[0] (a).sha256: required"),
        ({"format": "csv"}, "sources[0] (a).format: expected txt, jsonl or json"),
        ({"weight": -1}, "sources[0] (a).weight: expected a finite number >= 0"),
        ({"weight": "heavy"}, "sources[0] (a).weight"),
        ({"clean": {"lowercase": True}}, "sources[0] (a).clean.lowercase: unknown cleaning step"),
        ({"clean": {"min_chars": -3}}, "sources[0] (a).clean.min_chars"),
        ({"license": ""}, "sources[0] (a).license: required"),
        ({"text_fields": ["text"]}, "sources[0] (a).text_fields: txt sources have no fields"),
    ],
)
def test_each_bad_source_is_rejected_with_path_and_key(tmp_path, change, key):
    corpus = write_corpus(tmp_path)
    source = {**txt_source(corpus), **change}
    manifest = write_manifest(tmp_path, [source])
    with pytest.raises(UserError) as err:
        load_manifest(manifest)
    assert str(manifest) in str(err.value)
    assert key in str(err.value)


def test_unknown_top_level_key_and_every_problem_at_once(tmp_path):
    corpus = write_corpus(tmp_path)
    manifest = write_manifest(tmp_path, [{**txt_source(corpus), "weight": -1, "format": "xml"}], extra=1)
    with pytest.raises(UserError) as err:
        load_manifest(manifest)
    text = str(err.value)
    assert "extra: unknown key" in text and ".weight" in text and ".format" in text


def test_duplicate_source_names_rejected(tmp_path):
    corpus = write_corpus(tmp_path)
    with pytest.raises(UserError, match="duplicate source name 'a'"):
        load_manifest(write_manifest(tmp_path, [txt_source(corpus), txt_source(corpus)]))


def test_folder_and_glob_need_a_digest_per_file(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "data" / "b.txt").write_text("第二个文件\n", encoding="utf-8")
    digests = {f"data/{n}": sha256_file(tmp_path / "data" / n) for n in ("a.txt", "b.txt")}
    base = {"name": "a", "format": "txt", "language": "zh", "license": "CC0"}
    m = load_manifest(write_manifest(tmp_path, [{**base, "path": "data", "sha256": digests}]))
    assert [f.name for f in m.sources[0].files] == ["a.txt", "b.txt"]
    m2 = load_manifest(write_manifest(tmp_path, [{**base, "path": "data/*.txt", "sha256": digests}]))
    assert m2.fingerprint() == m.fingerprint() or m2.sources[0].files == m.sources[0].files
    with pytest.raises(UserError, match=r"no digest for data/b.txt"):
        load_manifest(write_manifest(tmp_path, [{**base, "path": "data", "sha256": {"data/a.txt": digests["data/a.txt"]}}]))


def test_fingerprint_follows_content_not_location(tmp_path):
    corpus = write_corpus(tmp_path)
    m1 = load_manifest(write_manifest(tmp_path, [txt_source(corpus)]))
    m2 = load_manifest(write_manifest(tmp_path, [txt_source(corpus, license="other licence")]))
    m3 = load_manifest(write_manifest(tmp_path, [txt_source(corpus, clean={"t2s": True})]))
    assert m1.fingerprint() == m2.fingerprint() != m3.fingerprint()


def test_base_dir_is_relative_to_the_manifest(tmp_path):
    corpus = write_corpus(tmp_path)
    sub = tmp_path / "manifests"
    sub.mkdir()
    manifest = sub / "m.yaml"
    manifest.write_text(yaml.safe_dump({"name": "t", "base_dir": "..", "sources": [txt_source(corpus)]}))
    assert load_manifest(manifest).sources[0].files == [corpus.resolve()]


def test_json_array_and_jsonl_fields(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    records = [{"q": "问题一", "a": "回答", "x": {"y": [{"z": "深"}]}}, {"q": "问题二", "a": "", "x": None}]
    (data / "r.json").write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    (data / "r.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    base = {"language": "zh", "license": "CC0", "text_fields": ["q", "a", "x.y.0.z"]}
    sources = [
        {**base, "name": "arr", "path": "data/r.json", "format": "json", "sha256": sha256_file(data / "r.json")},
        {**base, "name": "lines", "path": "data/r.jsonl", "format": "jsonl", "sha256": sha256_file(data / "r.jsonl")},
    ]
    m = load_manifest(write_manifest(tmp_path, sources))
    arr, lines = (list(iter_documents(s, split="all")) for s in m.sources)
    assert [d.text for d in arr] == [d.text for d in lines] == ["问题一\n回答\n深", "问题二"]
    assert [d.line for d in arr] == [2, 13] and [d.line for d in lines] == [1, 2]


def test_missing_field_names_file_and_line(tmp_path):
    path = write_data(tmp_path, "r.jsonl", '{"q": "一"}\n{"other": "二"}\n')
    src = txt_source(path, name="s", format="jsonl", text_fields=["q"])
    m = load_manifest(write_manifest(tmp_path, [src]))
    with pytest.raises(UserError, match=r"r.jsonl:2: record has no field 'q'"):
        list(iter_documents(m.sources[0]))


def test_undecodable_bytes_fail_or_skip(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_bytes("好的\n".encode() + b"bad \xff\xfe\n" + "再见\n".encode())
    src = txt_source(data / "a.txt")
    manifest = write_manifest(tmp_path, [src])
    with pytest.raises(UserError, match=r"a.txt:2: not valid UTF-8"):
        list(iter_documents(load_manifest(manifest).sources[0]))
    stats = SourceStats()
    skipping = load_manifest(manifest, on_decode_error="skip").sources[0]
    assert [d.text for d in iter_documents(skipping, stats=stats)] == ["好的", "再见"]
    assert stats.undecodable == 1


def test_shards_partition_exactly_even_with_dedup(tmp_path):
    lines = [f"文档{i % 37}" for i in range(300)]  # many duplicates across what would be shards
    corpus = write_corpus(tmp_path, lines)
    m = load_manifest(write_manifest(tmp_path, [txt_source(corpus, clean={"dedup": True})]))
    whole = [(d.line, d.text) for d in iter_documents(m.sources[0], split="all")]
    assert len(whole) == 37
    parts = [[(d.line, d.text) for d in iter_documents(m.sources[0], split="all", shard=(i, 4))] for i in range(4)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(whole) and len(set(flat)) == len(flat)
    assert all(parts)


def test_holdout_split_is_disjoint_complete_and_stable(tmp_path):
    corpus = write_corpus(tmp_path, [f"第{i}段文字" for i in range(400)])
    m = load_manifest(write_manifest(tmp_path, [txt_source(corpus)], holdout={"fraction": 0.25, "salt": "s"}))
    train = {d.text for d in iter_documents(m.sources[0])}
    held = {d.text for d in iter_documents(m.sources[0], split="holdout")}
    assert not train & held and len(train | held) == 400
    assert 60 < len(held) < 140
    again = load_manifest(write_manifest(tmp_path, [txt_source(corpus)], holdout={"fraction": 0.25, "salt": "s"}))
    assert {d.text for d in iter_documents(again.sources[0], split="holdout")} == held


def test_weighted_mix_repeats_and_subsamples(tmp_path):
    corpus = write_corpus(tmp_path, [f"句子{i}" for i in range(1000)])
    for weight, low, high in [(2.0, 2000, 2000), (0.5, 430, 570), (1.5, 1430, 1570), (0, 0, 0)]:
        m = load_manifest(write_manifest(tmp_path, [txt_source(corpus, weight=weight)]))
        mix = [d.text for d in iter_weighted(m, seed=3)]
        assert low <= len(mix) <= high, (weight, len(mix))
        assert mix == [d.text for d in iter_weighted(m, seed=3)]  # deterministic
    m = load_manifest(write_manifest(tmp_path, [txt_source(corpus, weight=1.5)]))
    assert [d.text for d in iter_weighted(m, seed=3)] != [d.text for d in iter_weighted(m, seed=4)]
    doc = next(iter_documents(m.sources[0]))
    assert copies(3.0, doc, 0) == 3


def test_cleaning_steps():
    assert clean_text("  ＡＢＣ，１２３  ", Cleaning(nfkc=True)) == "ABC,123"
    assert clean_text("ＡＢＣ，", Cleaning()) == "ＡＢＣ，"  # off by default: keeps full-width punctuation
    assert clean_text("臺灣的歷史", Cleaning(t2s=True)) == "台湾的历史"
    assert clean_text("短", Cleaning(min_chars=2)) is None
    assert clean_text("   ", Cleaning()) is None
    assert cjk_count("中文abc，。𠀀") == 3


def test_shipped_manifests_load(shared_data, repo_root):
    shipped = sorted(p for p in (repo_root / "corpora_manifests").glob("*.yaml") if not p.name.startswith("demo"))
    assert len(shipped) >= 3
    for path in shipped:
        m = load_manifest(path)
        assert m.sources and all(s.files or "hf_hub" in s.location for s in m.sources)
        for s in m.sources:
            assert all(str(f).startswith(str(shared_data.resolve())) for f in s.files), (path, s.name)
            first = next(iter_documents(s, split="all"))
            assert first.text and cjk_count(first.text) + len(first.text) > 0


def test_saved_datasets_folder_is_a_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["一二三", "四五六", "一二三"]}).save_to_disk(str(tmp_path / "ds"))
    digests = {p.relative_to(tmp_path).as_posix(): sha256_file(p) for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    src = {"name": "d", "hf_disk": "ds", "text_fields": ["text"], "language": "zh", "license": "CC0",
           "sha256": digests, "clean": {"dedup": True}}
    m = load_manifest(write_manifest(tmp_path, [src]))
    assert [(d.text, d.line) for d in iter_documents(m.sources[0], split="all")] == [("一二三", 1), ("四五六", 2)]


def test_manifest_check_cli_reports_and_fails(tmp_path, capsys):
    from vocab.__main__ import COMMANDS
    from zhllama.cli import main_for

    corpus = write_corpus(tmp_path)
    good = write_manifest(tmp_path, [txt_source(corpus, clean={"dedup": True})])
    with pytest.raises(SystemExit) as done:
        main_for("vocab", COMMANDS, "", ["manifest", "check", str(good), "--json"])
    assert done.value.code == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    (src,) = report["sources"]
    assert (src["documents"], src["duplicates"], src["empty"], src["cjk_characters"]) == (4, 1, 1, 5 + 1 + 6)
    assert src["characters_in_documents_of_at_least"] == {"4000": 0, "16000": 0, "64000": 0}
    english = tmp_path / "data" / "en.txt"
    english.write_text("only English here\n", encoding="utf-8")
    bad = write_manifest(tmp_path, [{**txt_source(english), "path": "data/en.txt"}])
    with pytest.raises(SystemExit) as done:
        main_for("vocab", COMMANDS, "", ["manifest", "check", str(bad)])
    assert done.value.code == 2
    assert "only 0.0% of its characters are Chinese" in capsys.readouterr().err


def test_undecodable_bytes_in_a_json_array(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "r.json").write_bytes('[{"t": "好"},\n {"t": "坏'.encode() + b"\xff" + '"},\n {"t": "再见"}]'.encode())
    src = {"name": "j", "path": "data/r.json", "format": "json", "text_fields": ["t"], "language": "zh",
           "license": "CC0", "sha256": sha256_file(data / "r.json")}
    manifest = write_manifest(tmp_path, [src])
    with pytest.raises(UserError, match="not valid UTF-8"):
        list(iter_documents(load_manifest(manifest).sources[0], split="all"))
    stats = SourceStats()
    docs = list(iter_documents(load_manifest(manifest, on_decode_error="skip").sources[0], split="all", stats=stats))
    assert [(d.text, d.line) for d in docs] == [("好", 1), ("再见", 3)] and stats.undecodable == 1


def test_shard_partition_property(tmp_path_factory):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.sampled_from(["甲", "乙", "丙", "丁", "戊 x", "己", "庚"]), min_size=1, max_size=40),
           st.integers(1, 5), st.booleans())
    def check(lines, n, dedup):
        root = tmp_path_factory.mktemp("p")
        corpus = write_corpus(root, lines)
        m = load_manifest(write_manifest(root, [txt_source(corpus, clean={"dedup": dedup})],
                                         holdout={"fraction": 0.3}))
        for split in ("train", "holdout"):
            whole = sorted((d.line, d.text) for d in iter_documents(m.sources[0], split=split))
            parts = [(d.line, d.text) for i in range(n) for d in iter_documents(m.sources[0], split=split, shard=(i, n))]
            assert sorted(parts) == whole

    check()


def test_array_of_plain_strings(tmp_path):
    src = txt_source(write_data(tmp_path, "s.json", '["第一篇", "", "第二篇"]'), name="s", format="json",
                     text_fields=["."])
    stats = SourceStats()
    docs = list(iter_documents(load_manifest(write_manifest(tmp_path, [src])).sources[0], split="all", stats=stats))
    assert [d.text for d in docs] == ["第一篇", "第二篇"] and stats.empty == 1
