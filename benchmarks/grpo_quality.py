"""GRPO training side by side with TRL's GRPOTrainer: the same start, prompts and settings; the reward curve,
the held-out reward at the end and the time per step.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/grpo_quality.py --work runs/grpo_quality

Needs ``trl`` in a side venv, set up as benchmarks/dpo_crosscheck.py says (tested: trl 1.16.0, torch 2.13 CPU).
Offline, CPU, fp32, one process each. The task is the language-consistency reward (``zh_share``: the share of
Han characters among an answer's letters) for a random tiny LLaMA (64 wide, 2 layers, a 512-piece tokenizer):
about half of its random text is Han, and an answer can be scored without a trained model. 48 Chinese prompts,
12 held out by the manifest rule (``data.eval_fraction``).

Ours: ``python -m sft train`` (objective grpo, mode full, DeepSpeed ZeRO-2, one rank). TRL: ``GRPOTrainer.train``
on the same prompts as text (our chinese-alpaca-2 rendering; its own tokenization of it). Both: 8 answers of at
most 16 tokens per prompt, 4 prompts per step, 40 steps, AdamW lr 3e-3 (betas 0.9/0.999, no decay), constant
rate, clip 1.0, temperature 1, KL penalty ``--beta`` (0: none; the reference is a frozen copy of the start
in both), token-level mean loss, rewards scaled by the group's std, ``--iterations`` optimizer steps on each batch
of answers (TRL's ``num_iterations``; PPO's clip 0.2, or ``--epsilon-high`` above it; 2: half the generations,
the costly part of a step, for the same number of steps). ``--reward zh_mostly`` makes the reward pass/fail (Han
share >= 0.8), so groups turn flat as the model learns; ``--dynamic-sampling N`` then adds our run with N rounds of
DAPO's dynamic sampling (TRL has none). The end models
are then scored by one function: the mean reward of 8 sampled answers (seeded) and of the greedy answer to
each held-out prompt. The runs' own samples differ (other RNG streams), so curves agree in trend, not number.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPICS = ("春天", "大海", "北京", "长城", "熊猫", "茶", "月亮", "故乡")
ASKS = ("是什么样的？", "有什么特点？", "请描述一下。", "用一句话介绍。", "你喜欢吗？", "写一句诗。")
QUESTIONS = [topic + ask for topic in TOPICS for ask in ASKS]
STEPS, PROMPTS, GENERATIONS, MAX_NEW, LR = 40, 4, 8, 16, 3e-3


def zh_mostly(completion: str, record: dict | None = None) -> float:
    """1 when at least 80% of the answer's letters are Han, else 0: a pass/fail reward like a math answer's, whose
    groups turn flat (all pass) as the model learns, which dynamic sampling replaces."""
    from sft.rewards import zh_share_reward

    return float(zh_share_reward(completion) >= 0.8)


def reward_function(name: str):
    from sft.rewards import zh_share_reward

    return {"zh_share": zh_share_reward, "zh_mostly": zh_mostly}[name]


def reward_setting(name: str) -> str:
    """Ours: the built-in reward, or this module's function."""
    return "{zh_share: 1.0}" if name == "zh_share" else f"{{'benchmarks.grpo_quality:{name}': 1.0}}"


def run_ours(work: Path, model: Path, data: Path, beta: float, iterations: int, epsilon_high: float | None,
             reward: str, dynamic: int) -> tuple[list[float], float, Path, float | None, float | None]:
    out = work / f"ours_{reward}_beta{beta:g}_mu{iterations}_dyn{dynamic}"
    cmd = [sys.executable, "-m", "sft", "train", "--config", str(REPO / "sft/configs/grpo_tiny_cpu.yaml"),
           f"model.path={model}", f"output_dir={out}", f"data.cache_dir={work / 'cache'}",
           f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.25", f"grpo.rewards={reward_setting(reward)}",
           f"grpo.generations={GENERATIONS}", f"grpo.max_new_tokens={MAX_NEW}", "mode=full", f"optim.lr={LR}",
           "optim.betas=[0.9, 0.999]", f"schedule.max_steps={STEPS}", f"batch.micro_batch_size={PROMPTS}",
           "deepspeed.preset=zero2", "eval.every_steps=0", "eval.at_start=false", "checkpoint.resume=never",
           f"grpo.beta={beta}", f"grpo.iterations={iterations}", "grpo.epsilon=0.2",
           f"grpo.epsilon_high={'null' if epsilon_high is None else epsilon_high}", f"grpo.dynamic_sampling={dynamic}"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/reward" in r]
    seconds = (logged[-1]["time"] - logged[0]["time"]) / (len(logged) - 1)  # steps 2..N: no start-up
    kl = sum(r["train/kl"] for r in logged[-5:]) / 5 if beta else None
    written = sum(r["train/groups_written"] for r in logged) / len(logged) if dynamic else None
    return [r["train/reward"] for r in logged], seconds, out / "final", kl, written


def run_trl(work: Path, model: Path, tok, prompts: list[str], beta: float, iterations: int,
            epsilon_high: float | None, reward: str) -> tuple[list[float], float, Path, float | None, None]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    score = reward_function(reward)

    def zh(completions, **_):
        return [score(c) for c in completions]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    cfg = GRPOConfig(output_dir=str(work / "trl"), learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                     weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, max_steps=STEPS,
                     per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
                     max_completion_length=MAX_NEW, temperature=1.0, top_p=1.0, top_k=0, beta=beta, loss_type="dapo",
                     scale_rewards="group", use_cpu=True, bf16=False, report_to="none", logging_steps=1,
                     save_strategy="no", seed=1234, log_completions=False, disable_tqdm=True,
                     num_iterations=iterations, epsilon=0.2, epsilon_high=epsilon_high)
    policy = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    trainer = GRPOTrainer(policy, reward_funcs=[zh], args=cfg, train_dataset=Dataset.from_list(
        [{"prompt": p} for p in prompts]), processing_class=tok, callbacks=[Clock()])
    with contextlib.redirect_stdout(io.StringIO()):  # its log line per step
        trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    kls = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    final = work / f"trl_{reward}_beta{beta:g}_mu{iterations}" / "final"
    trainer.save_model(str(final))
    return rewards, (times[-1] - times[0]) / (len(times) - 1), final, sum(kls[-5:]) / 5 if beta else None, None


def held_out_reward(model_dir: Path, tok, prompt_ids: list[list[int]], stop: list[int],
                    reward: str) -> tuple[float, float]:
    """(mean reward of 8 sampled answers, of the greedy answer) per held-out prompt, by one function for both."""
    import torch
    from transformers import AutoModelForCausalLM

    from sft.generate import Sampling, generate_ids

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    torch.manual_seed(0)
    sampled = generate_ids(model, tok, [p for p in prompt_ids for _ in range(8)], Sampling(
        max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0), stop=stop)
    greedy = generate_ids(model, tok, prompt_ids, Sampling(max_new_tokens=MAX_NEW, repetition_penalty=1.0), stop=stop)
    function = reward_function(reward)
    score = lambda rows: sum(function(tok.decode(r, skip_special_tokens=True)) for r in rows) / len(rows)
    return score(sampled), score(greedy)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/grpo_quality", help="folder for the tiny model, data and both runs")
    p.add_argument("--beta", type=float, default=0.0, help="KL penalty to the starting model, both runs")
    p.add_argument("--iterations", type=int, nargs="+", default=[1],
                   help="optimizer steps on each batch of answers: a pair of runs (ours, TRL) for each value")
    p.add_argument("--epsilon-high", type=float, default=None, help="upper clip (DAPO: 0.28); default: 0.2")
    p.add_argument("--reward", choices=("zh_share", "zh_mostly"), default="zh_share",
                   help="zh_share: the Han share; zh_mostly: 1 when it is >= 0.8 (pass/fail, groups turn flat)")
    p.add_argument("--dynamic-sampling", type=int, default=0,
                   help="> 0: also our run with this many rounds of dynamic sampling (TRL has none)")
    args = p.parse_args()
    work, beta = Path(args.work), args.beta
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    warnings.filterwarnings("ignore")
    import trl
    from transformers import AutoTokenizer

    from engine.tiny import make_tiny_model, make_tiny_tokenizer
    from sft.config import SFTConfig
    from sft.train_cli import prepare_grpo
    from zhllama.config import load_config

    tok_dir = make_tiny_tokenizer(work / "tok")
    model = make_tiny_model(work / "model", tok_dir, hidden=64, layers=2, heads=4, seed=0)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    cfg = load_config(SFTConfig, REPO / "sft/configs/grpo_tiny_cpu.yaml", [
        f"model.path={model}", f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.25",
        f"data.cache_dir={work / 'cache'}", "grpo.rewards={zh_share: 1.0}", f"grpo.max_new_tokens={MAX_NEW}"])
    _, _, train, held, _, _, objective = prepare_grpo(cfg)  # the very split and prompt ids our run uses
    train_text = [tok.decode(train.prompts[k], skip_special_tokens=True) for k in sorted(set(train.keys))]
    held_ids = [held.prompts[k] for k in held.keys]
    print(f"TRL {trl.__version__}; {len(train_text)} training prompts, {len(held_ids)} held out; {STEPS} steps x "
          f"{PROMPTS} prompts x {GENERATIONS} answers of <= {MAX_NEW} tokens; steps on each batch of answers: "
          f"{', '.join(map(str, args.iterations))}", flush=True)
    start_sampled, start_greedy = held_out_reward(model, tok, held_ids, objective.stop_ids, args.reward)
    columns = []
    for mu in args.iterations:
        runs = [("ours", run_ours(work, model, data, beta, mu, args.epsilon_high, args.reward, 0)),
                ("TRL", run_trl(work, model, tok, train_text, beta, mu, args.epsilon_high, args.reward))]
        if args.dynamic_sampling:
            runs.append((f"ours ds{args.dynamic_sampling}", run_ours(work, model, data, beta, mu, args.epsilon_high,
                                                                     args.reward, args.dynamic_sampling)))
        for name, (curve, step, final, kl, written) in runs:
            # one reward per batch of answers: ours logs each step's (a batch at each of its steps), TRL each batch's
            curve = curve[::mu] if len(curve) == STEPS else curve
            columns.append({"name": f"{name} mu={mu}", "curve": curve, "step": step, "kl": kl, "written": written,
                            "held": held_out_reward(final, tok, held_ids, objective.stop_ids, args.reward)})
    print(f"\n{'':<38}" + "".join(f"{c['name']:>16}" for c in columns))
    rows = [("train reward, first 5 batches of answers", lambda c: sum(c["curve"][:5]) / 5),
            ("train reward, last 5 batches of answers", lambda c: sum(c["curve"][-5:]) / 5),
            (f"held out, 8 sampled (start {start_sampled:.3f})", lambda c: c["held"][0]),
            (f"held out, greedy (start {start_greedy:.3f})", lambda c: c["held"][1]),
            ("seconds per step (after the first)", lambda c: c["step"])]
    if beta:
        rows.append((f"beta {beta:g}: KL per token, last 5 steps", lambda c: c["kl"]))
    if args.dynamic_sampling:
        rows.append(("groups written per group trained on", lambda c: c["written"] or 1.0))
    for label, value in rows:
        print(f"{label:<38}" + "".join(f"{value(c):16.3f}" for c in columns))
    for c in columns:
        print(f"curve of {c['name']} (every 5th batch of answers): " + " ".join(f"{r:.2f}" for r in c["curve"][::5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
