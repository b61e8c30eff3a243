"""`python -m vocab merge` without ../shared: tiny SentencePiece models trained in memory.

A LLaMA-like BPE base (byte fallback, identity normaliser) trained on generated English, and a
Unigram Chinese model (nmt_nfkc, like chinese_sp.model) trained on generated Chinese, so a fresh
clone still tests the merge, its invariants, the CLI and its bad-input handling.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vocab.hf_export import load_backend_tokenizer
from vocab.merge import base_model_bytes, merge_tokenizers
from vocab.merge_policy import han_piece
from vocab.spm_proto import CONTROL, load_model_proto
from vocab.verify import SAMPLE_CHINESE, SAMPLE_ENGLISH, Backends, check_roundtrip, check_same_ids, has_han, run_checks
from zhllama.errors import UserError
from zhllama.files import sha256_file

_ENGLISH_WORDS = ("the of and to in is was for on that with as by at from his her which were this "
                  "model language data train token year city river house school music 2016 1999 42").split()
_HAN_WORDS = ["中国", "北京", "大学", "学生", "研究", "人工智能", "语言", "模型", "我们", "发展", "经济", "科学",
              "技术", "历史", "文化", "城市", "河流", "音乐", "学校", "数据", "训练", "词表", "扩充", "中文",
              "年", "的", "了", "是", "在", "和"]


def _english_lines(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(_ENGLISH_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
            for _ in range(n)]


def _chinese_lines(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        words = [rng.choice(_HAN_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.choice([2016, 1999, 2023])) + "年")
        out.append("".join(words) + rng.choice(["。", "，", "！", "——"]))
    return out


def _train(lines: list[str], **options) -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, minloglevel=2,
                                   num_threads=1, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("tiny_sp")
    base = folder / "base.model"
    base.write_bytes(_train(_english_lines(rng, 400), model_type="bpe", vocab_size=420, byte_fallback=True,
                            normalization_rule_name="identity", remove_extra_whitespaces=False,
                            split_digits=True, character_coverage=1.0))
    add = folder / "zh.model"
    add.write_bytes(_train(_chinese_lines(rng, 400), model_type="unigram", vocab_size=150,
                           character_coverage=1.0))
    return base, add


@pytest.fixture(scope="module")
def tiny_merged(tiny_models, tmp_path_factory) -> tuple[Path, dict]:
    base, add = tiny_models
    out = tmp_path_factory.mktemp("tiny_merge") / "out"
    report = merge_tokenizers(base, add, out, pad_to_multiple_of=64, add_pad_token=True)
    return out, report


def test_tiny_merge_writes_folder_and_passes_every_check(tiny_models, tiny_merged):
    base, add = tiny_models
    out, report = tiny_merged
    assert sorted(p.name for p in out.iterdir()) == ["merge_report.json", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    assert json.loads((out / "merge_report.json").read_text()) == report
    assert all(check["ok"] for check in report["checks"].values()), report["checks"]
    assert report["added"] > 20 and report["skipped_by_policy"] > 0  # e.g. "2016" and "。" pieces
    # Unigram pieces such as "人工智能" have no BPE path until intermediates are added.
    assert report["unreachable"]["found"] > 0
    assert report["unreachable"]["made_reachable"] == report["unreachable"]["found"]
    assert report["added_breakdown"]["intermediate_pieces"] > 0
    merged, base_proto = load_model_proto(out / "tokenizer.model"), load_model_proto(base)
    n = report["base_vocab_size"]
    assert n == len(base_proto.pieces)
    assert merged.pieces[:n] == base_proto.pieces[:n]  # protobuf equality: string, score, type
    appended = merged.pieces[n:report["real_vocab_size"]]
    assert all(han_piece(p.piece) for p in appended)
    scores = [p.score for p in appended]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert max(scores) < min(p.score for p in base_proto.pieces)
    # Reserved/pad pieces are CONTROL and come after every real piece.
    assert report["vocab_size"] % 64 == 0 == len(merged.pieces) % 64
    tail = merged.pieces[report["real_vocab_size"]:]
    assert tail[0].piece == "<pad>" and report["pad_token"]["id"] == report["real_vocab_size"]
    assert all(p.type == CONTROL for p in tail) and tail[-1].piece.startswith("<reserved_")
    # Truncating the pieces gives back the base file byte for byte.
    assert hashlib.sha256(base_model_bytes(out)).hexdigest() == report["base"]["sha256"] == sha256_file(base)


def test_tiny_merge_invariants_on_generated_text(tiny_models, tiny_merged):
    base, _ = tiny_models
    out, report = tiny_merged
    rng = random.Random(1)
    english, chinese = _english_lines(rng, 200), _chinese_lines(rng, 200)
    merged = load_model_proto(out / "tokenizer.model")
    checks = run_checks(load_model_proto(base), merged, out / "tokenizer.json",
                        range(report["base_vocab_size"], report["real_vocab_size"]),
                        english + SAMPLE_ENGLISH, english + chinese + SAMPLE_CHINESE)
    assert all(c["ok"] for c in checks.values()), checks
    # The merge does its job: Chinese gets shorter.
    sp_base = spm.SentencePieceProcessor(model_file=str(base))
    sp_merged = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sum(map(len, sp_merged.encode(chinese))) < 0.6 * sum(map(len, sp_base.encode(chinese)))


_BACKENDS: dict[Path, Backends] = {}
_ALPHABET = st.sampled_from(list("中文测试龍鬱靈體，。！？、；：“”‘’（）《》【】…—·０１２３４５６７８９ＡＢＣ"
                                 "😀🎉👍🏽🇨🇳abcXYZ019 .,!?\t\n\u3000é\u0301ñ한글ひらカタ"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(_ALPHABET, max_size=40),
                      st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"),
                              max_size=30)))
def test_roundtrip_and_same_ids_on_random_unicode(tiny_merged, text):
    out, _ = tiny_merged
    if out not in _BACKENDS:
        _BACKENDS[out] = Backends(load_model_proto(out / "tokenizer.model"), load_backend_tokenizer(out))
    backends = _BACKENDS[out]
    if not text:
        return
    roundtrip, same = check_roundtrip(backends, [text]), check_same_ids(backends, [text])
    assert roundtrip["ok"], roundtrip
    assert same["ok"], same


def test_chinese_llama_alpaca_policy_keeps_everything_with_tied_scores(tiny_models, tmp_path):
    base, add = tiny_models
    with pytest.raises(UserError, match="2_non_chinese_unchanged") as info:
        merge_tokenizers(base, add, tmp_path / "cla", policy="chinese-llama-alpaca")
    assert "5_added_pieces_reachable" in str(info.value) and list(tmp_path.iterdir()) == []
    report = merge_tokenizers(base, add, tmp_path / "cla", policy="chinese-llama-alpaca", verify=False)
    merged = load_model_proto(tmp_path / "cla" / "tokenizer.model")
    add_pieces = {p.piece for p in load_model_proto(add).pieces}
    base_pieces = {p.piece for p in load_model_proto(base).pieces}
    assert report["added"] == len(add_pieces - base_pieces) and report["skipped_by_policy"] == 0
    assert {p.score for p in merged.pieces[report["base_vocab_size"]:]} == {0.0}
    assert any(not has_han(p.piece) for p in merged.pieces[report["base_vocab_size"]:])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vocab", "merge", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


def test_bad_inputs_give_one_clear_error_and_no_folder(tiny_models, tmp_path):
    base, add = tiny_models
    out = tmp_path / "out"
    tiktoken = tmp_path / "tokenizer.model"
    tiktoken.write_text("IQ== 0\nIg== 1\nIw== 2\nJA== 3\n")
    json_only = tmp_path / "hf_json_only"
    json_only.mkdir()
    (json_only / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00\xff not a protobuf \x12\x99" * 10)
    cases = {
        "no such file": ["--base", str(tmp_path / "missing.model"), "--add", str(add)],
        # byte-level BPE bases (tiktoken, tokenizer.json) learn from text: --add is refused (tests/test_bbpe*.py)
        "learned from text": ["--base", str(tiktoken), "--add", str(add)],
        "is a byte-level BPE tokenizer": ["--base", str(json_only), "--add", str(add)],
        "give --add": ["--base", str(base)],
        "not a SentencePiece model": ["--base", str(base), "--add", str(garbage)],
        "model_type is UNIGRAM": ["--base", str(add), "--add", str(add)],
    }
    for expected, args in cases.items():
        result = _cli(*args, "--out", str(out))
        assert result.returncode != 0, (expected, result)
        assert expected in result.stderr and "Traceback" not in result.stderr, (expected, result.stderr)
        assert list(tmp_path.glob("out*")) == [] and list(tmp_path.glob(".out*")) == [], expected


def test_existing_output_needs_overwrite(tiny_models, tmp_path):
    base, add = tiny_models
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _cli("--base", str(base), "--add", str(add), "--out", str(out))
    assert result.returncode == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = _cli("--base", str(base), "--add", str(add), "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (out / "tokenizer.model").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folders left behind


def test_merge_never_imports_torch(tiny_models, tmp_path):
    base, add = tiny_models
    code = (f"import sys\nimport vocab.merge\nfrom vocab.merge_cli import run\n"
            f"vocab.merge.merge_tokenizers({str(base)!r}, {str(add)!r}, {str(tmp_path / 'o')!r})\n"
            f"assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "merge_report.json").is_file()


def test_every_input_problem_is_reported_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = _cli("--base", str(tmp_path / "nope.model"), "--add", str(tmp_path / "nope2.model"), "--out", str(out),
                  "--pad-to-multiple-of", "0")
    assert result.returncode == 2 and "4 problems" in result.stderr, result.stderr
    assert "--base" in result.stderr and "--add" in result.stderr and "already exists" in result.stderr
    assert "--pad-to-multiple-of 0" in result.stderr


def test_merging_a_base_into_itself_warns_that_nothing_was_added(tiny_models, tmp_path):
    base, _ = tiny_models
    result = _cli("--base", str(base), "--add", str(base), "--out", str(tmp_path / "out"), "--no-verify")
    assert result.returncode == 0, result.stderr
    assert "warning: no piece of" in result.stderr and "is the base vocabulary" in result.stderr
