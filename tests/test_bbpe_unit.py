"""Byte-level BPE extension on a tiny hand-made rank file: no real data, no network."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tokenizers import Tokenizer

from helpers_bbpe import PARTIAL, WORDS, make_tiny, tiny_rank_lines
from vocab.bbpe_base import load_bbpe_base
from vocab.bbpe_hf import build_tokenizer
from vocab.bbpe_merge import extend_bbpe
from vocab.bbpe_profiles import LLAMA3_PATTERN
from vocab.bbpe_train import TrainSettings, bytes_rule, segments_of
from vocab.bbpe_verify import ids_of
from vocab.bbpe_write import load_rank_encoder

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("bbpe"))


def test_new_tokens_are_han_only_merges_appended_after_every_base_merge(tiny):
    report, out = tiny["report"], tiny["out"]
    base = load_bbpe_base(tiny["rank"], LLAMA3_PATTERN)
    assert report["added"] > 5 and report["new_ids"][0] == base.next_id == len(tiny_rank_lines())
    assert all(c["ok"] for c in report["checks"].values()), report["checks"]
    new_tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    new = [new_tok.decode([i]) for i in range(base.next_id, base.next_id + report["added"])]
    assert all(bytes_rule("han")(t.encode()) for t in new), new
    assert PARTIAL in new  # 2-byte prefix + last byte: a whole character, never a partial one
    assert "我们" in new and "the" not in new
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    base_merges = json.loads(build_tokenizer(base).to_str())["model"]["merges"]
    assert merges[:len(base_merges)] == base_merges and len(merges) > len(base_merges)
    # the rank file is the base's bytes plus one line per new token, rank == id
    written = (out / "original" / "tiny.tiktoken").read_bytes()
    assert written.startswith(tiny["rank"].read_bytes())
    assert len(written.splitlines()) == base.next_id + report["added"]


def test_shorter_on_chinese_and_identical_elsewhere(tiny):
    base = load_bbpe_base(tiny["rank"], LLAMA3_PATTERN)
    base_tok = build_tokenizer(base)
    new_tok = Tokenizer.from_file(str(tiny["out"] / "tokenizer.json"))
    lines = tiny["lines"][:50]
    assert sum(map(len, ids_of(new_tok, lines))) < 0.7 * sum(map(len, ids_of(base_tok, lines)))
    english = ["the thing is in the other thing", "Ünïcödé ąę 123 ┬─┬ 😀"]
    assert ids_of(new_tok, english) == ids_of(base_tok, english)


_BUILT: dict = {}


def _property_fixture(tiny):
    if "tok" in _BUILT:
        return _BUILT["tok"]
    base = load_bbpe_base(tiny["rank"], LLAMA3_PATTERN)
    enc, offset = load_rank_encoder(tiny["out"] / "original" / "tiny.tiktoken", "tiktoken", base.pattern)
    _BUILT["tok"] = build_tokenizer(base), Tokenizer.from_file(str(tiny["out"] / "tokenizer.json")), enc
    return _BUILT["tok"]


HAN_OR_ANY = st.one_of(st.text(max_size=40), st.text(alphabet="".join(WORDS) + PARTIAL + "的 a。", max_size=40),
                       st.lists(st.sampled_from(WORDS + [PARTIAL, " ", "the", "\n", "😀"])).map("".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=HAN_OR_ANY)
def test_property_never_longer_roundtrip_same_ids(tiny, text):
    base_tok, new_tok, enc = _property_fixture(tiny)
    (old,), (new,) = ids_of(base_tok, [text]), ids_of(new_tok, [text])
    assert len(new) <= len(old)
    assert new_tok.decode(new, skip_special_tokens=False) == text
    if not any("\u4e00" <= c <= "\u9fff" for c in text):
        assert new == old
    assert enc.encode_ordinary(text) == new


def test_jieba_segments_never_cross_a_word_boundary():
    text = "我们喜欢学习"

    class Enc:  # segments_of needs only an encoding: one token per character, all in one pre-token
        ids = list(range(len(text)))
        offsets = [(i, i + 1) for i in range(len(text))]
        word_ids = [0] * len(text)

    ok = bytes_rule("han")
    han = lambda c: ok(c.encode())  # noqa: E731
    assert list(segments_of(text, Enc, han, jieba=False)) == [tuple(range(6))]
    assert list(segments_of(text, Enc, han, jieba=True)) == [(0, 1), (2, 3), (4, 5)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vocab", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


def test_cli_merge_and_train_merge_into(tiny, tmp_path):
    out = tmp_path / "merged"
    got = _cli("merge", "--base", str(tiny["rank"]), "--pattern", LLAMA3_PATTERN, "--manifest",
               str(tiny["manifest"]), "--new-tokens", "20", "--out", str(out))
    assert got.returncode == 0, got.stderr
    report = json.loads((out / "merge_report.json").read_text())
    assert report["added"] == 20 and report["training_text"]["name"] == "tiny"
    # a rank file we do not know needs its pattern: train --merge-into has no --pattern, so it says so
    got = _cli("train", "--manifest", str(tiny["manifest"]), "--vocab-size", "20", "--out", str(tmp_path / "t"),
               "--merge-into", str(out))  # the HF folder just written: its tokenizer.json carries the pattern
    assert got.returncode == 0, got.stderr
    assert json.loads((tmp_path / "t" / "merged" / "merge_report.json").read_text())["base"]["format"] == "hf"


def _wordpiece_json(path: Path) -> None:
    from tokenizers.models import WordPiece
    Tokenizer(WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(path))


def _unigram_json(path: Path) -> None:
    from tokenizers.models import Unigram
    Tokenizer(Unigram([("a", -1.0), ("b", -2.0)], unk_id=None)).save(str(path))


def test_bad_bases_give_one_clear_error_and_write_nothing(tiny, tmp_path):
    lines = tiny_rank_lines()
    cases = {"WordPiece": ("wp.json", _wordpiece_json), "Unigram": ("ug.json", _unigram_json)}
    files = {}
    for name, (file, make) in cases.items():
        make(tmp_path / file)
        files[name] = tmp_path / file
    (tmp_path / "nopattern.tiktoken").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "corrupt.tiktoken").write_bytes(b"\n".join(lines[:300] + [b"%%notbase64%% 300"] + lines[301:]))
    (tmp_path / "nobytes.tiktoken").write_bytes(b"\n".join(lines[1:]))  # byte 0x00 missing
    expected = {
        "WordPiece": [files["WordPiece"]], "Unigram": [files["Unigram"]],
        "without a split pattern": [tmp_path / "nopattern.tiktoken"],
        "line 301 is not a tiktoken rank line": [tmp_path / "corrupt.tiktoken", "--pattern", "x"],
        "byte fallback": [tmp_path / "nobytes.tiktoken", "--pattern", "x"],
    }
    for message, (base, *extra) in expected.items():
        out = tmp_path / "out"
        got = _cli("merge", "--base", str(base), *extra, "--manifest", str(tiny["manifest"]), "--new-tokens", "5",
                   "--out", str(out))
        assert got.returncode == 2, (message, got.stderr)
        assert message in got.stderr and str(base) in got.stderr and "Traceback" not in got.stderr, got.stderr
        assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".out*")), message


def test_stats_reports_tokens_per_char_and_guarantees(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(tiny["lines"][:20] + ["the thing in the other thing", "😀 ok"]) + "\n", encoding="utf-8")
    got = _cli("stats", "--tokenizer", str(tiny["out"]), "--base", str(tiny["out"] / "original" / "tiny.tiktoken"), "--json",
               str(text))
    assert got.returncode != 0 and "without a split pattern" in got.stderr  # the rank file alone has no pattern
    hf_base = tmp_path / "base"
    hf_base.mkdir()
    from vocab.bbpe_write import write_hf_folder

    write_hf_folder(load_bbpe_base(tiny["rank"], LLAMA3_PATTERN), [], hf_base)
    got = _cli("stats", "--tokenizer", str(tiny["out"]), "--base", str(hf_base), "--json", str(text))
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    stats = report["files"][str(text)]
    assert report["tokenizer"]["added"] == tiny["report"]["added"] and report["tokenizer"]["unreachable_added"] == 0
    assert stats["tokens_per_char"] < 0.7 * stats["base_tokens_per_char"]
    assert stats["non_han_lines"] == 2 and stats["non_han_lines_changed"] == 0
    assert stats["lines_longer"] == 0 and stats["roundtrip_failures"] == 0


def test_full_width_punctuation_only_when_allowed(tiny, tmp_path):
    report = extend_bbpe(tiny["rank"], tiny["lines"], tmp_path / "p", TrainSettings(new_tokens=60, allowed="han+punct"),
                         pattern=LLAMA3_PATTERN)
    assert all(c["ok"] for c in report["checks"].values()), report["checks"]
    tok = Tokenizer.from_file(str(tmp_path / "p" / "tokenizer.json"))
    first = report["new_ids"][0]
    punct = [tok.decode([i]) for i in range(first, first + report["added"]) if "，" in tok.decode([i])]
    assert punct and all(bytes_rule("han+punct")(t.encode()) for t in punct)
    han_only = Tokenizer.from_file(str(tiny["out"] / "tokenizer.json"))
    assert not any("，" in han_only.decode([i]) for i in range(first, first + tiny["report"]["added"]))


def test_the_byte_level_merge_never_imports_torch(tiny, tmp_path):
    code = ("import sys; from vocab.bbpe_merge import extend_bbpe; from vocab.bbpe_train import TrainSettings; "
            f"from vocab.bbpe_profiles import LLAMA3_PATTERN; extend_bbpe({str(tiny['rank'])!r}, "
            f"{tiny['lines'][:50]!r}, {str(tmp_path / 'o')!r}, TrainSettings(5), pattern=LLAMA3_PATTERN); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert got.returncode == 0 and got.stdout.split() == ["False", "False"], got.stderr
