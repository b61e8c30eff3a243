"""What a chat vector brings and costs: instruction answers against Chinese, at several ratios.

    python benchmarks/chat_vector_quality.py [--work DIR] [--ratios 0.25,0.5,0.75,1]

Three small LLaMA models (hidden 128, 4 layers, SentencePiece 6,000 over English Wikipedia, CMRC 2018
paragraphs and the task's text), trained here with plain AdamW loops (the subject is the merge, not
the training): a *base* pretrained on English Wikipedia paragraphs; a *chat* model tuned from it on
an instruction (用户：把这几个字重复两遍：X / 助手：XX, loss on the answer only); a *target*
continued-pretrained from the base on CMRC 2018 paragraphs. `python -m sft chat-vector` then writes
target + ratio x (chat - base) for each ratio. Measured on every model: bits per character of the
reference answers to 100 unseen instructions (does it follow the instruction?) and of 98 held-out CMRC
paragraphs (has it kept its Chinese?), and the share of each gain (chat over base, target over base) kept.
"""
from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from context_extension import small_llama  # noqa: E402  (the same tokenizer + LLaMA builder)

DATA = REPO.parent / "shared" / "data" / "pretrain"
PROMPT = "用户：把这几个字重复两遍：{}\n助手："


def _texts() -> tuple[list[str], list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """English paragraphs, CMRC paragraphs, training and unseen instructions with their answers."""
    cmrc = [line for line in (DATA / "cmrc2018_dev_contexts.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    wiki = [line for line in (DATA / "wiki_demo_en.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    chars = sorted({c for line in cmrc[:200] for c in line if "\u4e00" <= c <= "\u9fff"})[:400]

    def task(rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(chars) for _ in range(rng.randint(3, 6)))
        return PROMPT.format(word), word * 2 + "\n"
    rng = random.Random(0)
    return wiki, cmrc, [task(rng) for _ in range(3000)], [task(random.Random(99 + i)) for i in range(100)]


def _rows(tok, docs: list, block: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels): a document whole, an instruction with its prompt's labels -100."""
    out = []
    for doc in docs:
        if isinstance(doc, tuple):
            prompt, answer = (tok(t, add_special_tokens=False).input_ids for t in doc)
            ids = [tok.bos_token_id] + prompt + answer + [tok.eos_token_id]
            out.append((ids[:block], ([-100] * (len(prompt) + 1) + answer + [tok.eos_token_id])[:block]))
        else:
            ids = ([tok.bos_token_id] + tok(doc, add_special_tokens=False).input_ids)[:block]
            out.append((ids, ids))
    return out


def _train(start: Path, out: Path, docs: list, steps: int, lr: float, batch: int = 8, block: int = 256) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(start)
    model = AutoModelForCausalLM.from_pretrained(start).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rows, rng = _rows(tok, docs, block), random.Random(1)
    for step in range(steps):
        chosen = [rng.choice(rows) for _ in range(batch)]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100)
        for i, (x, y) in enumerate(chosen):
            ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
        for group in optimizer.param_groups:  # warmup, then linear decay to a tenth
            group["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _answer_bits(model, tok, tasks: list[tuple[str, str]]) -> float:
    import torch

    nats, chars = 0.0, 0
    with torch.no_grad():
        for prompt, answer in tasks:
            p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False).input_ids
            a = tok(answer, add_special_tokens=False).input_ids
            logp = model(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : -1].log_softmax(-1)
            nats -= float(logp.gather(1, torch.tensor(a)[:, None]).sum())
            chars += len(answer)
    return nats / math.log(2) / chars


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.text_bpc import text_bits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/chat_vector_quality"))
    p.add_argument("--ratios", default="0.25,0.5,0.75,1")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    wiki, cmrc, tasks, unseen = _texts()
    init = small_llama(work / "init", cmrc[:600] + wiki[:600] + [a + b for a, b in tasks[:200]], 6000, 512)
    base = _train(init, work / "base", wiki[:3000] + cmrc[:100], 600, 2e-3)
    chat = _train(base, work / "chat", tasks, 300, 5e-4)
    target = _train(base, work / "target", cmrc[100:700], 300, 5e-4)
    models = {"base": base, "chat (tuned from base)": chat, "target (Chinese, from base)": target}
    for ratio in args.ratios.split(","):
        out = work / f"chat_vector_{ratio}"
        subprocess.run([sys.executable, "-m", "sft", "chat-vector", "--target", str(target), "--base", str(base),
                        "--chat", str(chat), "--out", str(out), "--ratio", ratio, "--overwrite", "--no-progress"],
                       cwd=REPO, check=True, capture_output=True)
        models[f"target + {ratio} x (chat - base)"] = out
    tok = AutoTokenizer.from_pretrained(base)
    scores = {}
    for name, folder in models.items():
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        scores[name] = (_answer_bits(model, tok, unseen), text_bits(model, tok, cmrc[750:], block_size=512)["bits_per_char"])
    (b_answer, b_zh), (c_answer, _), (_, t_zh) = (scores[n] for n in list(models)[:3])
    print("| model | instruction answers, bits/char | CMRC held out, bits/char | instruction gain kept | Chinese gain kept |")
    print("|---|---:|---:|---:|---:|")
    for name, (answer, zh) in scores.items():
        print(f"| {name} | {answer:.3f} | {zh:.3f} | {(b_answer - answer) / (b_answer - c_answer):.0%} "
              f"| {(b_zh - zh) / (b_zh - t_zh):.0%} |")


if __name__ == "__main__":
    main()
