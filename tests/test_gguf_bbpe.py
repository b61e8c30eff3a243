"""GGUF of models whose byte-level BPE base (Llama-3, Qwen, Mistral Tekken) was extended with Chinese.

Each real base (pinned wheels, as tests/test_bbpe_real.py) is extended with tokens learned on text
where "我想" is frequent, a tiny model of that architecture is resized to it with `vocab resize`,
and llama.cpp's converter (pinned, through zhllama.gguf.convert) writes its vocabulary: the GGUF
must name the base's pre-tokenizer (llama-bpe, qwen2, tekken) and hold every token and merge of
tokenizer.json in id order. Without the base's identification the converter refuses the Llama-3
one (the check text's "我想" became one new token). llama.cpp itself (node-llama-cpp's prebuilt
build, tests/helpers_llama_cpp.py) must give transformers' ids on held-out Chinese and English.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers_llama_cpp as llama_cpp
from conftest import SHARED_DATA
from zhllama.errors import UserError
from zhllama.gguf import convert, read_vocab

BASES = {  # fetched name, name of the file as its owners ship it, model class, GGUF pre-tokenizer
    "llama3": ("llama3_tokenizer.model", "tokenizer.model", "LlamaConfig", "llama-bpe"),
    "qwen": ("qwen.tiktoken", "qwen.tiktoken", "Qwen2Config", "qwen2"),
    "tekken": ("tekken_240911.json", "tekken.json", "MistralConfig", "tekken"),
}
N_NEW = 300


def _tiny_model(folder: Path, config_class: str, rows: int, **extra) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    config = getattr(transformers, config_class)(vocab_size=rows, hidden_size=16, intermediate_size=32,
                                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                                 tie_word_embeddings=False, **extra)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def _resize(name: str, fetched: dict, lines: list[str], root: Path) -> dict:
    from vocab.bbpe_merge import extend_bbpe
    from vocab.bbpe_train import TrainSettings

    fetched_name, shipped_name, config_class, pre = BASES[name]
    (root / "base_files").mkdir()
    base_file = root / "base_files" / shipped_name  # Llama-3's rank file under Meta's own name
    shutil.copyfile(fetched[fetched_name], base_file)
    train = lines[:300] + ["我想" + line[:40] for line in lines[:200]]
    report = extend_bbpe(base_file, train, root / "tok", TrainSettings(new_tokens=N_NEW), verify=False)
    base_model = _tiny_model(root / "base_model", config_class, report["base_vocab_size"])
    _vocab_resize(base_model, root / "tok", root / "resized")
    return {"name": name, "root": root, "folder": root / "resized", "report": report, "pre": pre,
            "held_out": lines[600:700]}


def _vocab_resize(model: Path, tokenizer: Path, out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "vocab", "resize", "--model", str(model), "--tokenizer",
                           str(tokenizer), "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def built(fetched, cmrc_lines, tmp_path_factory):
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = _resize(name, fetched, cmrc_lines, tmp_path_factory.mktemp(f"gguf_{name}"))
        return cache[name]
    return get


@pytest.fixture(scope="module", params=list(BASES))
def resized(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def llama3(built):
    return built("llama3")


def test_the_rank_file_is_kept_where_converters_do_not_take_it_for_sentencepiece(resized):
    written = resized["report"]["original_format_file"]
    assert written == {"llama3": "original/tokenizer.model", "qwen": "original/qwen.tiktoken",
                       "tekken": "tekken.json"}[resized["name"]]
    assert (resized["root"] / "tok" / written).is_file() and not (resized["folder"] / "tokenizer.model").exists()


def test_gguf_names_the_base_pre_tokenizer_and_holds_every_token_and_merge(resized, llama_cpp_tree, tmp_path):
    from transformers import AutoTokenizer

    folder = resized["folder"]
    vocab = read_vocab(convert(folder, tmp_path / "vocab.gguf", vocab_only=True))
    assert vocab["pre"] == resized["pre"]
    raw = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in raw["model"]["vocab"].items()} | {t["id"]: t["content"] for t in raw["added_tokens"]}
    assert vocab["tokens"][:len(by_id)] == [by_id[i] for i in range(len(by_id))]
    assert vocab["merges"] == [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(vocab["tokens"]) == resized["report"]["vocab_size"] == len(tok)


def test_the_bare_converter_refuses_the_extension(llama3, llama_cpp_tree, tmp_path):
    """What the base's identification is for: the converter alone does not know the new hash."""
    proc = subprocess.run([sys.executable, str(llama_cpp_tree / "convert_hf_to_gguf.py"), str(llama3["folder"]),
                           "--outfile", str(tmp_path / "bare.gguf"), "--vocab-only"],
                          env={**os.environ, "PYTHONPATH": str(llama_cpp_tree / "gguf-py")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "BPE pre-tokenizer was not recognized" in proc.stderr, proc.stderr[-2000:]


def test_a_rank_file_named_tokenizer_model_beside_tokenizer_json(llama3, tmp_path):
    """Folders extended before the rank file moved to original/: resize reads tokenizer.json, GGUF
    conversion says what to move instead of failing inside protobuf."""
    from vocab.resize_rows import read_tokenizer

    old = tmp_path / "old_layout"
    shutil.copytree(llama3["folder"], old)
    shutil.copyfile(llama3["root"] / "tok" / "original" / "tokenizer.model", old / "tokenizer.model")
    info = read_tokenizer(old)
    assert info.sp_proto is None and info.size == llama3["report"]["vocab_size"]
    with pytest.raises(UserError, match="tokenizer.model is a tiktoken rank file.*move it to"):
        convert(old, tmp_path / "x.gguf", vocab_only=True)
    assert not (tmp_path / "x.gguf").exists()


def test_llama_cpp_tokenizes_like_transformers(resized, llama_cpp_tree, tmp_path):
    from transformers import AutoTokenizer

    folder = resized["folder"]
    gguf = convert(folder, tmp_path / "vocab.gguf", vocab_only=True)
    english = [line for line in (SHARED_DATA / "pretrain" / "wiki_demo_en.txt").read_text("utf-8").splitlines()
               if line.strip()][:30]
    texts = [x[:300] for x in resized["held_out"]] + ["我想" + x[:30] for x in resized["held_out"][:20]] + \
        [x[:300] for x in english] + ["  a  b\tc", "\n\n中文 English 123 😀 ～"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    want = [tok.encode(text, add_special_tokens=False) for text in texts]
    base_size = resized["report"]["base_vocab_size"]
    assert sum(any(i >= base_size for i in ids) for ids in want) >= 30  # the new tokens are used
    assert llama_cpp.tokenize(gguf, texts, tmp_path) == want


def test_llama_cpp_runs_the_whole_model_like_transformers(resized, llama_cpp_tree, tmp_path):
    """The f32 GGUF of the resized model (new rows included) continues prompts greedily with
    transformers' tokens: architecture, weights and vocabulary all arrive in llama.cpp."""
    from transformers import AutoTokenizer

    folder = resized["folder"]
    gguf = convert(folder, tmp_path / "model.gguf", outtype="f32")
    tok = AutoTokenizer.from_pretrained(str(folder))
    base_size = resized["report"]["base_vocab_size"]
    encoded = [tok.encode(line[:30], add_special_tokens=False) for line in resized["held_out"]]
    prompts = [ids for ids in encoded if any(i >= base_size for i in ids)][:3]  # prompts that use new rows
    assert len(prompts) == 3
    llama_cpp.assert_continues_like_transformers(gguf, folder, prompts, 10, tmp_path)


def test_llama_cpp_runs_a_mixture_of_experts_model_like_transformers(built, llama_cpp_tree, tmp_path):
    """Qwen3-MoE (Qwen3-30B-A3B's architecture: routed experts in every layer) resized to the Chinese-extended
    Qwen vocabulary: `vocab resize` takes it, and its f32 GGUF (experts, routers, new rows) continues prompts
    greedily with transformers' tokens in llama.cpp."""
    from transformers import AutoTokenizer

    qwen = built("qwen")
    base = _tiny_model(tmp_path / "moe_base", "Qwen3MoeConfig", qwen["report"]["base_vocab_size"], head_dim=8,
                       num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1,
                       norm_topk_prob=True)  # as Qwen3-30B-A3B (llama.cpp assumes it for qwen3moe)
    folder = _vocab_resize(base, qwen["root"] / "tok", tmp_path / "moe_resized")
    gguf = convert(folder, tmp_path / "moe.gguf", outtype="f32")
    tok = AutoTokenizer.from_pretrained(str(folder))
    base_size = qwen["report"]["base_vocab_size"]
    encoded = [tok.encode(line[:30], add_special_tokens=False) for line in qwen["held_out"]]
    prompts = [ids for ids in encoded if any(i >= base_size for i in ids)][:3]
    assert len(prompts) == 3
    llama_cpp.assert_continues_like_transformers(gguf, folder, prompts, 10, tmp_path)
