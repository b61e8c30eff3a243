"""The folder we write gives sentencepiece's ids under transformers 4 too (what older stacks and
many serving images run). transformers 4.57.1 is installed once, pinned, into the cache with pip
(``--target``, beside the test's own transformers 5) and run in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pinned_site
from helpers_chain import _base_tokenizer

PINS = ("transformers==4.57.1", "tokenizers==0.22.1", "huggingface-hub==0.36.0")
TEXTS = ["    \"merge\": True,", " 一个", "  two spaces", "\tTab", "a  b   c", "trailing   ", "x\ny\n\n z",
         "\nnewline first", " ", "def f(x):\n    return x + 1", "a</s>b", "<s> <unk>", "Naïve café 😀"]

_SCRIPT = """
import json, sys
import sentencepiece as spm
import transformers
from transformers import AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
sp = spm.SentencePieceProcessor(model_file=folder + "/tokenizer.model")
got = tok(texts, split_special_tokens=True)["input_ids"]
want = [[sp.bos_id()] + ids for ids in sp.encode(texts)]
print(json.dumps({"version": transformers.__version__, "class": type(tok).__name__,
                  "differ": [t for t, a, b in zip(texts, got, want) if a != b],
                  "decoded": [tok.decode(ids, skip_special_tokens=True) for ids in got]}))
"""


@pytest.fixture(scope="session")
def transformers4() -> Path:
    return pinned_site("transformers-4.57.1", PINS)


def test_transformers4_gives_sentencepiece_ids(transformers4, tmp_path):
    folder = _base_tokenizer(tmp_path / "tok")
    repo = Path(__file__).resolve().parents[1]
    code = [line for line in (repo / "sft" / "serve.py").read_text().split("\n") if line.startswith(" ")][:100]
    texts = TEXTS + code
    env = {**os.environ, "PYTHONPATH": str(transformers4), "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(folder), json.dumps(texts)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"] == "4.57.1" and result["class"] == "PreTrainedTokenizerFast"
    assert result["differ"] == [] and result["decoded"] == texts
