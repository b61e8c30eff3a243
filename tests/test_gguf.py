"""llama.cpp's own converter (pinned, unmodified) reads our folders as we wrote them.

``convert_hf_to_gguf.py --vocab-only`` from the llama-cpp-python 0.3.36 sdist (llama.cpp 0c1e570,
bundled gguf-py) runs on the resized model, the pretrained model and the SFT export of the tiny
chain; GGUFReader then checks pieces, scores, token types, special ids, the add-BOS and
space-prefix flags and the chat template. llama.cpp itself (node-llama-cpp's prebuilt build,
tests/helpers_llama_cpp.py) then tokenizes like sentencepiece and continues prompts greedily with
the tokens transformers chooses.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import sentencepiece as spm

import helpers_llama_cpp as llama_cpp
from helpers_ollama import modelfile_values
from zhllama.gguf import convert, read_vocab
from zhllama.errors import UserError

# gguf token types (llama.cpp's llama_token_type) by sentencepiece piece type
_GGUF_TYPE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}  # NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE
_CONTROL, _USER_DEFINED = 3, 4


def expected_vocab(folder: Path) -> dict:
    """What a GGUF of ``folder`` must hold, from the files we wrote (sentencepiece + configs)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [_GGUF_TYPE[p.type] for p in proto.pieces]
    for i, token in config.get("added_tokens_decoder", {}).items():  # the converter's rule for them
        types[int(i)] = _CONTROL if token["special"] else _USER_DEFINED
        scores[int(i)] = -1000.0
    ids = {piece: i for i, piece in enumerate(tokens)}
    return {
        "model": "llama", "tokens": tokens, "scores": scores, "token_type": types,
        "bos_id": ids[config["bos_token"]], "eos_id": ids[config["eos_token"]],
        "unknown_id": ids[config["unk_token"]], "padding_id": ids.get(config.get("pad_token")),
        "add_bos": config["add_bos_token"], "add_eos": config["add_eos_token"],
        "add_space_prefix": proto.normalizer_spec.add_dummy_prefix,
        "chat_template": config.get("chat_template"),
    }


@pytest.mark.parametrize("stage", ["resized", "pt", "export"])
def test_gguf_vocab_matches_what_we_wrote(stage, chain, llama_cpp_tree, tmp_path):
    folder = chain[stage]
    got = read_vocab(convert(folder, tmp_path / "vocab.gguf", vocab_only=True))
    want = expected_vocab(folder)
    config = json.loads((folder / "config.json").read_text())
    rows = config["vocab_size"]
    assert len(got["tokens"]) == rows >= len(want["tokens"])
    assert got["tokens"][:len(want["tokens"])] == want["tokens"]
    assert got["token_type"][:len(want["tokens"])] == want["token_type"]
    assert got["scores"][:len(want["tokens"])] == pytest.approx(want["scores"])
    for key in ("model", "bos_id", "eos_id", "unknown_id", "padding_id", "add_bos", "add_eos", "add_space_prefix",
                "chat_template"):
        assert got[key] == want[key], key
    assert want["padding_id"] is not None and got["padding_id"] == config["pad_token_id"]
    assert (got["chat_template"] is not None) == (stage == "export")
    assert got["add_bos"] is True and got["add_space_prefix"] is True


def test_expected_vocab_catches_a_changed_folder(chain, llama_cpp_tree, tmp_path):
    """Control: a folder re-saved by transformers 5 (add_bos_token dropped, no
    special_tokens_map.json) converts to a GGUF that differs from what the tokenizer promises."""
    from transformers import AutoTokenizer

    folder = tmp_path / "resaved"
    shutil.copytree(chain["export"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()
    AutoTokenizer.from_pretrained(str(chain["export"])).save_pretrained(folder)
    got = read_vocab(convert(folder, tmp_path / "vocab.gguf", vocab_only=True))
    want = expected_vocab(chain["export"])
    assert {k: got[k] for k in want if k != "tokens"} != {k: want[k] for k in want if k != "tokens"}


def test_convert_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        convert(tmp_path, tmp_path / "x.gguf", vocab_only=True)


def test_llama_cpp_ids_equal_sentencepiece(chain, llama_cpp_tree, tmp_path):
    folder = chain["export"]
    gguf = convert(folder, tmp_path / "vocab.gguf", vocab_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    texts = ["    \"merge\": 1", " 一个", "  a  b\tc", "\tx\ny", "中国科学院的研究人员", "a</s>b <s>"]
    code = [line for line in (Path(__file__).resolve().parents[1] / "sft" / "serve.py").read_text().split("\n")
            if line.startswith("    ")][:40]
    got = llama_cpp.tokenize(gguf, texts + code, tmp_path)
    assert got == [sp.encode(text) for text in texts + code]


def test_llama_cpp_greedy_tokens_equal_transformers(chain, llama_cpp_tree, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from vocab.hf_export import load_hf_tokenizer

    folder = chain["export"]
    gguf = convert(folder, tmp_path / "model.gguf", outtype="f32")
    tok = load_hf_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    prompts = [tok(prompt).input_ids for prompt in ["中国科学院的研究人员", "    return 1", "问：什么是人工智能？"]]
    want = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, repetition_penalty=1.0,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        want.append([i for i in out[0, len(ids):].tolist() if i != tok.eos_token_id])
    assert sum(map(len, want)) >= 12  # the model says something before its EOS
    assert llama_cpp.greedy(gguf, prompts, 12, tmp_path) == want


def test_sft_export_gguf_in_one_step(chain, llama_cpp_tree, tmp_path):
    """`python -m sft export --gguf f32`: the whole model converted, vocab and template as written."""
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "export"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-m", "sft", "export", "--base", str(chain["pt"]), "--adapter",
                           str(chain["sft"].parent), "--out", str(out), "--gguf", "f32"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    got = read_vocab(out / "model-f32.gguf")
    want = expected_vocab(out)
    assert got["tokens"] == want["tokens"] and got["chat_template"] == want["chat_template"]
    assert not list(out.glob(".*.partial"))
    # and Ollama's Modelfile beside it (its template: tests/test_ollama_modelfile.py)
    modelfile = modelfile_values((out / "Modelfile").read_text(encoding="utf-8"))
    assert modelfile["FROM"] == "./model-f32.gguf" and "{{ .Content }}" in modelfile["TEMPLATE"]
    assert f"ollama create NAME -f {out / 'Modelfile'}" in proc.stdout
    # llama.cpp's converter reads the export's model card (README.md front matter) into the GGUF
    sys.path.insert(0, str(llama_cpp_tree / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(out / "model-f32.gguf"))
    tags, languages = (reader.get_field(k) for k in ("general.tags", "general.languages"))
    assert tags is not None and {"zhllama", "sft"} <= set(tags.contents()), "no card metadata in the GGUF"
    assert languages is not None and "zh" in languages.contents()


def test_a_longer_context_reaches_the_gguf(chain, llama_cpp_tree, tmp_path):
    """A model whose context a run extended (model.rope_scaling: its config as engine/context.py makes it
    and transformers 5 saves it, `rope_parameters`) converts with llama.cpp's scaling type, factor and
    context length. (The tiny model's greedy tokens do not depend on positions, so no continuation here.)"""
    import sys

    from zhllama.rope import scaled_config

    folder = tmp_path / "long"
    shutil.copytree(chain["pt"], folder)
    scaled_config(str(chain["pt"]), {"rope_type": "linear", "factor": 4.0}, None).save_pretrained(folder)
    gguf = convert(folder, tmp_path / "long.gguf", vocab_only=True)
    sys.path.insert(0, str(llama_cpp_tree / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    meta = {key: reader.get_field(key).contents() for key in
            ("llama.rope.scaling.type", "llama.rope.scaling.factor", "llama.context_length")}
    base_context = json.loads((chain["pt"] / "config.json").read_text())["max_position_embeddings"]
    assert meta == {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0,
                    "llama.context_length": 4 * base_context}
    # a larger base frequency alone (model.rope_scaling={rope_theta: ...} with max_position_embeddings)
    based = tmp_path / "based"
    shutil.copytree(chain["pt"], based)
    scaled_config(str(chain["pt"]), {"rope_theta": 1e6}, 4 * base_context).save_pretrained(based)
    reader = GGUFReader(str(convert(based, tmp_path / "based.gguf", vocab_only=True)))
    assert reader.get_field("llama.rope.freq_base").contents() == 1e6
    assert reader.get_field("llama.context_length").contents() == 4 * base_context
    assert reader.get_field("llama.rope.scaling.type") is None
