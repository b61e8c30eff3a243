"""How well does a resized model still read Chinese before any further training? (bits per char)

    python benchmarks/resize_init.py [--steps 3000] [--minutes 30] [--work DIR] [--inits ...]
    python benchmarks/resize_init.py --memorize --steps 1400 --minutes 20 --lr 4e-3 --work DIR2
    python benchmarks/resize_init.py --base-model Llama-2-7b-hf --device cuda --work DIR3   # a GPU machine

1. Trains a small LLaMA (vocab 32000, hidden 128, 2 layers: ~8.6M parameters, untied) for at most
   --minutes on mixed Chinese/English text (75% Chinese windows) from ../shared/data with the BASE
   LLaMA tokenizer (kept in --work: a rerun with the same --work reuses it).
2. Merges chinese_llama_alpaca/chinese_sp.model into it (vocab.merge.merge_tokenizers, with <pad>
   and padding to a multiple of 64).
3. Resizes the model with each --init (subtoken-mean, spelling, mean, random) via
   `python -m vocab resize` (spelling's --calibration-text: 64 other training paragraphs, then
   64 English training articles).
4. Prints bits per character on held-out Chinese (the last CMRC paragraphs, never trained on),
   on Chinese the base model trained on ("seen": what it knows best) and on held-out English for
   the base model (base tokenizer) and each resized model (merged tokenizer), at step 0: no
   training after the resize; plus the probability mass the model puts on the new ids while
   reading Chinese, and the bits each new-piece target costs (log2 of the new pieces is the price
   of knowing nothing: a resize can only carry over what the base model knew). --adapt-steps N
   also trains each resized model N steps (same windows, merged tokenizer) and scores it again.

Why --memorize: a base model that 2 cores can train reads held-out Chinese at ~8 bits/char and
pays more for the text of a new piece than log2(#new pieces), so uniform (random) rows look good
and nothing informed can beat them. Trained by heart on the seen paragraphs, the base model knows
that text the way a real 7B model knows Chinese, and the init that carries the knowledge over shows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
from vocab.bpc import bits_per_character, windows  # noqa: E402
from vocab.merge import merge_tokenizers  # noqa: E402
from vocab.resize_rows import base_size_of, plan_rows, read_tokenizer  # noqa: E402

DATA = Path(os.environ.get("ZHLLAMA_SHARED_DATA", REPO.parent / "shared" / "data"))
BASE_SP = DATA / "tokenizers" / "llama2c" / "tokenizer.model"
ADD_SP = DATA / "tokenizers" / "chinese_llama_alpaca" / "chinese_sp.model"
ZH = DATA / "pretrain" / "cmrc2018_dev_contexts.txt"
EN = DATA / "pretrain" / "wiki_demo_en.txt"
HELD_OUT_ZH_LINES = 30
HELD_OUT_EN_CHARS = 12_000
SEEN = slice(100, 130)  # training paragraphs scored as "seen" (the only ones trained on with --memorize)


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


def train(model, streams: list[torch.Tensor], args, steps: int, lr_peak: float, minutes: float, desc: str) -> int:
    """AdamW on random windows (Chinese with probability --zh-share); returns the steps done.

    Progress counts steps or wall time, whichever is further: on a busy machine training stops
    at ``minutes`` with the learning-rate schedule completed. Same seed, same windows.
    """
    rng = random.Random(args.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=lr_peak, weight_decay=0.0, betas=(0.9, 0.95))
    start, done = time.time(), 0
    model.train()
    bar = tqdm(range(steps), desc=desc)
    for step in bar:
        progress = max(step / steps, (time.time() - start) / (60 * minutes))
        if progress >= 1:
            break
        lr = lr_peak * min(1.0, (step + 1) / 10) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optim.param_groups:
            group["lr"] = lr
        rows = []
        for _ in range(args.batch):
            stream = streams[0] if rng.random() < args.zh_share else streams[1]
            at = rng.randrange(0, len(stream) - args.seq_len - 1)
            rows.append(stream[at:at + args.seq_len])
        batch = torch.stack(rows).to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
    model.eval()
    return done


def train_base(args, sp, zh_train, en_train, out: Path) -> tuple[int, float]:
    """Train the base model on a zh/en mix of windows; save it (with its tokenizer) to ``out``."""
    torch.manual_seed(args.seed)
    streams = [token_stream(sp, zh_train), token_stream(sp, en_train)]
    config = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=args.hidden,
                         intermediate_size=args.hidden * 8 // 3, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=args.seq_len,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config)
    print(f"base model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"train tokens zh {len(streams[0])}, en {len(streams[1])}")
    start = time.time()
    done = train(model, streams, args, args.steps, args.lr, args.minutes, "training base")
    seconds = time.time() - start
    model.save_pretrained(out)
    shutil.copyfile(BASE_SP, out / "tokenizer.model")  # the model's own tokenizer: resize checks it
    return done, seconds


def scored_windows(model, ids: list[int], block_size: int):
    """(log-probabilities, targets) of each window of ``ids`` (vocab.bpc.windows: every id after
    the first is a target exactly once)."""
    for window in windows(ids, block_size):
        window = torch.tensor(window, device=model.device)
        yield torch.log_softmax(model(input_ids=window[None, :-1]).logits[0].float(), dim=-1), window[1:]


def new_piece_costs(model, sp, texts: list[str], first_new: int, block_size: int) -> tuple[float, float]:
    """(mean probability the model gives to ids >= first_new per position, mean bits per target that
    is a new id) while reading ``texts``: where the step-0 bits go."""
    mass, positions, bits, targets = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for text in texts:
            for logp, target in scored_windows(model, [sp.bos_id()] + sp.encode(text), block_size):
                mass += float(logp[:, first_new:].exp().sum())
                positions += logp.shape[0]
                new = target >= first_new
                bits += float(-logp[new].gather(-1, target[new, None]).sum()) / math.log(2)
                targets += int(new.sum())
    return mass / max(positions, 1), bits / targets if targets else float("nan")


def base_cost_of_new_pieces(model, merged_dir: Path, merged_sp, texts: list[str], block_size: int) -> float:
    """Mean bits the BASE model pays for the text of one new piece, reading each merged token spelled
    with its base pieces (its own hidden states): the most a resize that copies the base can keep.
    Compare with log2(#new ids), what uniform rows pay."""
    tok = read_tokenizer(merged_dir)
    old = model.config.vocab_size
    plan = plan_rows(tok, old, tok.size, "subtoken-mean", base_size_of(tok))
    bits, spans = 0.0, 0
    with torch.no_grad():
        for text in texts:
            merged_ids = merged_sp.encode(text)
            spelled, starts = [merged_sp.bos_id()], []
            for t in merged_ids:
                starts.append(len(spelled))
                spelled.extend(plan.sources.get(t, [t]) if t >= old else [t])
            # nll[p - 1]: bits for spelled[p], each position scored once in its window
            nll = torch.cat([-logp.gather(-1, target[:, None])[:, 0] for logp, target in
                             scored_windows(model, spelled, block_size)]) / math.log(2)
            ends = starts[1:] + [len(spelled)]
            for t, lo, hi in zip(merged_ids, starts, ends):
                if t >= old:
                    bits += float(nll[lo - 1:hi - 1].sum())
                    spans += 1
    return bits / max(spans, 1)


def resize(model_dir: Path, merged: Path, out: Path, init: str, calibration: list[Path], device: str) -> dict:
    start = time.time()
    argv = ["vocab", "resize", "--model", str(model_dir), "--tokenizer", str(merged), "--out", str(out),
            "--init", init] + (["--calibration-text", *map(str, calibration), "--device", device] if init == "spelling" else [])
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
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=30, help="stop training after this long")
    parser.add_argument("--zh-share", type=float, default=0.75, help="fraction of Chinese training windows")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-model", type=Path, default=None,
                        help="an existing LLaMA-family folder (safetensors + its tokenizer.model, e.g. Llama-2-7b) "
                             "instead of training one; best with --device cuda")
    parser.add_argument("--device", default="cpu", help="where scoring and --init spelling run")
    parser.add_argument("--memorize", action="store_true",
                        help="train the base model only on the 30 'seen' paragraphs (+ 3 English articles) until it "
                             "knows them by heart: a base model that knows Chinese text well, which 2 cores can make")
    parser.add_argument("--inits", nargs="+", default=["subtoken-mean", "spelling", "mean", "random"],
                        choices=["subtoken-mean", "spelling", "mean", "random"])
    parser.add_argument("--adapt-steps", type=int, default=0,
                        help="also train each resized model this many steps (merged tokenizer, same windows)")
    parser.add_argument("--adapt-lr", type=float, default=2e-3)
    parser.add_argument("--work", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    args = parser.parse_args()
    if not (DATA / "PROVENANCE.md").is_file():
        raise SystemExit(f"needs the shared data folder {DATA}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="resize_init_"))
    work.mkdir(parents=True, exist_ok=True)
    zh_train, zh_test, en_train, en_test = load_text()
    model_dir = args.base_model or work / "base_model"
    base_tokenizer = model_dir / "tokenizer.model" if args.base_model else BASE_SP
    base_sp = spm.SentencePieceProcessor(model_file=str(base_tokenizer))
    if not args.base_model and not (model_dir / "model.safetensors").is_file():
        zh_base, en_base = (zh_train[SEEN], en_train[:3]) if args.memorize else (zh_train, en_train)
        done, seconds = train_base(args, base_sp, zh_base, en_base, model_dir)
        print(f"trained {done} steps × {args.batch}×{args.seq_len} tokens in {seconds:.0f} s")
    merged = work / "merged_tokenizer"
    if not merged.is_dir():
        merge_tokenizers(base_tokenizer, ADD_SP, merged, add_pad_token=True, pad_to_multiple_of=64)
    merged_sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))

    seen = zh_train[SEEN]  # paragraphs the base model trained on
    # spelling's calibration: samples of the user's corpora, Chinese first, then English
    calibration = [work / "calibration_zh.txt", work / "calibration_en.txt"]
    calibration[0].write_text("\n".join(zh_train[SEEN.stop:SEEN.stop + 64]) + "\n", encoding="utf-8")
    calibration[1].write_text("\n".join(line[:2000] for line in en_train[:64]) + "\n", encoding="utf-8")

    def score(model, sp) -> tuple:
        def bpc(texts):
            return bits_per_character(model, texts, sp.encode, sp.bos_id(), block_size=args.seq_len, batch_size=16)
        zh = bpc(zh_test)
        mass, new_bits = new_piece_costs(model, sp, zh_test, base_sp.get_piece_size(), args.seq_len)
        return zh.bpc, bpc(seen).bpc, zh.tokens_per_char, bpc(en_test).bpc, mass, new_bits

    merged_streams = [token_stream(merged_sp, zh_train), token_stream(merged_sp, en_train)] if args.adapt_steps else []
    def load(folder: Path):
        return AutoModelForCausalLM.from_pretrained(folder, dtype="auto").to(args.device)

    base_model = load(model_dir)
    rows = [("base (base tokenizer)", *score(base_model, base_sp), "")]
    span_bits = base_cost_of_new_pieces(base_model, merged, merged_sp, zh_test, args.seq_len)
    del base_model
    for init in args.inits:
        out = work / f"resized_{init}"
        if out.exists():
            shutil.rmtree(out)
        report = resize(model_dir, merged, out, init, calibration, args.device)
        model = load(out)
        note = f"{report['old_vocab_size']}→{report['new_vocab_size']} rows, {report['seconds']:.1f} s, " \
               f"peak RSS {report['peak_rss_mib']:.0f} MiB"
        rows.append((f"resized, --init {init}", *score(model, merged_sp), note))
        if args.adapt_steps:
            done = train(model, merged_streams, args, args.adapt_steps, args.adapt_lr, 1e9, f"adapting {init}")
            rows.append((f"  after {done} more steps", *score(model, merged_sp), ""))
    print(f"\nheld-out: {len(zh_test)} Chinese paragraphs ({sum(map(len, zh_test))} chars), "
          f"{sum(map(len, en_test))} English chars; seen: {len(seen)} training paragraphs; "
          "'resized' rows are at step 0 (no training after the resize)")
    print(f"{'model':<28} {'zh bits/char':>12} {'seen zh':>8} {'zh tok/char':>11} {'en bits/char':>12} "
          f"{'p(new ids)':>10} {'bits/new tgt':>12}")
    for name, zh_bpc, seen_bpc, tpc, en_bpc, mass, new_bits, note in rows:
        print(f"{name:<28} {zh_bpc:>12.3f} {seen_bpc:>8.3f} {tpc:>11.3f} {en_bpc:>12.3f} {mass:>10.3f} "
              f"{new_bits:>12.2f}  {note}")
    print(f"p(new ids): mean probability given to ids >= {base_sp.get_piece_size()} while reading held-out Chinese; "
          f"bits/new tgt: mean bits per target that is a new id (knowing nothing: "
          f"log2({merged_sp.get_piece_size() - base_sp.get_piece_size()}) = "
          f"{math.log2(merged_sp.get_piece_size() - base_sp.get_piece_size()):.2f})")
    print(f"the base model itself pays {span_bits:.2f} bits for the text of a new piece in held-out Chinese "
          "(read spelled with base pieces): below log2(#new) informed rows can beat uniform ones")
    print(f"base model weights: {(model_dir / 'model.safetensors').stat().st_size / 2**20:.0f} MiB "
          "(peak RSS of a resize is mostly the torch/transformers import)")
    print(f"folders in {work}")


if __name__ == "__main__":
    main()
