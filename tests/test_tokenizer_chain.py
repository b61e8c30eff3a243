"""The tokenizer files travel byte for byte along merge -> resize -> pretrain -> sft -> export.

transformers 5's save_pretrained drops add_bos_token/add_eos_token/legacy and special_tokens_map.json;
every stage copies the files instead, so the fingerprint and the ids never change, and the SFT
outputs add only their chat template.
"""
from __future__ import annotations

import json

from zhllama.tokenizer_files import TOKENIZER_FILES, tokenizer_fingerprint

STAGES = ("merged", "resized", "pt", "sft", "export")


def test_tokenizer_files_identical_along_the_chain(chain):
    merged = chain["merged"]
    names = [n for n in TOKENIZER_FILES if (merged / n).is_file()]
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= set(names)
    fingerprint = tokenizer_fingerprint(merged)
    for stage in STAGES[1:]:
        folder = chain[stage]
        assert tokenizer_fingerprint(folder) == fingerprint, stage
        for name in names:
            if name == "tokenizer_config.json" and stage in ("sft", "export"):
                continue
            assert (folder / name).read_bytes() == (merged / name).read_bytes(), (stage, name)
    original = json.loads((merged / "tokenizer_config.json").read_text())
    assert original["add_bos_token"] is True and original["legacy"] is True and original["pad_token"] == "<pad>"
    for stage in ("sft", "export"):
        config = json.loads((chain[stage] / "tokenizer_config.json").read_text())
        assert "[INST] <<SYS>>" in config.pop("chat_template"), stage  # the only key SFT adds
        assert config == original, stage
    for stage in STAGES[1:]:  # the vocab's provenance travels too (GGUF of BPE extensions reads it)
        assert (chain[stage] / "merge_report.json").read_bytes() == (merged / "merge_report.json").read_bytes(), stage


def test_export_config_and_ids(chain):
    """The exported model names the merged <pad>, and reads text as sentencepiece does."""
    import sentencepiece as spm

    from vocab.hf_export import load_hf_tokenizer

    export = chain["export"]
    config = json.loads((export / "config.json").read_text())
    tok = load_hf_tokenizer(export)
    assert config["pad_token_id"] == tok.pad_token_id == tok.convert_tokens_to_ids("<pad>")
    sp = spm.SentencePieceProcessor(model_file=str(export / "tokenizer.model"))
    texts = ["    indented", " 一个", "a  b\tc\n中国科学院"]
    assert tok(texts)["input_ids"] == [[sp.bos_id()] + ids for ids in sp.encode(texts)]
