"""How well does a resized model still read Chinese before any further training? (bits per char)

    OMP_NUM_THREADS=2 python benchmarks/resize_init.py [--steps 150] [--hidden 128] [--work DIR]

1. Trains a small LLaMA (vocab 32000, hidden 128, 2 layers: ~8.6M parameters, untied) for a few
   minutes on mixed Chinese/English text from ../shared/data with the BASE LLaMA tokenizer.
2. Merges chinese_llama_alpaca/chinese_sp.model into it (vocab.merge.merge_tokenizers, with <pad>
   and padding to a multiple of 64).
3. Resizes the model with each --init (subtoken-mean, mean, random) via `python -m vocab resize`.
4. Prints bits per character on held-out Chinese (the last CMRC paragraphs, never trained on) and
   held-out English for the base model (base tokenizer) and each resized model (merged tokenizer),
   at step 0: no training after the resize.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from vocab.bpc import bits_per_character  # noqa: E402
from vocab.merge import merge_tokenizers  # noqa: E402

DATA = REPO.parent / "shared" / "data"
BASE_SP = DATA / "tokenizers" / "llama2c" / "tokenizer.model"
ADD_SP = DATA / "tokenizers" / "chinese_llama_alpaca" / "chinese_sp.model"
ZH = DATA / "pretrain" / "cmrc2018_dev_contexts.txt"
EN = DATA / "pretrain" / "wiki_demo_en.txt"
HELD_OUT_ZH_LINES = 30
HELD_OUT_EN_CHARS = 12_000


def load_text() -> tuple[list[str], list[str], list[str], list[str]]:
    zh = [line for line in ZH.read_text(encoding="utf-8").splitlines() if line.strip()]
    en = [line for line in EN.read_text(encoding="utf-8").splitlines() if line.strip()]
    # English held-out: the tail of the last article, cut at sentence ends into ~1k-char pieces.
    tail = en[-1][-HELD_OUT_EN_CHARS:]
    tail = tail[tail.find(". ") + 2:]
    en_test = [tail[i:i + 1000] for i in range(0, len(tail), 1000)]
    en_train = en[:-1] + [en[-1][: -HELD_OUT_EN_CHARS]]
    return zh[:-HELD_OUT_ZH_LINES], zh[-HELD_OUT_ZH_LINES:], en_train, en_test


def token_stream(sp: spm.SentencePieceProcessor, lines: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for line in lines:
        ids.append(sp.bos_id())
        ids.extend(sp.encode(line))
    return torch.tensor(ids, dtype=torch.long)


def train_base(args, sp, zh_train, en_train, out: Path) -> float:
    """Train the base model on 50/50 zh/en windows; save it (with its tokenizer) to ``out``."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    streams = [token_stream(sp, zh_train), token_stream(sp, en_train)]
    config = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=args.hidden,
                         intermediate_size=args.hidden * 8 // 3, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=args.seq_len,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    print(f"base model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"train tokens zh {len(streams[0])}, en {len(streams[1])}")
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    start = time.time()
    bar = tqdm(range(args.steps), desc="training base")
    for step in bar:
        lr = args.lr * min(1.0, (step + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in optim.param_groups:
            group["lr"] = lr
        rows = []
        for b in range(args.batch):
            stream = streams[b % 2]
            at = rng.randrange(0, len(stream) - args.seq_len - 1)
            rows.append(stream[at:at + args.seq_len])
        batch = torch.stack(rows)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    elapsed = time.time() - start
    model.save_pretrained(out)
    shutil.copyfile(BASE_SP, out / "tokenizer.model")  # the model's own tokenizer: resize checks it
    return elapsed


def resize(model_dir: Path, merged: Path, out: Path, init: str) -> dict:
    start = time.time()
    argv = ["vocab", "resize", "--model", str(model_dir), "--tokenizer", str(merged), "--out", str(out),
            "--init", init]
    # Run the real CLI in a child that prints its own peak RSS when it exits. VmHWM, not ru_maxrss:
    # Linux carries ru_maxrss over from the forked copy of this (big) process across exec.
    wrapper = ("import atexit, re, runpy, sys; sys.argv = " + repr(argv) + "; atexit.register(lambda: "
               "print('PEAK_RSS_MIB', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())"
               ".group(1)) / 1024, file=sys.stderr)); runpy.run_module('vocab', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", wrapper], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"resize --init {init} failed:\n{proc.stderr}")
    report = json.loads((out / "resize_report.json").read_text())
    report["seconds"] = time.time() - start
    report["peak_rss_mib"] = float(proc.stderr.rsplit("PEAK_RSS_MIB", 1)[1].split()[0])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    args = parser.parse_args()
    if not (DATA / "PROVENANCE.md").is_file():
        raise SystemExit(f"needs the shared data folder {DATA}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="resize_init_"))
    work.mkdir(parents=True, exist_ok=True)
    zh_train, zh_test, en_train, en_test = load_text()
    base_sp = spm.SentencePieceProcessor(model_file=str(BASE_SP))

    model_dir = work / "base_model"
    if not (model_dir / "model.safetensors").is_file():
        seconds = train_base(args, base_sp, zh_train, en_train, model_dir)
        print(f"trained {args.steps} steps × {args.batch}×{args.seq_len} tokens in {seconds:.0f} s")
    merged = work / "merged_tokenizer"
    if not merged.is_dir():
        merge_tokenizers(BASE_SP, ADD_SP, merged, add_pad_token=True, pad_to_multiple_of=64)
    merged_sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))

    def score(model, sp) -> tuple[float, float, float]:
        zh = bits_per_character(model, zh_test, sp.encode, sp.bos_id(), block_size=args.seq_len, batch_size=16)
        en = bits_per_character(model, en_test, sp.encode, sp.bos_id(), block_size=args.seq_len, batch_size=16)
        return zh.bpc, zh.tokens_per_char, en.bpc

    rows = [("base (base tokenizer)", *score(AutoModelForCausalLM.from_pretrained(model_dir), base_sp), "")]
    for init in ("subtoken-mean", "mean", "random"):
        out = work / f"resized_{init}"
        if out.exists():
            shutil.rmtree(out)
        report = resize(model_dir, merged, out, init)
        model = AutoModelForCausalLM.from_pretrained(out)
        note = f"{report['old_vocab_size']}→{report['new_vocab_size']} rows, {report['seconds']:.1f} s, " \
               f"peak RSS {report['peak_rss_mib']:.0f} MiB, rules {report['rows_per_rule']}"
        rows.append((f"resized, --init {init}", *score(model, merged_sp), note))
    print(f"\nheld-out: {len(zh_test)} Chinese paragraphs ({sum(map(len, zh_test))} chars), "
          f"{sum(map(len, en_test))} English chars; step 0 after resize (no training)")
    print(f"{'model':<28} {'zh bits/char':>12} {'zh tokens/char':>15} {'en bits/char':>12}")
    for name, zh_bpc, tpc, en_bpc, note in rows:
        print(f"{name:<28} {zh_bpc:>12.3f} {tpc:>15.3f} {en_bpc:>12.3f}  {note}")
    print(f"base model weights: {(model_dir / 'model.safetensors').stat().st_size / 2**20:.0f} MiB "
          "(peak RSS of a resize is mostly the torch/transformers import)")
    print(f"folders in {work}")


if __name__ == "__main__":
    main()
