"""python -m vocab resize: informed rows, bit-identical old rows, tying, dtype, loading back.

Everything is built in the test: a tiny SentencePiece BPE base trained in memory, a merged model
made by appending known pieces to it (so each new piece's base spelling is known), and a random
2-layer LlamaForCausalLM saved with safetensors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from sentencepiece import sentencepiece_model_pb2 as pb
from helpers_resize import (  # noqa: F401  (toks is a fixture)
    EMB, HEAD, _assert_nothing_written, _byte_ids, _make_model, _weights, _write_tokenizer_folder, toks)
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab import resize_cli
from vocab.resize import ResizeConfig, embedding_rows_match, resize_model
from vocab.resize_rows import RULE_PADDING, RULE_SPECIAL, RULE_SUBTOKEN, mean_of_rows
from zhllama.errors import UserError


def test_subtoken_mean_untied_rows_exact_and_old_rows_bitwise(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, tokenizer=toks["base"])
    report = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    old, new = _weights(model_dir), _weights(tmp_path / "out")
    n, sp = toks["n"], toks["sp"]
    assert set(new) == set(old)
    for name in old:
        if name in (EMB, HEAD):
            assert torch.equal(new[name][:n], old[name]), name
            assert new[name].shape == (toks["size"], 32)
        else:
            assert torch.equal(new[name], old[name]), name
    # Known base spellings: Chinese characters fall back to UTF-8 bytes; '▁中国' is '▁' + bytes.
    space = sp.piece_to_id("\u2581")
    assert space != sp.unk_id()
    expected = {n: _byte_ids(sp, "中"), n + 1: _byte_ids(sp, "国"), n + 2: _byte_ids(sp, "中国"),
                n + 3: [space] + _byte_ids(sp, "中国"),
                # A word-initial piece is spelled as the base spells the word at the text start.
                n + 6: sp.encode("thequick")}
    assert len(expected[n + 6]) > 1 and sp.id_to_piece(expected[n + 6][0]).startswith("\u2581")
    for name in (EMB, HEAD):  # input and output rows each from their own matrix
        for row, ids in expected.items():
            want = old[name][ids].to(torch.float32).mean(dim=0)
            assert torch.equal(new[name][row], want), (name, row)
        for row in (n + 4, n + 5):  # <pad> (user-defined), <reserved_0> (control)
            assert torch.equal(new[name][row], mean_of_rows(old[name])), (name, row)
    assert not torch.equal(new[EMB][n + 2], new[HEAD][n + 2])
    assert report["rows_per_rule"] == {RULE_SUBTOKEN: 5, RULE_SPECIAL: 2}
    assert report["old_vocab_size"] == n and report["new_vocab_size"] == toks["size"]
    assert not report["tied_embeddings"] and report["dtype"] == "F32"
    assert report["inputs"]["model_weights_sha256"].keys() == {"model.safetensors"}
    assert "tokenizer.model" in report["inputs"]["tokenizer_files_sha256"]


def test_tied_model_stays_tied_and_loads_with_agreeing_sizes(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=True)
    resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    assert HEAD not in _weights(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.vocab_size == len(tokenizer) == toks["size"]
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    ids = tokenizer("hello 中国", return_tensors="pt").input_ids
    assert int(ids.max()) < model.config.vocab_size
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == len(tokenizer)
    old = _weights(model_dir)[EMB]
    assert torch.equal(model.get_input_embeddings().weight[: toks["n"]], old)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stored_dtype_preserved(tmp_path, toks, dtype):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, dtype=dtype)
    resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    old, new = _weights(model_dir), _weights(tmp_path / "out")
    assert {t.dtype for t in new.values()} == {dtype}
    n = toks["n"]
    ids = _byte_ids(toks["sp"], "中国")
    for name in (EMB, HEAD):
        assert torch.equal(new[name][:n], old[name])
        assert torch.equal(new[name][n + 2], old[name][ids].float().mean(dim=0).to(dtype))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert loaded.get_input_embeddings().weight.dtype == dtype


def test_mean_random_and_padding(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False)
    n, size = toks["n"], toks["size"]
    mean = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "mean", init="mean",
                                     pad_to_multiple_of=64))
    rnd = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "rnd", init="random", seed=3))
    old = _weights(model_dir)
    padded = -(-size // 64) * 64
    assert mean["new_vocab_size"] == padded and padded > size
    assert mean["rows_per_rule"][RULE_PADDING] == padded - size
    new_mean = _weights(tmp_path / "mean")
    for name in (EMB, HEAD):
        assert new_mean[name].shape[0] == padded
        assert all(torch.equal(row, mean_of_rows(old[name])) for row in new_mean[name][n:])
    written = json.loads((tmp_path / "mean" / "config.json").read_text())
    assert written["vocab_size"] == padded
    # the merged folder names no pad token: the base's (None) is kept; a named one reaches the config
    assert written["pad_token_id"] is None and mean["config_special_ids"]["eos_token_id"] == 2
    named = tmp_path / "named"
    named.mkdir()
    for path in toks["merged"].iterdir():
        named.joinpath(path.name).write_bytes(path.read_bytes())
    config = json.loads((named / "tokenizer_config.json").read_text())
    (named / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<pad>"}))
    resize_model(ResizeConfig(model_dir, named, tmp_path / "padded", init="mean"))
    assert json.loads((tmp_path / "padded" / "config.json").read_text())["pad_token_id"] == n + 4
    ok, message = embedding_rows_match(tmp_path / "mean", toks["merged"])
    assert ok and "padding" in message
    new_rnd = _weights(tmp_path / "rnd")
    random_rows = new_rnd[EMB][n:n + 4]  # the 4 real pieces; <pad>/<reserved_0> get the mean
    assert 0.01 < float(random_rows.std()) < 0.03  # LlamaConfig initializer_range 0.02
    assert not torch.equal(new_rnd[EMB][n], new_rnd[HEAD][n])
    assert torch.equal(new_rnd[EMB][n + 5], mean_of_rows(old[EMB]))
    assert rnd["rows_per_rule"] == {"random": 5, RULE_SPECIAL: 2}
    again = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "rnd2", init="random", seed=3))
    assert again["rows_per_rule"] == rnd["rows_per_rule"]
    assert torch.equal(_weights(tmp_path / "rnd2")[EMB], new_rnd[EMB])


def test_sharded_output_loads(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False)
    report = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out", max_shard_size="20KB"))
    assert len(report["weight_files"]) > 1
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(report["weight_files"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, _weights(tmp_path / "out")[HEAD])
    # The sharded folder is itself valid input (index-driven reading).
    resize_model(ResizeConfig(tmp_path / "out", toks["merged"], tmp_path / "again"))
    assert torch.equal(_weights(tmp_path / "again")[EMB], _weights(tmp_path / "out")[EMB])


def test_embedding_rows_match_refuses_unresized_model(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False)
    ok, message = embedding_rows_match(model_dir, toks["merged"])
    assert not ok
    assert "python -m vocab resize" in message and str(toks["n"]) in message
    assert embedding_rows_match(model_dir, toks["base"])[0]


# ---- bad input: one clear UserError each, and nothing left behind -------------------------------

def _assert_refused(tmp_path: Path, model_dir: Path, merged: Path, match: str):
    with pytest.raises(UserError, match=match) as info:
        resize_model(ResizeConfig(model_dir, merged, tmp_path / "out"))
    _assert_nothing_written(tmp_path, tmp_path / "out")
    return info


def _proto(folder: Path) -> pb.ModelProto:
    proto = pb.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    return proto


def test_refuses_tokenizer_smaller_than_model(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["size"] + 4, tied=False)
    _assert_refused(tmp_path, model_dir, toks["merged"],
                    f"has {toks['size']} tokens, fewer than the model's {toks['size'] + 4}")


def test_refuses_merge_that_changed_base_ids(tmp_path, toks):
    own = _proto(toks["base"])
    own.pieces[100].piece, own.pieces[101].piece = own.pieces[101].piece, own.pieces[100].piece
    _write_tokenizer_folder(own, tmp_path / "own", None)
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, tokenizer=tmp_path / "own")
    info = _assert_refused(tmp_path, model_dir, toks["merged"], "id 100 is .* the merge changed base ids")
    assert "id 101" in str(info.value)


def test_refuses_model_whose_rows_differ_from_merge_base(tmp_path, toks):
    # No tokenizer in the model folder: merge_report's base_vocab_size is the only evidence.
    model_dir = _make_model(tmp_path / "m", toks["n"] + 2, tied=False)
    _assert_refused(tmp_path, model_dir, toks["merged"],
                    f"{toks['n'] + 2} embedding rows but its tokenizer has {toks['n']} pieces")


def test_refuses_folder_without_weights_and_pickle_weights(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False)
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(UserError, match="holds no model weights"):
        resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    (model_dir / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UserError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors"):
        resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    ok, message = embedding_rows_match(model_dir, toks["merged"])
    assert not ok and "pickle" in message
    _assert_nothing_written(tmp_path, tmp_path / "out")


def test_refuses_existing_out_and_other_bad_settings(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="3 problems") as info:
        resize_model(ResizeConfig(model_dir, tmp_path / "nope", tmp_path / "out", pad_to_multiple_of=0))
    for needle in ("--out", "already exists", "--tokenizer", "--pad-to-multiple-of"):
        assert needle in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []
    hf_only = tmp_path / "hf_only"
    hf_only.mkdir()
    (hf_only / "tokenizer.json").write_bytes((toks["merged"] / "tokenizer.json").read_bytes())
    with pytest.raises(UserError, match="subtoken-mean needs the merged tokenizer.model"):
        resize_model(ResizeConfig(model_dir, hf_only, tmp_path / "out2"))
    _assert_nothing_written(tmp_path, tmp_path / "out2")


def test_cli_reports_user_error_without_traceback(tmp_path, toks):
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "vocab", "resize", "--model", str(tmp_path / "missing"),
         "--tokenizer", str(toks["merged"]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot resize: 2 problems") and "Traceback" not in proc.stderr


def test_cli_writes_folder(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=True)
    parser = argparse.ArgumentParser()
    resize_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(model_dir), "--tokenizer", str(toks["merged"]),
                              "--out", str(tmp_path / "out"), "--pad-to-multiple-of", "8"])
    assert resize_cli.run(args) == 0
    report = json.loads((tmp_path / "out" / "resize_report.json").read_text())
    assert report["new_vocab_size"] % 8 == 0 and report["tied_embeddings"]
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "merge_report.json",
                 "config.json", "generation_config.json", "model.safetensors"):
        assert (tmp_path / "out" / name).is_file(), name


def test_real_chinese_llama_merge_resizes_and_loads(tmp_path, shared_data):
    """The published recipe end to end: LLaMA's 32000 pieces + chinese_sp.model via vocab.merge."""
    from vocab.merge import merge_tokenizers

    base_sp = shared_data / "tokenizers" / "llama2c" / "tokenizer.model"
    merged = tmp_path / "merged"
    merge_tokenizers(base_sp, shared_data / "tokenizers" / "chinese_llama_alpaca" / "chinese_sp.model",
                     merged, add_pad_token=True, verify=False)
    model_dir = _make_model(tmp_path / "m", 32000, tied=False)
    (model_dir / "tokenizer.model").write_bytes(base_sp.read_bytes())
    report = resize_model(ResizeConfig(model_dir, merged, tmp_path / "out", pad_to_multiple_of=64))
    assert report["new_vocab_size"] % 64 == 0 and report["rows_per_rule"][RULE_SUBTOKEN] > 17000
    sp = spm.SentencePieceProcessor(model_file=str(base_sp))
    merged_sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    word = merged_sp.piece_to_id("\u2581中国")
    assert word >= 32000
    old, new = _weights(model_dir), _weights(tmp_path / "out")
    for name in (EMB, HEAD):  # '▁中国' starts like the text '中国': as the base read it there
        assert torch.equal(new[name][word], old[name][sp.encode("中国")].mean(dim=0))
    from vocab.hf_export import load_hf_tokenizer  # the merge phase's loader (checks the class)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = load_hf_tokenizer(tmp_path / "out")
    ids = tokenizer("今天天气很好，我们去公园散步。", return_tensors="pt").input_ids
    assert int(ids.max()) >= 32000 and len(tokenizer) <= model.config.vocab_size
    with torch.no_grad():
        assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert embedding_rows_match(tmp_path / "out", merged)[0]
    # --add-pad-token's <pad> reaches config.json (generate() and serving runtimes read it there)
    pad = merged_sp.piece_to_id("<pad>")
    assert pad == tokenizer.pad_token_id == 49472 and model.config.pad_token_id == pad
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)
    assert report["config_special_ids"]["pad_token_id"] == pad


def test_refuses_non_finite_embeddings_instead_of_spreading_them(tmp_path, toks):
    """Was: 261 NaN rows written (new rows are means of old ones)."""
    from safetensors.torch import save_file

    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, tokenizer=toks["base"])
    weights = _weights(model_dir)
    weights[EMB][7, 3] = float("nan")
    weights[EMB][9, 0] = float("inf")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model.embed_tokens.weight holds 2 non-finite values .* in 2 rows \(e.g. \[7, 9\]\)"):
        resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_refuses_a_truncated_weight_file_in_one_line(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, tokenizer=toks["base"])
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match=r"model.safetensors: truncated safetensors file \([\d,]+ bytes, its header describes"):
        resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_file_given_for_the_model_folder_says_so(tmp_path, toks):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match=r"--model .*weights.bin: is a file, expected a model folder"):
        resize_model(ResizeConfig(tmp_path / "weights.bin", toks["merged"], tmp_path / "out"))
