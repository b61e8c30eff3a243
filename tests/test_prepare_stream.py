"""The fast paths of `python -m pretrain prepare` give exactly what the plain ways give."""
from __future__ import annotations

import json
import os
import shutil

from helpers_prepare import EN, ZH, corpus_lines, make_tokenizer

from pretrain.prepare import _plain_llama_info, load_tokenizer_info
from corpora.cleaning import cjk_count_many
from pretrain.prepare_stream import EncoderPool


def test_cjk_count_many_equals_the_regex_count():
    from corpora.cleaning import cjk_count

    texts = ["北京是首都，人口二千万。", "かな カナ 한국어 ＡＢＣ", "㐀䶿一鿿豈﫿 edges",
             "\U00020000\U0003134f\U00031350 ext", "\u33ff\u4dc0\u4dff\ua000\uf8ff\ufb00 just outside",
             "", "lone \ud800 surrogate 中"]
    assert cjk_count_many(texts) == sum(cjk_count(t) for t in texts) == 19
    assert cjk_count_many([]) == 0


def test_tiny_byte_level_tokenizer_goes_through_auto_tokenizer(tmp_path):
    folder = make_tokenizer(tmp_path / "tok")
    assert _plain_llama_info(folder) is None  # PreTrainedTokenizerFast, byte-level: AutoTokenizer decides
    info = load_tokenizer_info(folder)
    assert info.eos_id is not None and info.dtype == "uint16"


def test_saved_llama_tokenizer_is_read_without_transformers_and_gives_its_ids(shared_data, tmp_path):
    """The transformers-free path is taken for a saved Llama tokenizer and equals AutoTokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlamaTokenizer

    model_dir = tmp_path / "sp"
    model_dir.mkdir()
    shutil.copy(shared_data / "tokenizers/llama2c/tokenizer.model", model_dir / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(model_dir), add_bos_token=True).save_pretrained(str(tmp_path / "tok"))
    folder = tmp_path / "tok"
    info = _plain_llama_info(folder)
    assert info is not None
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert (info.start_id, info.eos_id, info.vocab_size) == (auto.bos_token_id, auto.eos_token_id, len(auto))
    assert info.pad_id == (auto.pad_token_id if auto.pad_token_id is not None else auto.eos_token_id)
    ours = Tokenizer.from_str(info.backend_json)
    lines = (shared_data / "pretrain/cmrc2018_dev_contexts.txt").read_text(encoding="utf-8").splitlines()[:200]
    texts = lines + [" leading space", "double  spaces", "\u2581marker", "a <s> inside </s> text", "<unk>", "", " "]
    got = [e.ids for e in ours.encode_batch_fast(texts, add_special_tokens=False)]
    assert got == auto(texts, add_special_tokens=False)["input_ids"]
    # Anything that is not exactly that shape goes through AutoTokenizer.
    (folder / "special_tokens_map.json").write_text('{"bos_token": "<s>"}')
    assert _plain_llama_info(folder) is None
    (folder / "special_tokens_map.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": True}))
    assert _plain_llama_info(folder) is None  # LlamaTokenizer would prepend "always": not tokenizer.json's
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<newpad>"}))
    assert _plain_llama_info(folder) is None  # transformers would add a token
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    assert _plain_llama_info(folder) is None


def test_forked_spawned_and_in_process_encoders_agree(tmp_path, monkeypatch):
    """Linux forks workers that inherit the tokenizer; elsewhere they are spawned: same output."""
    import numpy as np

    from pretrain import prepare_stream

    info = load_tokenizer_info(make_tokenizer(tmp_path / "tok"))
    batches = [("train", 0, corpus_lines(n, seed=n), 0) for n in (3, 7, 1, 5)]

    def run(num_proc):
        pool = EncoderPool(info.backend_json, info.start_id, info.eos_id, info.dtype, num_proc)
        try:
            return [(tokens.tolist(), lengths.tolist()) for *_, tokens, lengths in pool.encoded(iter(batches))]
        finally:
            pool.close()

    single = run(1)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("RAYON_NUM_THREADS", "7")
    assert run(2) == single
    assert "TOKENIZERS_PARALLELISM" not in os.environ and os.environ["RAYON_NUM_THREADS"] == "7"  # caller's kept
    monkeypatch.setattr(prepare_stream.sys, "platform", "darwin")
    assert run(2) == single
    assert all(np.sum(lengths) == len(tokens) for tokens, lengths in single)


def test_tiny_tokenizer_round_trips_chinese(tmp_path):
    """The helper tokenizer the prepare tests rely on: fast, with BOS/EOS, lossless on Chinese."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(make_tokenizer(tmp_path / "tok")))
    assert tok.is_fast and tok.bos_token_id is not None and tok.eos_token_id is not None
    for text in ZH + EN:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
