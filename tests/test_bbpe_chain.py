"""The whole chain on a real byte-level BPE base, as a Llama-3.2 user runs it: `vocab merge` on Meta's
tokenizer.model → `vocab resize` → `pretrain prepare` / `pretrain train` mode=lora (the flagship
recipe) → `sft export` of that run into a base model → `sft train` with the Llama-3 chat template →
`sft export --gguf` (single process, tiny model, 2 steps each). The model ties its input and output
embeddings, as Llama-3.2 1B/3B and Qwen2.5 up to 3B do.

Every stage keeps the tokenizer (same fingerprint) and the vocab's provenance (merge_report.json);
the export's generation_config.json stops at <|eot_id|> as well as EOS; the GGUF names Llama-3's
pre-tokenizer and holds every token, and llama.cpp continues prompts as transformers does. The
embeddings stay tied and trained through both LoRA merges.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_chain import SFT_RECORDS, _manifest, _run
from helpers_ollama import modelfile_values

from zhllama.tokenizer_files import tokenizer_fingerprint


@pytest.fixture(scope="module")
def chain(fetched, cmrc_lines, tmp_path_factory) -> dict[str, Path]:
    import transformers

    from pretrain.prepare import PrepareConfig, prepare
    from vocab.bbpe_merge import extend_bbpe
    from vocab.bbpe_train import TrainSettings

    root = tmp_path_factory.mktemp("bbpe_chain")
    (root / "meta").mkdir()
    shutil.copyfile(fetched["llama3_tokenizer.model"], root / "meta" / "tokenizer.model")  # Meta's name
    extend_bbpe(root / "meta" / "tokenizer.model", cmrc_lines[:300], root / "merged", TrainSettings(new_tokens=200), verify=False)
    config = transformers.LlamaConfig(vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                                      bos_token_id=128000, eos_token_id=128001)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "base")
    _run("vocab", "resize", "--model", str(root / "base"), "--tokenizer", str(root / "merged"), "--out",
         str(root / "resized"))
    prepare(PrepareConfig(manifest=str(_manifest(root)), tokenizer=str(root / "resized"), block_size=32,
                          out=str(root / "shards"), progress=False))
    quiet = ["checkpoint.every_steps=0", "logging.wandb=disabled", "logging.tensorboard=false", "logging.plot=false"]
    _run("pretrain", "train", "--config", "pretrain/configs/tiny_cpu.yaml", f"model.path={root / 'resized'}",
         f"data.dir={root / 'shards'}", f"output_dir={root / 'pt'}", "schedule.max_steps=2", "eval.every_steps=0",
         "eval.at_start=false", "mode=lora", *quiet)
    _run("sft", "export", "--base", str(root / "resized"), "--adapter", str(root / "pt"), "--out", str(root / "pt_merged"))
    data = root / "sft.json"
    data.write_text(json.dumps(SFT_RECORDS, ensure_ascii=False), encoding="utf-8")
    _run("sft", "train", "--config", "sft/configs/tiny_cpu.yaml", f"model.path={root / 'pt_merged'}",
         f"output_dir={root / 'sft'}", f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}'}}]",
         "data.eval_fraction=0.0", "schedule.max_steps=2", "data.template=tokenizer")
    _run("sft", "export", "--base", str(root / "pt_merged"), "--adapter", str(root / "sft"), "--out",
         str(root / "export"), "--gguf", "f32")
    return {"merged": root / "merged", "resized": root / "resized", "pt": root / "pt" / "final",
            "pt_merged": root / "pt_merged", "sft": root / "sft" / "final", "export": root / "export"}


def test_every_stage_keeps_the_tokenizer_and_its_provenance(chain):
    merged = chain["merged"]
    assert (merged / "original" / "tokenizer.model").is_file() and not (merged / "tokenizer.model").exists()
    for stage in ("resized", "pt", "pt_merged", "sft", "export"):
        assert tokenizer_fingerprint(chain[stage]) == tokenizer_fingerprint(merged), stage
        assert (chain[stage] / "merge_report.json").read_bytes() == (merged / "merge_report.json").read_bytes(), stage


def test_the_export_stops_at_the_end_of_a_reply_and_converts(chain, llama_cpp_tree):
    from zhllama.gguf import read_vocab

    export = chain["export"]
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128001, 128009]  # <|end_of_text|>, <|eot_id|>
    vocab = read_vocab(export / "model-f32.gguf")
    report = json.loads((export / "merge_report.json").read_text())
    assert vocab["pre"] == "llama-bpe" and len(vocab["tokens"]) == report["vocab_size"]
    assert "<|start_header_id|>" in vocab["chat_template"] and vocab["add_bos"]
    modelfile = modelfile_values((export / "Modelfile").read_text(encoding="utf-8"))
    assert 'stop "<|eot_id|>"' in modelfile["PARAMETER"]  # Ollama stops at the end of a reply


def test_ollama_renders_the_sft_prompts_and_llama_cpp_reads_their_ids(chain, llama_cpp_tree, tmp_path):
    """The Modelfile's TEMPLATE, read off the Llama-3 chat template, run by Go on the data Ollama builds, and
    the text tokenized by llama.cpp (special tokens read, BOS added by the GGUF's flag as Ollama does):
    the ids SFT trained on, for whole chats and for prompts awaiting a reply."""
    import helpers_llama_cpp as llama_cpp
    from helpers_ollama import render
    from helpers_sft import CONVERSATIONS, chat_messages
    from transformers import AutoTokenizer

    from sft.data import Conversation, Turn
    from sft.templates import TemplateSpec, encode_conversation, encode_prompt

    export = chain["export"]
    spec, tok = TemplateSpec.load(export), AutoTokenizer.from_pretrained(str(export))
    template = modelfile_values((export / "Modelfile").read_text(encoding="utf-8"))["TEMPLATE"]
    convs = [Conversation(tuple(Turn(t.user.strip(), t.assistant.strip(), t.input) for t in c.turns), c.system)
             for c in CONVERSATIONS]  # the template trims messages; Go cannot (the Modelfile says so)
    cases, want = [], []
    for conv in convs:
        asked = Conversation(conv.turns[:-1] + (Turn(conv.turns[-1].user, None),), conv.system)
        for shown, ids in ((conv, encode_conversation(conv, tok, spec)[0]), (asked, encode_prompt(asked, tok, spec))):
            cases.append({"template": template, "system": "", "messages": chat_messages(shown)})
            want.append(ids)
    got = llama_cpp.tokenize(export / "model-f32.gguf", render(cases, tmp_path), tmp_path, special=True)
    assert [[tok.bos_token_id] + ids for ids in got] == want


def test_tied_embeddings_stay_tied_and_trained_through_both_merges(chain):
    import torch
    from transformers import AutoModelForCausalLM

    embeddings = {}
    for stage in ("resized", "pt_merged", "export"):
        model = AutoModelForCausalLM.from_pretrained(str(chain[stage]), dtype=torch.float32)
        assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight, stage
        embeddings[stage] = model.model.embed_tokens.weight.detach()
    assert not torch.equal(embeddings["resized"], embeddings["pt_merged"])  # LoRA pretraining trained them
    assert not torch.equal(embeddings["pt_merged"], embeddings["export"])  # and so did LoRA SFT
    assert not (chain["pt_merged"] / "sft_template.json").exists()  # a base model: the tokenizer's files as they were


def test_llama_cpp_continues_the_exported_model_as_transformers_does(chain, tmp_path):
    import helpers_llama_cpp as llama_cpp
    from transformers import AutoTokenizer

    export = chain["export"]
    tok = AutoTokenizer.from_pretrained(str(export))
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in ("中国的首都是哪里？", "写一行缩进的代码")]
    prompts = [tok(text, add_special_tokens=False).input_ids for text in texts]
    llama_cpp.assert_continues_like_transformers(export / "model-f32.gguf", export, prompts, 8, tmp_path)
