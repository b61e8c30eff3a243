"""Helpers (no tests): the whole chain merge -> resize -> pretrain -> sft -> export on tiny assets.

Built once per test session by :func:`build_chain` (about a minute on 2 cores): a tiny
SentencePiece base, a tiny Chinese model merged into it with ``<pad>``, a random LLaMA resized to
the merged vocabulary, 2 steps of continued pretraining and 2 of LoRA SFT (single process,
ZeRO-3), then ``sft export``. Returns every stage's folder.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_prepare import write_lines, write_manifest

REPO = Path(__file__).resolve().parents[1]
ZH_LINES = ["中国科学院的研究人员发布了新的大语言模型。", "北京大学的学生在图书馆学习中文。",
            "我们继续预训练模型，然后指令精调。", "今天天气很好，我们去公园散步。"] * 30
SFT_RECORDS = [{"instruction": "把这句话翻译成英文。", "input": "今天天气很好", "output": "The weather is nice today."},
               {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
               {"instruction": "写一行缩进的代码", "input": "", "output": "    return 1"}] * 4


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore::FutureWarning"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, (" ".join(args) + "\n" + proc.stdout + proc.stderr)[-5000:]


def _sp_model(path: Path, lines: list[str], **options) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
                                   character_coverage=1.0, minloglevel=2, num_threads=1, hard_vocab_limit=False,
                                   **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _base_tokenizer(folder: Path) -> Path:
    """A LLaMA-like base: BPE, byte fallback, identity normaliser, BOS 1 / EOS 2."""
    from engine.tiny import DEFAULT_TEXT
    from vocab.hf_export import write_hf_folder
    from vocab.spm_proto import load_model_proto

    english = [line for line in DEFAULT_TEXT if line.isascii()] + ["def f(x):", "    return x + 1", "a b c"] * 20
    model = _sp_model(folder / "tokenizer.model", english, vocab_size=300, byte_fallback=True,
                      normalization_rule_name="identity", remove_extra_whitespaces=False, bos_id=1, eos_id=2,
                      unk_id=0, pad_id=-1)
    write_hf_folder(load_model_proto(model), folder)
    return folder


def _manifest(folder: Path) -> Path:
    corpus = write_lines(folder / "corpus.txt", ZH_LINES + ["    indented line", "a</s>b 文本里的 </s>"])
    return write_manifest(folder / "manifest.yaml", [{"name": "chain", "file": corpus}], holdout=0.2, name="chain")


def build_chain(root: Path) -> dict[str, Path]:
    from engine.tiny import make_tiny_model
    from pretrain.prepare import PrepareConfig, prepare
    from vocab.merge import merge_tokenizers
    from vocab.resize import ResizeConfig, resize_model

    base_tok = _base_tokenizer(root / "base_tok")
    base_model = make_tiny_model(root / "base_model", base_tok, hidden=32, layers=2, heads=4)
    merge_tokenizers(base_tok / "tokenizer.model", _sp_model(root / "zh.model", ZH_LINES, vocab_size=120),
                     root / "merged", add_pad_token=True)
    resize_model(ResizeConfig(base_model, root / "merged", root / "resized"))
    prepare(PrepareConfig(manifest=str(_manifest(root)), tokenizer=str(root / "resized"), block_size=32,
                          out=str(root / "shards"), progress=False))
    _run("pretrain", "train", "--config", str(REPO / "pretrain/configs/tiny_cpu.yaml"),
         f"model.path={root / 'resized'}", f"data.dir={root / 'shards'}", f"output_dir={root / 'pt'}",
         "schedule.max_steps=2", "eval.every_steps=0", "eval.at_start=false", "checkpoint.every_steps=0",
         "logging.wandb=disabled", "logging.tensorboard=false", "logging.plot=false")
    data = root / "sft.json"
    data.write_text(json.dumps(SFT_RECORDS, ensure_ascii=False), encoding="utf-8")
    _run("sft", "train", "--config", str(REPO / "sft/configs/tiny_cpu.yaml"), f"model.path={root / 'pt' / 'final'}",
         f"output_dir={root / 'sft'}", f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}', weight: 1.0}}]",
         "data.eval_fraction=0.0", "schedule.max_steps=2", "data.template=chinese-alpaca-2")
    _run("sft", "export", "--base", str(root / "pt" / "final"), "--adapter", str(root / "sft"),
         "--out", str(root / "export"))
    return {"merged": root / "merged", "resized": root / "resized", "pt": root / "pt" / "final",
            "sft": root / "sft" / "final", "export": root / "export"}
