"""vocab stats on hand-built SentencePiece models whose every number is checked by hand."""
from __future__ import annotations

import json

import pytest
from sentencepiece import sentencepiece_model_pb2 as pb

from vocab.__main__ import COMMANDS
from vocab.stats import load_tokenizer, text_stats, tokenizer_stats
from zhllama.cli import main_for
from zhllama.errors import UserError

BASE = ["▁", "a", "b", "中", "国", "人", "民", "爱", "北", "京"]


def write_model(path, pieces):
    """A BPE model with byte fallback: ids 0-2 specials, 3-258 bytes, then ``pieces`` (best first)."""
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.escape_whitespaces = True
    kind = pb.ModelProto.SentencePiece
    for piece, t in [("<unk>", kind.UNKNOWN), ("<s>", kind.CONTROL), ("</s>", kind.CONTROL)]:
        m.pieces.add(piece=piece, score=0.0, type=t)
    for b in range(256):
        m.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=kind.BYTE)
    for i, piece in enumerate(pieces):
        m.pieces.add(piece=piece, score=-float(i), type=kind.NORMAL)
    path.write_bytes(m.SerializeToString())
    return path


@pytest.fixture()
def models(tmp_path):
    base = write_model(tmp_path / "base.model", BASE)
    # "▁a" outranks "ab" (so "ab ab" is ▁a b ▁a b), "国人" outranks "中国"; "国国国" has no merge path.
    merged = write_model(tmp_path / "merged.model", BASE + ["▁a", "ab", "国人", "中国", "国国国"])
    return load_tokenizer(merged), load_tokenizer(base)


def test_numbers_on_known_strings(models):
    tok, base = models
    lines = ["中国 ab", "ab ab", "鬱", ""]
    # tok:  [▁ 中国 ▁a b]  [▁a b ▁a b]  [▁ <0xE9> <0xAC> <0xB1>]  -> 12 tokens, 11 characters
    # base: [▁ 中 国 ▁ a b] [▁ a b ▁ a b] [▁ + 3 bytes]           -> 16 tokens
    s = text_stats(tok, lines, base)
    assert (s["lines"], s["characters"], s["cjk_characters"], s["tokens"]) == (3, 11, 3, 12)
    assert s["tokens_per_char"] == round(12 / 11, 6)
    assert s["tokens_per_cjk_char"] == round(4 / 3, 6)  # 中国 covers two Han; 鬱 costs 3 byte tokens
    assert s["byte_fallback_share"] == 0.25
    assert s["vocab_used_share"] == round(7 / tok.size, 6)  # ▁ 中国 ▁a b and three bytes
    assert s["base_tokens_per_char"] == round(16 / 11, 6)
    assert (s["non_cjk_lines"], s["non_cjk_lines_changed"]) == (1, 1)
    assert s["non_cjk_changed_examples"] == ["ab ab"]


def test_identical_tokenizer_changes_nothing(models):
    _, base = models
    s = text_stats(base, ["ab ab", "a b"], base)
    assert s["non_cjk_lines_changed"] == 0 and s["non_cjk_lines"] == 2


def test_added_and_unreachable_pieces(models):
    tok, base = models
    t = tokenizer_stats(tok, base)
    assert t["added_pieces"] == 5
    assert t["unreachable_added"] == 1 and t["unreachable_examples"] == ["国国国"]


def test_jieba_crossing(models):
    tok, _ = models
    # jieba: 中国|人民 ; tokens ▁ 中 国人 民 : "国人" spans the boundary -> 1 of 4
    s = text_stats(tok, ["中国人民"], with_jieba=True)
    assert s["tokens"] == 4 and s["jieba_cross_share"] == 0.25
    # 我|爱|北京 with no multi-character piece: nothing crosses
    assert text_stats(tok, ["我爱北京"], with_jieba=True)["jieba_cross_share"] == 0.0


def test_cli_json_and_hf_folder(models, tmp_path, capsys):
    tok, base = models
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(tok.path.read_bytes())
    text = tmp_path / "t.txt"
    text.write_text("中国 ab\nab ab\n鬱\n", encoding="utf-8")
    with pytest.raises(SystemExit) as done:
        main_for("vocab", COMMANDS, "", ["stats", "--tokenizer", str(folder), "--base", str(base.path), "--json",
                                         str(text)])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"][str(text)]["tokens"] == 12
    assert report["tokenizer"]["unreachable_added"] == 1


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_text("not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer.model"):
        load_tokenizer(tmp_path / "empty")


def test_real_llama_tokenizer_byte_fallback(shared_data):
    llama = load_tokenizer(shared_data / "tokenizers" / "llama2c" / "tokenizer.model")
    # ▁ 中 国 | 3 bytes 鬱 | 3 bytes 龘 | ▁ab | 4 bytes 😀  -> 14 tokens over 8 characters
    s = text_stats(llama, ["中国鬱龘 ab😀"])
    assert s["tokens"] == 14 and s["characters"] == 8
    assert s["tokens_per_cjk_char"] == 2.0  # 中, 国, then 3 + 3 bytes for 4 Han characters
    assert s["byte_fallback_share"] == round(10 / 14, 6)
