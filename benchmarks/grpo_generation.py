"""How fast GRPO trains on 2 ranks by where the weights are while answers are written: ZeRO-2 (whole on each rank),
ZeRO-3 gathered layer by layer at every token (``grpo.gather_for_generation=false``), ZeRO-3 gathered once per
generate call (the default; engine/zero3_generation.py).

    python benchmarks/grpo_generation.py --work runs/grpo_generation [--steps 8] [--trl /tmp/trl/bin/python]

CPU, fp32, 2 gloo ranks (``torchrun``), ``python -m sft train`` with sft/configs/grpo_tiny_cpu.yaml: a random
LLaMA of 4 layers x 256 (8 heads), mode full, 2 prompts per rank and step x 8 answers of up to 32 tokens (random
weights rarely stop early: most answers are 32 tokens). Printed per setting: seconds per step after the first,
training tokens per second (prompt + answer rows) and the mean reward (the same rows in every setting where the
answers are the same, which the test suite checks for the two ZeRO-3 settings).

With ``--trl PYTHON`` (a venv with trl and deepspeed, as benchmarks/dpo_crosscheck.py says), the peer runs the
same model, prompts and sizes: TRL's ``GRPOTrainer`` under DeepSpeed ZeRO-3 on 2 gloo ranks (the HF Trainer's CPU
set-up of ENV-NOTES), with ``ds3_gather_for_generation`` (its default; with false, TRL 1.16 fails in its first
backward on CPU with DeepSpeed 0.19.8: a size-0 weight). Its answers are its own samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [f"{topic}{ask}" for topic in ("春天", "大海", "北京", "长城", "熊猫", "茶", "月亮", "故乡")
             for ask in ("是什么样的？", "有什么特点？")]
SETTINGS = [("ZeRO-2", ["deepspeed.preset=zero2"]),
            ("ZeRO-3, per token", ["deepspeed.preset=zero3", "grpo.gather_for_generation=false"]),
            ("ZeRO-3, gathered once", ["deepspeed.preset=zero3", "grpo.gather_for_generation=true"])]


def run(work: Path, model: Path, data: Path, name: str, overrides: list[str], steps: int) -> dict:
    out = work / name.replace(" ", "_").replace(",", "")
    cmd = ["torchrun", "--nproc_per_node", "2", "-m", "sft", "train", "--config",
           str(REPO / "sft/configs/grpo_tiny_cpu.yaml"), f"model.path={model}", f"output_dir={out}",
           f"data.cache_dir={work / 'cache'}", f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.0",
           "grpo.rewards={zh_share: 1.0}", "grpo.generations=8", "grpo.max_new_tokens=32", "mode=full",
           f"schedule.max_steps={steps}", "batch.micro_batch_size=2", "eval.every_steps=0", "eval.at_start=false",
           "checkpoint.resume=never", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    started = time.perf_counter()
    proc = subprocess.run([torchrun, *cmd[1:]], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "train/reward" in r]
    per_step = (logged[-1]["time"] - logged[0]["time"]) / (len(logged) - 1)
    return {"seconds": per_step, "tokens_per_s": sum(r["train/tokens_per_s"] for r in logged[1:]) / (len(logged) - 1),
            "reward": sum(r["train/reward"] for r in logged) / len(logged), "wall": time.perf_counter() - started,
            "answer_tokens": sum(r["train/answer_tokens"] for r in logged) / len(logged)}


def run_trl(python: str, work: Path, model: Path, gather: bool, steps: int) -> dict:
    """TRL's GRPOTrainer under ZeRO-3 on 2 ranks: this file again, as the worker, under torchrun."""
    out = work / f"trl_gather_{gather}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    started = time.perf_counter()
    proc = subprocess.run([python, "-m", "torch.distributed.run", "--nproc_per_node", "2", __file__, "--trl-worker", str(model), str(out),
                           str(gather), str(steps), str(work)], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    return {**json.loads(out.read_text()), "wall": time.perf_counter() - started}


def trl_worker(model: str, out: str, gather: str, steps: str, work: str) -> None:
    import deepspeed
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sft.rewards import zh_share_reward

    deepspeed.init_distributed(dist_backend="gloo")  # before the arguments: ENV-NOTES, HF Trainer on CPU
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    ds = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
          "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    cfg = GRPOConfig(output_dir=str(Path(work) / "trl_out"), learning_rate=5e-3, lr_scheduler_type="constant",
                     max_steps=int(steps), per_device_train_batch_size=16, num_generations=8, max_completion_length=32,
                     temperature=1.0, top_k=0, beta=0.0, loss_type="dapo", use_cpu=True, bf16=False,
                     report_to="none", logging_steps=1, save_strategy="no", log_completions=False, disable_tqdm=True,
                     deepspeed=ds, ds3_gather_for_generation=gather == "True", gradient_checkpointing=False)
    tok = AutoTokenizer.from_pretrained(str(Path(work) / "tok"))
    prompts = json.loads((Path(work) / "rendered.json").read_text(encoding="utf-8"))
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(policy, reward_funcs=[lambda completions, **_: [zh_share_reward(c) for c in completions]],
                          args=cfg, train_dataset=Dataset.from_list([{"prompt": q} for q in prompts]),
                          processing_class=tok, callbacks=[Clock()])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps({"seconds": (times[-1] - times[0]) / (len(times) - 1),
                                         "reward": sum(rewards) / len(rewards),
                                         "answer_tokens": sum(lengths) / len(lengths)}))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-worker":
        sys.path.insert(0, str(REPO))
        trl_worker(*sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/grpo_generation", help="folder for the model, data and runs")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per setting")
    p.add_argument("--trl", default=None, help="python of a venv with trl and deepspeed: the peer's rows too")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer(work / "tok")
    model = make_tiny_model(work / "model", tok, hidden=256, layers=4, heads=8, seed=0)
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    if args.trl:  # the peer gets the prompts as our run renders them (chinese-alpaca-2, system prompt included)
        from transformers import AutoTokenizer

        from sft.data import Conversation, Turn
        from sft.templates import encode_prompt, make_spec

        tokenizer = AutoTokenizer.from_pretrained(str(tok))
        spec = make_spec("chinese-alpaca-2", tokenizer)
        rendered = [tokenizer.decode(encode_prompt(Conversation((Turn(q, None),)), tokenizer, spec),
                                     skip_special_tokens=True) for q in QUESTIONS]
        (work / "rendered.json").write_text(json.dumps(rendered, ensure_ascii=False), encoding="utf-8")
    print(f"2 CPU ranks, fp32, 4 x 256 LLaMA, mode full, {args.steps} steps of 4 prompts x 8 answers of <= 32 tokens")
    print(f"{'weights while writing':<24}{'s/step':>9}{'tokens/s':>10}{'reward':>9}{'answer':>8}{'wall s':>8}")
    for name, overrides in SETTINGS:
        row = run(work, model, data, name, overrides, args.steps)
        print(f"{name:<24}{row['seconds']:9.3f}{row['tokens_per_s']:10.0f}{row['reward']:9.4f}"
              f"{row['answer_tokens']:8.1f}{row['wall']:8.1f}", flush=True)
    if args.trl:  # its ds3_gather_for_generation=false run fails in its first backward here (a size-0 weight)
        row = run_trl(args.trl, work, model, True, args.steps)
        print(f"{'TRL ZeRO-3, gathered':<24}{row['seconds']:9.3f}{'':>10}{row['reward']:9.4f}"
              f"{row['answer_tokens']:8.1f}{row['wall']:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
