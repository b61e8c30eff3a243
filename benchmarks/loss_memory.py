"""Peak memory of the language-model loss: the engine's fused, chunked loss vs the plain logits path.

    python benchmarks/loss_memory.py                          # 8 x 2048 tokens; LLaMA-2+zh, Llama-3, Qwen vocabularies
    python benchmarks/loss_memory.py --tokens 4096 --vocab 49472
    python benchmarks/loss_memory.py --objective dpo          # DPO's per-answer log-probabilities (half the positions are answers)
    python benchmarks/loss_memory.py --objective distill      # the divergence to a teacher (a one-layer LLaMA 96 wide)

Each case runs in a fresh process on the CPU: a one-layer LLaMA (hidden 64, so the output
projection is cheap) over ``--tokens`` labelled positions, forward and backward through the head,
once via ``model(..., labels=...)`` (transformers' own loss: B x S x V logits, kept for backward)
and once via the engine's ``forward_loss`` with ``model.fused_loss`` (engine/loss.py: chunks of
``--chunk`` positions). ``--objective dpo``: rows are chosen/rejected answers after a prompt of
the same length, and the step is engine/preference.py's DPO loss on the model's logits (plain) or
on the chunked head's per-position log-probabilities (fused). ``--objective distill``: every position is an answer
token, and the step is engine/distill.py's generalized JSD (beta 0.5) to a teacher, from both models' full logits
(plain, as TRL's GKDTrainer computes it) or from both models' hidden states in chunks of a quarter of ``--chunk``
(fused, as ``sft train`` sets it). Reported: the peak resident memory the loss step added over the model and
inputs (``ru_maxrss``), in GiB, next to the size of one fp32 copy of the full logits. Allocation
sizes do not depend on the device, so the ratio carries over to GPUs (where bf16 models add an fp32
upcast of the logits to the plain path; fp32 here has none).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VOCABS = {"LLaMA-2 + chinese_sp": 49472, "Llama-3": 128256, "Qwen": 151936}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def measure(spec: dict) -> dict:
    """In this process: peak RSS added by one forward + backward of the loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.evaluate import forward_loss
    from engine.loss import install_fused_head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=spec["vocab"], hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=spec["seq"],
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    if spec["fused"]:
        install_fused_head(model, spec["chunk"])
    batch = spec["tokens"] // spec["seq"]
    ids = torch.randint(0, spec["vocab"], (batch, spec["seq"]))
    inputs = {"input_ids": ids, "labels": ids.clone()}
    if spec.get("objective") == "dpo":
        return _measure_dpo(model, ids)
    if spec.get("objective") == "distill":
        return _measure_distill(model, config, ids, spec["chunk"])
    baseline = _rss_gib()
    if spec["fused"]:
        loss_sum, count = forward_loss(model, inputs, torch.device("cpu"))
        loss = loss_sum / count
    else:
        loss = model(**inputs, use_cache=False).loss
    loss.backward()
    return {"added_gib": _rss_gib() - baseline, "loss": float(loss)}


def _measure_dpo(model, ids) -> dict:
    """Rows 2i/2i+1: chosen/rejected, the second half of each row is the answer (labelled)."""
    import torch

    from engine.preference import DPOObjective

    labels = ids.clone()
    labels[:, : ids.shape[1] // 2] = -100
    # no attention_mask (no padding): the same causal attention as the SFT rows, so only the loss differs
    batch = {"input_ids": ids, "labels": labels, "reference_logps": torch.zeros(ids.shape[0] // 2, 2, dtype=torch.float64)}
    baseline = _rss_gib()
    total, pairs = DPOObjective(beta=0.1).loss(model, batch, torch.device("cpu"))
    (total / pairs).backward()
    return {"added_gib": _rss_gib() - baseline, "loss": float(total / pairs)}


def _measure_distill(model, config, ids, chunk: int) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from engine.distill import DistillObjective
    from engine.grpo_reference import FrozenCopy
    from engine.sampling import Sampler
    from sft.distill import divergence_chunk

    config.hidden_size, config.intermediate_size = 96, 192
    teacher = LlamaForCausalLM(config)
    objective = DistillObjective(teacher=FrozenCopy(lambda ds_config: (teacher, None)), sampler=Sampler([2], 0, 1),
                                 beta=0.5, lmbda=0.0, chunk_tokens=divergence_chunk(chunk))
    objective.prepare(model, {}, None, 1, ".", False, None, torch.device("cpu"), progress=False)
    baseline = _rss_gib()
    total, tokens = objective.divergence(model, {"input_ids": ids, "labels": ids.clone()}, torch.device("cpu"))
    (total / tokens).backward()
    return {"added_gib": _rss_gib() - baseline, "loss": float(total / tokens)}


def run_case(vocab: int, fused: bool, args) -> dict:
    spec = {"vocab": vocab, "fused": fused, "tokens": args.tokens, "seq": args.seq, "chunk": args.chunk,
            "objective": args.objective}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"})
    if proc.returncode < 0:  # SIGKILL from the kernel: this machine's memory was not enough
        return {"error": f"killed (signal {-proc.returncode}): more than this machine's free memory"}
    if proc.returncode != 0:
        return {"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8 * 2048, help="labelled positions per step (default 16,384)")
    ap.add_argument("--seq", type=int, default=2048, help="sequence length (default 2,048)")
    ap.add_argument("--chunk", type=int, default=4096, help="model.loss_chunk_tokens (default 4,096)")
    ap.add_argument("--vocab", type=int, nargs="*", help="vocabulary sizes (default: three real ones)")
    ap.add_argument("--objective", choices=["sft", "dpo", "distill"], default="sft",
                    help="sft: the summed next-token loss; dpo: per-answer log-probabilities and the DPO loss; "
                         "distill: the divergence to a teacher")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    vocabs = {f"vocab {v:,}": v for v in args.vocab} if args.vocab else VOCABS
    what = {"sft": "labelled tokens", "distill": "answer tokens (student and teacher)"}.get(
        args.objective, "tokens in chosen/rejected rows (half of them answers)")
    print(f"{args.tokens:,} {what} per step, chunks of {args.chunk:,}; peak memory the loss step adds (GiB)")
    plain_name = "plain (HF loss)" if args.objective == "sft" else "plain (logits)"
    print(f"{'vocabulary':<30} {'fp32 logits':>11} {plain_name:>16} {'fused (ours)':>13} {'ratio':>6}")
    for name, vocab in vocabs.items():
        plain, fused = run_case(vocab, False, args), run_case(vocab, True, args)
        logits = args.tokens * vocab * 4 / 2**30
        if "error" in fused:
            print(f"{name:<30} fused failed: {fused['error']}")
            continue
        if "error" in plain:
            print(f"{name + f' ({vocab:,})':<30} {logits:>11.2f} {'(' + plain['error'][:6] + ')':>16} "
                  f"{fused['added_gib']:>13.2f}      -   plain: {plain['error']}")
            continue
        assert abs(plain["loss"] - fused["loss"]) < 1e-3 * max(1.0, abs(plain["loss"])), (plain, fused)
        print(f"{name + f' ({vocab:,})':<30} {logits:>11.2f} {plain['added_gib']:>16.2f} {fused['added_gib']:>13.2f} "
              f"{plain['added_gib'] / max(fused['added_gib'], 1e-9):>5.1f}x")


if __name__ == "__main__":
    main()
