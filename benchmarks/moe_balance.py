"""What the routers' load-balancing loss does to a mixture-of-experts model: none, transformers' (the peer), ours
per rank, ours over the global batch — the same tiny Qwen3-MoE, data and steps.

    python benchmarks/moe_balance.py [--steps 300] [--coef 0.01] [--experts 16]

Offline, CPU, a few minutes on 2 cores. Two data ranks are simulated in one process, each reading one language
(rank A: CMRC 2018's Chinese paragraphs, rank B: English Wikipedia, from ../shared/data; the script stops, saying
so, where they are absent): the case where one micro batch need not use every expert but the whole batch should.
Each step trains on both ranks' micro batches, the language-model loss plus coef x a balance loss:

- none: no balance loss;
- transformers: each rank's ``aux_loss`` from ``output_router_logits=True`` (all layers' choices pooled), the
  loss HF Trainer / LLaMA-Factory add — the peer;
- ours, micro_batch: engine/moe.py's per-layer loss, each rank's own counts;
- ours, global_batch: the counts summed over both ranks (the engine's default; computed here on the two micro
  batches together, which tests/test_engine_moe.py shows trains as two ranks do).

Then, on held-out text of both languages: the loss (nats/token) per language, the worst layer's busiest expert
over the mean (1.0 = even), layer-expert pairs that got no token, and how much the experts specialise by
language (the mutual information between a token's language and the experts chosen for it, bits, averaged
over layers; 0 = the experts do not care which language they read).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "pretrain"
SOURCES = {"zh": DATA / "cmrc2018_dev_contexts.txt", "en": DATA / "wiki_demo_en.txt"}
VARIANTS = ("none", "transformers", "ours, micro_batch", "ours, global_batch")


def _texts() -> dict[str, list[str]]:
    missing = [str(p) for p in SOURCES.values() if not p.is_file()]
    if missing:
        sys.exit(f"benchmarks/moe_balance.py needs {missing} (../shared/data, PROVENANCE.md)")
    return {lang: [line.strip() for line in path.read_text("utf-8").splitlines() if len(line.strip()) > 50]
            for lang, path in SOURCES.items()}


def _blocks(tok, lines: list[str], block: int) -> torch.Tensor:
    ids: list[int] = []
    for line in lines:
        ids += tok.encode(line, add_special_tokens=False) + [tok.eos_token_id]
    usable = len(ids) // block * block
    return torch.tensor(ids[:usable]).view(-1, block)


def _model(folder: Path, experts: int):
    from transformers import AutoModelForCausalLM

    from engine.tiny import make_tiny_moe_model

    if not (folder / "config.json").is_file():
        make_tiny_moe_model(folder, folder.parent / "tok", hidden=64, layers=4, heads=4, experts=experts, top_k=2)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _train(variant: str, folder: Path, data: dict[str, torch.Tensor], args) -> tuple[object, float]:
    from engine.moe import RouterBalance, routers_of

    torch.manual_seed(0)
    model = _model(folder, args.experts).train()
    model.router_aux_loss_coef = args.coef  # the peer's forward adds router_aux_loss_coef x aux_loss to its loss
    routers, index = routers_of(model)
    balance = RouterBalance(model, routers, index, 2, args.coef, 0.0, False)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for _ in range(args.steps):
        a, b = (data[lang][torch.randint(len(data[lang]), (args.batch,), generator=order)] for lang in ("zh", "en"))
        if variant == "transformers":
            loss = sum(model(input_ids=x, labels=x, output_router_logits=True).loss for x in (a, b)) / 2
        elif variant == "ours, global_batch":
            with balance.collecting():
                lm = model(input_ids=torch.cat([a, b]), labels=torch.cat([a, b])).loss
            loss = balance.added_to(lm)
        else:
            parts = []
            for x in (a, b):
                with balance.collecting():
                    lm = model(input_ids=x, labels=x).loss
                parts.append(balance.added_to(lm) if variant != "none" else lm)
            loss = sum(parts) / 2
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
    return model, time.perf_counter() - start


@torch.no_grad()
def _score(model, held: dict[str, torch.Tensor], experts: int) -> dict[str, float]:
    from engine.moe import routers_of

    model.eval()
    routers, index = routers_of(model)
    chosen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(routers))}
    hooks = [r.register_forward_hook(lambda m, a, out, i=i: chosen[i].append(out[index].topk(2, -1).indices))
             for i, r in enumerate(routers)]
    out = {}
    for lang in ("zh", "en"):
        out[f"loss {lang}"] = float(model(input_ids=held[lang], labels=held[lang]).loss)
    for h in hooks:
        h.remove()
    max_load, idle, info = 0.0, 0, 0.0
    for layer, (zh, en) in chosen.items():
        counts = torch.stack([torch.bincount(x.reshape(-1), minlength=experts).float() for x in (zh, en)])
        total = counts.sum(0)
        max_load = max(max_load, float(total.max() / total.mean()))
        idle += int((total == 0).sum())
        joint = counts / counts.sum()
        px, py = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
        nz = joint > 0
        info += float((joint[nz] * (joint[nz] / (px @ py)[nz]).log2()).sum())
    return {**out, "max load": max_load, "idle experts": idle, "language MI (bits)": info / len(chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/moe_balance")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--coef", type=float, default=0.01)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from engine.tiny import make_tiny_tokenizer

    texts = _texts()
    work = Path(args.work)
    tok_dir = work / "tok"
    if not (tok_dir / "tokenizer_config.json").is_file():
        make_tiny_tokenizer(tok_dir, texts["zh"][:3000] + texts["en"][:3000], vocab_size=8000)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    data, held = {}, {}
    for lang, lines in texts.items():
        blocks = _blocks(tok, lines[:4000], args.block)
        held[lang], data[lang] = blocks[:32], blocks[32:]
    folder = work / f"moe_{args.experts}"
    rows = []
    for variant in VARIANTS:
        model, seconds = _train(variant, folder, data, args)
        rows.append((variant, _score(model, held, args.experts), seconds))
        print(f"  {variant}: {seconds:.0f} s", flush=True)
    keys = list(rows[0][1])
    print(f"\n{args.steps} steps, 2 ranks x {args.batch} blocks of {args.block} tokens (rank A Chinese, rank B "
          f"English), {args.experts} experts top-2 x 4 layers, balance coefficient {args.coef:g}\n")
    print(f"| variant | {' | '.join(keys)} |")
    print("|---|" + "---|" * len(keys))
    for variant, scores, _ in rows:
        cells = [f"{scores[k]:.3f}" if isinstance(scores[k], float) else str(scores[k]) for k in keys]
        print(f"| {variant} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
