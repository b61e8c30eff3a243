"""vocab train: a tiny SentencePiece model from a few hundred generated lines (seconds)."""
from __future__ import annotations

import json
import random

import pytest
import yaml

from vocab.__main__ import COMMANDS
from corpora.manifest import iter_documents, load_manifest
from vocab.stats import load_tokenizer, unreachable
from vocab.train import HAN_RUN, TrainSettings, jieba_cutter, train, training_segments
from zhllama.cli import main_for
from zhllama.errors import UserError
from zhllama.files import sha256_file

WORDS = ["我们", "喜欢", "学习", "中文", "北京", "大学", "研究", "人工", "智能", "模型", "数据", "语言",
         "学生", "老师", "时间", "问题", "方法", "城市", "历史", "音乐"]


@pytest.fixture(scope="module")
def corpus_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    lines = []
    for i in range(400):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        if i % 3 == 0:  # a fixed phrase whose word-crossing pairs (们喜, 欢学 ...) are very frequent
            words = ["我们", "喜欢", "学习"] + words
        lines.append("".join(words) + ("。Python 3.12 works" if i % 10 == 0 else "。"))
    (root / "zh.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = root / "m.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "tiny", "holdout": {"fraction": 0.1, "salt": "t"},
        "sources": [{"name": "zh", "path": "zh.txt", "format": "txt", "language": "zh", "license": "CC0",
                     "sha256": sha256_file(root / "zh.txt"), "clean": {"dedup": True}}],
    }, allow_unicode=True))
    return manifest


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"vocab_size": 80, "num_threads": 1, **kw})


def pieces_of(out) -> list[str]:
    tok = load_tokenizer(out / "zh.model")
    return [tok.sp.id_to_piece(i) for i in range(3, tok.size)]


def test_train_writes_model_vocab_and_report(corpus_manifest, tmp_path):
    out = tmp_path / "zh"
    report = train(corpus_manifest, settings(), out)
    assert sorted(p.name for p in out.iterdir()) == ["train_report.json", "zh.model", "zh.vocab"]
    assert json.loads((out / "train_report.json").read_text()) == report
    manifest = load_manifest(corpus_manifest)
    assert report["manifest"]["fingerprint"] == manifest.fingerprint()
    assert report["manifest"]["files"]["zh"] == manifest.sources[0].sha256
    kw = report["sentencepiece_trainer"]
    assert (kw["model_type"], kw["byte_fallback"], kw["split_digits"], kw["vocab_size"]) == ("bpe", False, True, 80)
    # Only the training split is read: the held-out documents never reach the trainer.
    assert report["corpus"]["documents"] == len(list(iter_documents(manifest.sources[0])))
    assert report["corpus"]["documents"] < len(list(iter_documents(manifest.sources[0], split="all")))
    pieces = pieces_of(out)
    assert len(pieces) == 77 and all(HAN_RUN.fullmatch(p) for p in pieces)  # no ▁, Latin or digit pieces
    assert any(len(p) > 1 for p in pieces)
    vocab = (out / "zh.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 80 and vocab[3].split("\t")[0] == pieces[0]
    tok = load_tokenizer(out / "zh.model")
    assert unreachable(tok, range(3, tok.size)) == []  # every piece applies to unspaced text
    train(corpus_manifest, settings(), tmp_path / "again")  # same inputs and settings, same bytes
    assert (tmp_path / "again" / "zh.model").read_bytes() == (out / "zh.model").read_bytes()


def test_jieba_pieces_never_cross_word_boundaries(corpus_manifest, tmp_path):
    cut = jieba_cutter()
    words = {w for doc in iter_documents(load_manifest(corpus_manifest).sources[0])
             for w in training_segments(doc.text, settings(jieba=True), cut)}

    def inside_a_word(piece):
        return any(piece in w for w in words)

    train(corpus_manifest, settings(jieba=True, vocab_size=70), tmp_path / "j")
    train(corpus_manifest, settings(vocab_size=70), tmp_path / "plain")
    assert all(inside_a_word(p) for p in pieces_of(tmp_path / "j"))
    assert not all(inside_a_word(p) for p in pieces_of(tmp_path / "plain"))  # e.g. 们喜: the test can fail
    tok = load_tokenizer(tmp_path / "j" / "zh.model")
    assert tok.sp.encode("我们喜欢学习", out_type=str) == ["我们", "喜欢", "学习"]  # unspaced text
    assert unreachable(tok, range(3, tok.size)) == []


def test_lines_mode_keeps_non_han_text():
    s = settings(segments="lines", max_segment_chars=4)
    assert list(training_segments("中文abc\n\n一二", s)) == ["中文ab", "c", "一二"]
    assert list(training_segments("中文abc，一二三", settings())) == ["中文", "一二三"]


def test_refuses_existing_output_and_too_small_corpus(corpus_manifest, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(UserError, match="already exists"):
        train(corpus_manifest, settings(), out)
    with pytest.raises(UserError, match="vocab_size"):
        train(corpus_manifest, settings(vocab_size=5000), tmp_path / "big")
    assert not (tmp_path / "big").exists()
    with pytest.raises(UserError, match="character_coverage"):
        train(corpus_manifest, settings(character_coverage=1.5), tmp_path / "bad")


def test_cli(corpus_manifest, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as done:
        main_for("vocab", COMMANDS, "", ["train", "--manifest", str(corpus_manifest), "--vocab-size", "60",
                                         "--out", str(out), "--num-threads", "1"])
    assert done.value.code == 0 and (out / "zh.model").is_file()
    assert "trained 60 pieces" in capsys.readouterr().out


def test_merge_into_real_llama(corpus_manifest, tmp_path, shared_data, capsys):
    out = tmp_path / "m"
    base = shared_data / "tokenizers" / "llama2c" / "tokenizer.model"
    with pytest.raises(SystemExit) as done:
        main_for("vocab", COMMANDS, "", ["train", "--manifest", str(corpus_manifest), "--vocab-size", "60",
                                         "--out", str(out), "--num-threads", "1", "--merge-into", str(base)])
    assert done.value.code == 0, capsys.readouterr().err
    report = json.loads((out / "merged" / "merge_report.json").read_text())
    assert report["base_vocab_size"] == 32000 and report["added"] > 0
    merged = load_tokenizer(out / "merged")
    assert merged.size == 32000 + report["added"]


def _manifest_of(folder, lines):
    import hashlib

    corpus = folder / "c.txt"
    corpus.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "sources": [{
        "name": "c", "path": str(corpus), "format": "txt", "language": "zh", "license": "test",
        "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest()}]}), encoding="utf-8")
    return path


def test_an_empty_corpus_is_a_clear_error_not_sentencepieces_internal_one(tmp_path):
    manifest = _manifest_of(tmp_path, ["only English text here", "no Chinese at all"])
    with pytest.raises(UserError, match=r"no training text .*segments=han keeps only Chinese") as info:
        train(manifest, settings(), tmp_path / "o")
    assert "INTERNAL" not in str(info.value) and not (tmp_path / "o").exists()


def test_a_too_small_vocab_size_says_raise_it(tmp_path):
    manifest = _manifest_of(tmp_path, ["春眠不觉晓处处闻啼鸟夜来风雨声花落知多少床前明月光疑是地上霜"] * 20)
    with pytest.raises(UserError, match=r"vocab_size 10 \(--vocab-size\) is too small: .*raise --vocab-size to at least \d+"):
        train(manifest, settings(vocab_size=10, character_coverage=1.0), tmp_path / "o")
