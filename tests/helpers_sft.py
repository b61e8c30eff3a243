"""Helpers shared by the tests/test_sft_*.py files (no tests here): tiny assets built from nothing.

The tokenizer is a 512-piece SentencePiece model trained in memory with byte fallback
(engine.tiny), so every test runs without ../shared/data.
"""
from __future__ import annotations

import json
from pathlib import Path

from sft.data import Conversation, Turn

ZH_RECORDS = [
    {"instruction": "把这句话翻译成英文。", "input": "春眠不觉晓", "output": "Spring sleep knows no dawn."},
    {"instruction": "床前明月光的下一句是什么？", "input": "", "output": "疑是地上霜。"},
    {"instruction": "续写诗句", "input": "白日依山尽", "output": "黄河入海流。欲穷千里目，更上一层楼。"},
    {"instruction": "大语言模型是什么？", "input": "", "output": "大语言模型在语料上预训练，可以理解中文。"},
    {"instruction": "Say hello.", "input": "", "output": "Hello! 你好！"},
    {"instruction": "夜来风雨声的下一句？", "input": "", "output": "花落知多少。"},
]


# Conversations for the chat-template tests: default, custom and empty system prompts; inputs; odd spacing.
CONVERSATIONS = [
    Conversation((Turn("列出三种水果。", "苹果、香蕉、橙子。"),)),
    Conversation((Turn("Say hello.", "Hello! 你好！"), Turn("再来一个", " 缩进的回答\n    第二行")), system="自定义系统"),
    Conversation((Turn("翻译", "cat", input="猫"), Turn("床前明月光", "疑是地上霜。"), Turn("x", "\n换行开头"))),
    Conversation((Turn("  空格开头的问题", "答：def f():\n\treturn 1"),), system=""),
]


def chat_messages(conv) -> list[dict]:
    """A conversation as chat messages (an Alpaca input joins its instruction, as in the chat templates)."""
    out = [{"role": "system", "content": conv.system}] if conv.system is not None else []
    for turn in conv.turns:
        out.append({"role": "user", "content": turn.user + "\n" + turn.input if turn.input else turn.user})
        if turn.assistant is not None:
            out.append({"role": "assistant", "content": turn.assistant})
    return out


def tiny_tokenizer(folder: Path) -> Path:
    from engine.tiny import make_tiny_tokenizer

    return make_tiny_tokenizer(folder)


def tiny_model(folder: Path, tokenizer_dir: Path, hidden: int = 32, seed: int = 0) -> Path:
    from engine.tiny import make_tiny_model

    return make_tiny_model(folder, tokenizer_dir, hidden=hidden, layers=2, heads=4, seed=seed)


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def our_tokenizer_folder(folder: Path, sp_model: Path | None = None) -> Path:
    """A tokenizer folder as `python -m vocab merge` writes it (tokenizer.json with sentencepiece's
    normalisation, generic class) from the tiny SentencePiece model, or from ``sp_model``."""
    from vocab.hf_export import write_hf_folder
    from vocab.spm_proto import load_model_proto

    if sp_model is None:
        sp_model = tiny_tokenizer(folder.with_name(folder.name + "_sp")) / "tokenizer.model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(Path(sp_model).read_bytes())
    write_hf_folder(load_model_proto(folder / "tokenizer.model"), folder)
    return folder


def read_metrics(out: Path) -> list[dict]:
    """A run's metrics.jsonl, one dict per line."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def bare_engine(model):
    """A bare model where an objective expects a DeepSpeed engine (``.module``, train/eval, callable)."""
    import torch

    class BareEngine(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, **inputs):
            return self.module(**inputs)

    return BareEngine(model)
