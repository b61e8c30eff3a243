"""Cross-check the GRPO objective (engine/grpo.py) against TRL's GRPOTrainer, on the same answers: the texts the
rewards read, the rewards, the advantages, the loss and its gradient.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/grpo_crosscheck.py --work runs/grpo_crosscheck

Needs ``trl`` in a side venv, set up as benchmarks/dpo_crosscheck.py says (tested: trl 1.16.0, torch 2.13 CPU,
transformers 5.23). Offline, CPU, fp32: a tiny tokenizer and a random tiny LLaMA. Our objective samples the answers
(``GRPOObjective.rollout``: 4 prompts x 4 answers, cut at EOS, some cut at max_new_tokens). TRL gets the very ids
through its ``rollout_func`` hook (so it does not sample its own), then does the rest itself: decodes the answers,
calls the reward functions, computes group advantages and masks (``_generate_and_score_completions``), and
``compute_loss``. The reward is sft/rewards.py's (math against a reference, plus 0.5 x the Han share), given to TRL
as two reward functions with weights [1, 0.5].

Settings, ours -> TRL (``num_iterations=1``, one process, one micro batch):
loss ``token`` -> ``loss_type="bnpo"`` (mean over the batch's answer tokens; DAPO's normaliser is the same number in
one process with one micro batch), ``sequence`` -> ``"grpo"``, ``dr_grpo`` -> ``"dr_grpo"``; ``scale_rewards`` true/false -> ``"group"``/``"none"``;
``mask_truncated`` -> ``mask_truncated_completions``; temperature 1.0 and 0.7 (both divide the logits by it);
``beta`` 0 and 0.5, the KL penalty to a reference model, with ``kl_correction`` (TRL's ``use_bias_correction_kl``,
its default) and without. So that the KL and its gradient are not 0, the policy
is the trained model with its weights shifted by seeded noise: TRL loads its reference from the policy's
``config._name_or_path`` (the model as saved), and ours is a FrozenCopy of the same folder.
Second-pass rows (``grpo.iterations`` 2 -> ``num_iterations=2``): both sides score the answers with the model as
it wrote them (ours keeps the first pass's log-probabilities, TRL computes ``old_per_token_logps``), then the
weights are shifted by seeded noise (as an optimizer step would move them) and the loss of the second pass is
compared: PPO's clipped ratio with ``epsilon``/``epsilon_high`` (DAPO's clip-higher), ``delta`` (two-sided) and
``importance_sampling`` token or sequence (GSPO). The ``clip`` column is the share of answer tokens whose gradient
the clip took away: the rows are meant to clip some, not none and not all.
Exit 1 on a difference beyond float tolerance.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_crosscheck import grads, load, rel_grad_diff  # noqa: E402

QUESTIONS = ["3 加 4 等于几？", "写一个数字。", "12 减 5 是多少？", "说一句中文。"]
REFERENCES = ["7", "5", "7", "好"]
SETTINGS = [("token", True, False, 1.0, 0.0), ("sequence", True, False, 1.0, 0.0), ("token", False, False, 1.0, 0.0),
            ("token", True, True, 1.0, 0.0), ("sequence", True, True, 1.0, 0.0), ("token", True, False, 0.7, 0.0),
            ("sequence", False, False, 0.7, 0.0), ("token", True, False, 1.0, 0.5), ("sequence", True, True, 0.7, 0.5),
            ("token", True, False, 0.7, -0.5), ("dr_grpo", False, False, 1.0, 0.0), ("dr_grpo", False, True, 0.7, 0.5),
            # second passes (iterations 2): the clip's settings
            ("token", True, False, 1.0, 0.0, {"epsilon": 0.2}),
            ("sequence", True, False, 0.7, 0.0, {"epsilon": 0.2, "epsilon_high": 0.28}),
            ("token", False, True, 1.0, 0.5, {"epsilon": 0.2, "epsilon_high": 0.28}),
            ("token", True, False, 1.0, 0.0, {"epsilon": 0.1, "delta": 1.3}),
            ("sequence", True, False, 1.0, 0.0, {"epsilon": 3e-3, "epsilon_high": 4e-3, "importance_sampling": "sequence"}),
            ("dr_grpo", False, False, 1.0, -0.5, {"epsilon": 0.2, "importance_sampling": "sequence"}),
            # only the highest-entropy fifth of the answer tokens trains (first pass; a second with beta)
            ("token", True, True, 0.7, 0.0, {"top_entropy_quantile": 0.2}),
            ("sequence", True, False, 1.0, 0.5, {"epsilon": 0.2, "top_entropy_quantile": 0.5})]
# beta < 0 above: |beta| without the KL's bias correction
TRL_LOSS = {"token": "bnpo", "sequence": "grpo", "dr_grpo": "dr_grpo"}
GENERATIONS, MAX_NEW = 4, 10
ABS_TOL, REL_TOL = 1e-5, 1e-4


class Engine:
    """What the objective calls on a DeepSpeed engine, over a bare model (train/eval, ``module``, forward)."""

    def __init__(self, model):
        self.module = model

    def __call__(self, **inputs):
        return self.module(**inputs)

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()


def short_answer_model(work: Path, tok_dir: Path, tok, spec) -> Path:
    """A random tiny LLaMA after a few SFT steps on short answers: some of its samples end at EOS within
    MAX_NEW tokens, others are cut there, so both kinds of answer are compared."""
    import torch

    from engine.tiny import make_tiny_model
    from sft.collate import SFTCollator
    from sft.data import Conversation, Turn
    from sft.templates import encode_conversation

    folder = make_tiny_model(work / "model", tok_dir, hidden=64, layers=2, heads=4, seed=0)
    model = load(folder).train()
    rows = [encode_conversation(Conversation((Turn(q, a),)), tok, spec) for q, a in zip(QUESTIONS, REFERENCES)]
    batch = SFTCollator(0)([{"input_ids": torch.tensor(i), "labels": torch.tensor(l)} for i, l in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(14):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(folder))
    return folder


def shift(model, seed: int = 11, scale: float = 0.05):
    """Seeded noise on every weight, in place: a policy that is not the model as saved (beta rows), or the model
    after an optimizer step (second passes)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def shifted(model_dir):
    """The policy of the first-pass beta rows: the model with seeded noise on its weights (its name still the
    folder's, from which TRL loads the reference)."""
    return shift(load(model_dir))


CLIP_KEYS = ("epsilon", "epsilon_high", "delta", "importance_sampling")


def split(setting):
    """(kind, scale, mask_truncated, temperature, signed beta), and the row's options: a clip's settings make the
    row a second pass; ``top_entropy_quantile`` applies to either pass."""
    return setting[:5], (setting[5] if len(setting) > 5 else {})


def second_pass(options: dict) -> bool:
    return any(key in options for key in CLIP_KEYS)


def our_objective(tok, kind, scale, mask_truncated, temperature, beta=0.0, reference=None, kl_correction=True,
                  options=None):
    from engine.grpo import GRPOObjective
    from engine.grpo_clip import Clip
    from sft.rewards import RewardModel
    from sft.templates import make_spec, pad_token_id, stop_ids

    spec = make_spec("chinese-alpaca-2", tok)
    reward = RewardModel({"math": 1.0, "zh_share": 0.5}, REFERENCES, [{}] * len(REFERENCES))
    return spec, GRPOObjective(reward=reward, decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
                               stop_ids=stop_ids(tok, spec), pad_id=pad_token_id(tok), generations=GENERATIONS,
                               max_new_tokens=MAX_NEW, temperature=temperature, scale_rewards=scale, loss_kind=kind,
                               mask_truncated=mask_truncated, seed=3, beta=beta, reference=reference,
                               kl_correction=kl_correction, iterations=2 if second_pass(options or {}) else 1,
                               top_entropy_quantile=(options or {}).get("top_entropy_quantile", 1.0),
                               clip=Clip(**{"importance": "token", **{("importance" if k == "importance_sampling"
                                                                        else k): v for k, v in (options or {}).items()
                                                                       if k in CLIP_KEYS}}))


def run_ours(model_dir, tok, batch, setting) -> dict:
    import torch

    from engine.grpo import _SUMS
    from engine.loss import install_fused_head

    from engine.grpo_reference import FrozenCopy

    setting, options = split(setting)
    second = second_pass(options)
    beta = abs(setting[-1])
    model = shifted(model_dir) if beta and not second else load(model_dir)
    install_fused_head(model, chunk_tokens=7)  # the engine's default path (model.fused_loss), in several chunks
    engine = Engine(model)
    engine.train()
    reference = FrozenCopy(lambda ds_config: (load(model_dir), None)) if beta else None
    _, objective = our_objective(tok, *setting[:-1], beta=beta, reference=reference, kl_correction=setting[-1] >= 0,
                                 options=options)
    if beta:
        reference.build(engine)
    objective.begin_step(0)
    rollout = objective.rollout(engine, dict(batch), torch.device("cpu"))
    objective.rollout = lambda *_: rollout  # the loss on these very answers
    objective.begin_step(0)
    total, count = objective.loss(engine, dict(batch), torch.device("cpu"))
    if second:  # the first pass kept the answers' log-probabilities; the second trains the moved policy on them
        model.zero_grad()
        shift(model, seed=5)
        objective.begin_step(1)
        objective._window = None  # the first pass's sums: the clipped share below is the second's
        total, count = objective.loss(engine, dict(batch), torch.device("cpu"))
    (total / count).backward()
    sums = dict(zip(_SUMS, objective._window.tolist()))  # what train/clipped would log (no process group here)
    clipped = sums["clipped"] / max(sums["loss_tokens"], 1)
    return {"rollout": rollout, "loss": (total / count).item(), "grads": grads(model), "clipped": clipped}


def trl_inputs(rollout) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids up to and including the stop id) of every answer, in our order."""
    out = []
    for ids, labels, mask in zip(rollout.batch["input_ids"], rollout.batch["labels"], rollout.batch["attention_mask"]):
        n = int(mask.sum())
        start = int((labels[:n] != -100).int().argmax())
        out.append((ids[:start].tolist(), ids[start:n].tolist()))
    return out


def run_trl(model_dir, tok, rows, setting, work: Path) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from sft.rewards import math_reward, zh_share_reward

    (kind, scale, mask_truncated, temperature, signed_beta), options = split(setting)
    second = second_pass(options)
    beta = abs(signed_beta)
    seen: list[str] = []

    def math(completions, reference, **_):
        seen.extend(completions)
        return [math_reward(c, r) for c, r in zip(completions, reference)]

    def zh(completions, **_):
        return [zh_share_reward(c) for c in completions]

    def rollout_func(prompts, trainer):  # hand TRL our answers instead of sampling
        return {"prompt_ids": [p for p, _ in rows], "completion_ids": [c for _, c in rows], "logprobs": None}

    cfg = GRPOConfig(output_dir=str(work / "trl"), loss_type=TRL_LOSS[kind], beta=beta,
                     use_bias_correction_kl=signed_beta >= 0,
                     scale_rewards="group" if scale else "none", mask_truncated_completions=mask_truncated,
                     temperature=temperature, num_generations=GENERATIONS, max_completion_length=MAX_NEW,
                     per_device_train_batch_size=len(rows), reward_weights=[1.0, 0.5], use_cpu=True, bf16=False,
                     report_to="none", log_completions=False, num_iterations=2 if second else 1,
                     **{("importance_sampling_level" if k == "importance_sampling" else k): v
                        for k, v in options.items()})
    text = Dataset.from_list([{"prompt": q, "reference": r} for q, r in zip(QUESTIONS, REFERENCES)])
    policy = shifted(model_dir) if beta and not second else load(model_dir)
    trainer = GRPOTrainer(policy, reward_funcs=[math, zh], args=cfg, train_dataset=text,
                          processing_class=tok, rollout_func=rollout_func)
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which is not run
    batch = [text[i // GENERATIONS] for i in range(len(rows))]
    inputs = trainer._generate_and_score_completions(batch)
    if second:
        assert inputs.get("old_per_token_logps") is not None  # num_iterations=2: TRL keeps the writer's
        shift(model, seed=5)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return {"loss": loss.item(), "advantages": inputs["advantages"], "grads": grads(model), "texts": seen}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/grpo_crosscheck", help="folder for the tiny tokenizer and model")
    work = Path(p.parse_args().work)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    warnings.filterwarnings("ignore")
    import torch
    import trl
    from transformers import AutoTokenizer

    from engine.tiny import DEFAULT_TEXT, make_tiny_tokenizer
    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt, make_spec

    start = time.time()
    tok_dir = make_tiny_tokenizer(work / "tok", DEFAULT_TEXT + QUESTIONS * 5)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    spec = make_spec("chinese-alpaca-2", tok)
    model_dir = short_answer_model(work, tok_dir, tok, spec)
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS]
    batch = PromptCollator(0)([PromptDataset(prompts, list(range(len(prompts))))[i] for i in range(len(prompts))])
    print(f"TRL {trl.__version__}, torch {torch.__version__}; {len(QUESTIONS)} prompts x {GENERATIONS} answers; "
          f"tolerances {ABS_TOL} abs, {REL_TOL} rel\n"
          f"loss      scale  mask-cut  temp  beta    options (a clip: a second pass)      TRL loss_type  cut  texts  clip  "
          f"|dadvantage|   |dloss|  grad rel")
    failed = 0
    for setting in SETTINGS:
        ours = run_ours(model_dir, tok, batch, setting)
        rollout = ours["rollout"]
        theirs = run_trl(model_dir, tok, trl_inputs(rollout), setting, work)
        ours_texts = [tok.decode(c[:-1] if not cut else c, skip_special_tokens=True)
                      for (_, c), cut in zip(trl_inputs(rollout), rollout.truncated.tolist())]
        texts_ok = ours_texts == theirs["texts"]
        d_adv = float((rollout.advantages - theirs["advantages"].float()).abs().max())
        d_loss = abs(ours["loss"] - theirs["loss"])
        grad = rel_grad_diff(ours["grads"], theirs["grads"])
        ok = texts_ok and max(d_adv, d_loss) <= ABS_TOL and grad <= REL_TOL
        failed += not ok
        (kind, scale, cut, temperature, beta), options = split(setting)
        shown = f"{abs(beta):g}" + ("" if beta >= 0 else " k3")  # k3: without the KL's bias correction
        names = {"importance_sampling": "is", "top_entropy_quantile": "top-H"}
        clip = ", ".join(f"{names.get(k, k)} {v:g}" if not isinstance(v, str) else f"{v}"
                         for k, v in options.items()) or "-"
        print(f"{kind:<9} {str(scale):<6} {str(cut):<9} {temperature:<5} {shown:<7} {clip:<36} "
              f"{TRL_LOSS[kind]:<14} "
              f"{int(rollout.truncated.sum()):>3} {'same' if texts_ok else 'DIFF':>6} {ours['clipped']:5.2f} {d_adv:12.1e} "
              f"{d_loss:10.1e} {grad:9.1e} {'ok' if ok else 'DIFFERS'}", flush=True)
    print(f"{failed} of {len(SETTINGS)} settings differ; {time.time() - start:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
