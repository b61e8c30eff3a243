"""A tiny hand-made tiktoken rank file and its extension, shared by the byte-level BPE tests."""
from __future__ import annotations

import base64
import random
from pathlib import Path

import yaml

from vocab.bbpe_merge import extend_bbpe
from vocab.bbpe_profiles import LLAMA3_PATTERN
from vocab.bbpe_train import TrainSettings
from zhllama.files import sha256_file

WORDS = ["我们", "喜欢", "学习", "中文", "模型", "数据", "研究", "人员", "发布", "大语言", "北京", "大学"]
PARTIAL = "鬱"  # the base holds only its first two bytes as a token: BPE must finish the character


def tiny_rank_lines() -> list[bytes]:
    tokens = [bytes([b]) for b in range(256)]
    tokens += [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b"er"]
    for ch in dict.fromkeys("".join(WORDS) + "的了是。，"):  # with a merge path: lead 2 bytes, then all 3
        tokens += [t for t in (ch.encode()[:2], ch.encode()) if t not in tokens]
    tokens.append(PARTIAL.encode()[:2])
    return [base64.b64encode(t) + b" " + str(i).encode() for i, t in enumerate(tokens)]


def make_tiny(root: Path) -> dict:
    """The rank file, 300 training lines, a manifest of them and their 40-token extension."""
    rank = root / "tiny.tiktoken"
    rank.write_bytes(b"\n".join(tiny_rank_lines()) + b"\n")
    rng = random.Random(0)
    lines = ["".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "，" + PARTIAL * 2 + "的。the thing"
             for _ in range(300)]
    text = root / "zh.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    manifest = root / "m.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "tiny", "sources": [{"name": "zh", "path": "zh.txt", "format": "txt", "language": "zh",
                                     "license": "CC0", "sha256": sha256_file(text)}]}, allow_unicode=True))
    out = root / "out"
    report = extend_bbpe(rank, lines, out, TrainSettings(new_tokens=40), pattern=LLAMA3_PATTERN)
    return {"rank": rank, "lines": lines, "manifest": manifest, "out": out, "report": report}
