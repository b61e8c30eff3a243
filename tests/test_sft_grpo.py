"""GRPO (`objective: grpo`): rewards read the answers as their definitions say, every bad record and
setting is reported at once, advantages and the loss's gradient equal a direct computation, rollouts are
the model's own samples cut at the stop id, and real runs: 2 ranks ZeRO-3 where the reward rises, one
rank where a resume writes the very answers again and ends as the uninterrupted run."""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from engine.grpo import _SUMS
from helpers_dist import REPO, sft_train, torchrun_launch
from helpers_sft import bare_engine, load_tokenizer, read_metrics, tiny_model, tiny_tokenizer, write_jsonl

from zhllama.errors import UserError

CONFIG = REPO / "sft" / "configs" / "grpo_tiny_cpu.yaml"
QUESTIONS = ["说一句话。", "写一个词。", "随便说点什么。", "请回答。", "讲个故事。", "你好吗？",
             "今天天气如何？", "介绍一下自己。", "用一句话描述春天。", "说说你的爱好。", "推荐一本书。",
             "描述一下大海。"]


# ---------------------------------------------------------------- rewards
@pytest.mark.parametrize("reference, want", [
    ("72", Fraction(72)), ("她一共卖了 48+24=72 个。\n#### 72", Fraction(72)),
    ("答案是 \\boxed{\\frac{1}{2}}", Fraction(1, 2)),
    ("所以是 \\boxed{3/4}。", Fraction(3, 4)), ("共 1,200 元", Fraction(1200)), ("－5", Fraction(-5)),
    ("１２", Fraction(12)), ("先算 3 个，再算 0.5", Fraction(1, 2))])
def test_the_reference_number_is_found_where_datasets_put_it(reference, want):
    from sft.rewards import reference_number

    assert reference_number(reference) == want


def test_the_math_reward_compares_the_answers_number_exactly():
    from sft.rewards import math_reward

    assert math_reward("3 加 4 等于 7，所以答案是 7。", "7") == 1.0
    assert math_reward("答案：1200 元，比 100 多", "1,200") == 1.0  # the number after 答案, not the last one
    assert math_reward("设 x=2，最后 \\boxed{0.75}，验算 3", "#### 3/4") == 1.0  # boxed wins
    assert math_reward("算得 7.0", "7") == 1.0 and math_reward("算得 8", "7") == 0.0
    assert math_reward("没有数字", "7") == 0.0 and math_reward("7", "没有数字") == 0.0


def test_the_other_built_in_rewards():
    from sft.rewards import choice_reward, contains_reward, exact_reward, zh_share_reward

    assert exact_reward(" 北京。", "北京") == 1.0 and exact_reward("ＡＢＣ", "ABC") == 1.0
    assert exact_reward("北京市", "北京") == 0.0
    assert contains_reward("首都是北京。", "北京") == 1.0 and contains_reward("上海", "北京") == 0.0
    assert choice_reward("答案是 B，因为 A 不对", "B") == 1.0 and choice_reward("Because A", "B") == 0.0
    assert choice_reward("I think C", "c") == 1.0  # "I" is a word here, not an option
    assert choice_reward("A 和 B 都不对，答案：D", "D") == 1.0 and choice_reward("选 I", "I") == 1.0
    assert zh_share_reward("中文abc") == pytest.approx(2 / 5) and zh_share_reward("123，。") == 0.0
    assert zh_share_reward("全是中文。") == 1.0


def test_the_think_format_reward_and_answers_after_the_reasoning():
    from sft.rewards import RewardModel, think_reward

    assert think_reward("<think>先算 3+4=7，再减 1。</think>答案是 6。") == 1.0
    assert think_reward("\n<think>\n想一想\n</think>\n\n6") == 1.0
    for bad in ("答案是 6", "<think>没有结束 6", "<think>a</think>", "<think>a</think><think>b</think>6",
                "<think><think>a</think>6"):
        assert think_reward(bad) == 0.0, bad
    model = RewardModel({"math": 1.0, "think": 0.5, "exact": 1.0}, ["6"], [{}])
    # the reasoning's numbers and words do not count: only the answer after </think> is compared
    assert model([0], ["<think>7 不对，6 对</think>6"]) == [1.0 + 0.5 + 1.0]
    assert model([0], ["<think>答案是 6</think>7"]) == [0.5]


def test_rewards_are_weighted_and_custom_ones_imported(tmp_path, monkeypatch):
    from sft.rewards import RewardModel

    (tmp_path / "my_rewards.py").write_text("def short(completion, record):\n"
                                            "    return float(len(completion) <= record['limit'])\n"
                                            "def broken(completion, record):\n    return 'yes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = RewardModel({"math": 1.0, "zh_share": 0.5, "my_rewards:short": -2.0}, ["7", "3"],
                        [{"limit": 3}, {"limit": 100}])
    assert model([0, 1, 0], ["答案7", "答案是 4", "seven"]) == [1 + 0.5 * 1.0 - 2.0, 0.5 * 1.0 - 2.0, 0.0]
    with pytest.raises(UserError, match="a reward must be a finite number"):
        RewardModel({"my_rewards:broken": 1.0}, [None], [{}])([0], ["x"])
    with pytest.raises(UserError, match="cannot be imported"):
        RewardModel({"my_rewards:missing": 1.0}, [None], [{}])


# ---------------------------------------------------------------- records and settings
def test_all_bad_records_and_settings_are_reported_before_anything_runs(tmp_path):
    from sft.config import SFTConfig
    from sft.train_cli import prepare
    from zhllama.config import load_config

    bad = [
        {"prompt": "1+1=?"},  # no reference for the math reward
        {"prompt": "1+1=?", "answer": ["2"]},
        {"prompt": "1+1=?", "answer": " "},
        {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}], "answer": "2"},
        {"answer": "2"},  # no prompt
        {"instruction": "1+1=?", "output": "1+1=2，答案 2"},  # fine: a worked solution as the reference
        {"prompt": [{"role": "user", "content": "2+2=?"}], "answer": 4},  # fine
    ]
    data = write_jsonl(tmp_path / "math.jsonl", bad)
    cfg = load_config(SFTConfig, CONFIG, [f"model.path={tmp_path / 'none'}", f"data.files=[{{path: '{data}'}}]"])
    with pytest.raises(UserError) as err:
        prepare(cfg)
    text = str(err.value)
    for line, what in [(1, "missing `answer` (or `output`)"), (2, "`answer` must be a string or a number"),
                       (3, "`answer` is empty"), (4, "the prompt must end with the user's turn"),
                       (5, "missing `instruction`")]:
        reported = [entry for entry in text.splitlines() if f"line {line} (record {line}): " in entry]
        assert len(reported) == 1 and what in reported[0], text
    assert "line 6" not in text and "line 7" not in text and "malformed GRPO prompts" in text
    with pytest.raises(UserError) as err:
        load_config(SFTConfig, CONFIG, ["grpo.rewards={maths: 1, zh_share: 0}", "grpo.generations=1",
                                        "grpo.loss=mean", "grpo.top_p=0", "grpo.max_new_tokens=300",
                                        "data.packing=true", "mode=embeddings", "grpo.beta=-0.1",
                                        "model.neftune_alpha=5", "grpo.iterations=0", "grpo.epsilon=1.5",
                                        "grpo.epsilon_high=0.1", "grpo.delta=1.05", "grpo.importance_sampling=seq",
                                        "grpo.dynamic_sampling=-1", "grpo.overlong_buffer=300",
                                        "grpo.overlong_penalty=0", "grpo.top_entropy_quantile=0",
                                        "grpo.ref_sync_steps=2", "grpo.ref_sync_alpha=0"])
    for what in ("'maths' is neither built in", "rewards.zh_share: the weight must be a non-zero number",
                 "generations: must be >= 2", "grpo.loss: expected one of ['token', 'sequence', 'dr_grpo']", "grpo.top_p",
                 "grpo.beta: expected a value in [0, 10]", "model.neftune_alpha: not with objective=grpo",
                 "max_new_tokens: 300 leaves no room", "data.packing: not with objective=grpo", "mode: embeddings",
                 "grpo.iterations: expected 1 to 64", "grpo.epsilon: expected a value in (0, 1)",
                 "grpo.delta: must exceed 1 + epsilon_high = 1.1", "grpo.importance_sampling: expected one of",
                 "grpo.dynamic_sampling: expected 0 (off) to 16", "grpo.overlong_buffer: expected 0 (off) to "
                 "max_new_tokens - 1 = 299", "grpo.overlong_penalty: expected a value in (0, 10]",
                 "grpo.top_entropy_quantile: expected a share in (0, 1]",
                 "alpha in (0, 1], got 2 / 0.0", "grpo.ref_sync_steps: with mode=full only"):
        assert what in str(err.value), str(err.value)


def test_prompts_are_held_out_repeated_and_cut_by_length(tmp_path):
    from sft.config import SFTConfig
    from sft.train_cli import prepare_grpo
    from zhllama.config import load_config

    model = tiny_model(tmp_path / "model", tiny_tokenizer(tmp_path / "tok"))
    records = [{"prompt": q, "answer": str(i)} for i, q in enumerate(QUESTIONS)]
    records.append({"prompt": "长" * 400, "answer": "1"})  # longer than max_seq_length - max_new_tokens
    data = write_jsonl(tmp_path / "p.jsonl", records)
    cfg = load_config(SFTConfig, CONFIG, [f"model.path={model}", f"data.files=[{{path: '{data}', weight: 2.0}}]",
                                          "data.eval_fraction=0.25"])
    _, _, train, held, report, collate, objective = prepare_grpo(cfg)
    assert report.files["p.jsonl"]["prompts_too_long"] == 1
    assert len(train) == 2 * (len(QUESTIONS) - len(held)) and 0 < len(held) < len(QUESTIONS)
    assert not set(train.keys) & set(held.keys)
    batch = collate([train[i] for i in range(3)])
    assert (batch["attention_mask"][:, -1] == 1).all()  # left-padded: generation appends on the right
    answers = [objective.reward.references[k] for k in batch["prompt_keys"].tolist()]
    tok = load_tokenizer(tmp_path / "tok")
    for row, mask, answer in zip(batch["input_ids"], batch["attention_mask"], answers):
        assert QUESTIONS[int(answer)] in tok.decode(row[mask == 1], skip_special_tokens=True)


# ---------------------------------------------------------------- advantages, rollouts and the loss
def test_advantages_are_rewards_against_their_group():
    from engine.grpo_sampling import group_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 3.0])
    got = group_advantages(rewards, 4, scale=True)
    for group in range(3):
        r = rewards[4 * group:4 * group + 4].double()
        want = (r - r.mean()) / (r.std() + 1e-4)
        torch.testing.assert_close(got[4 * group:4 * group + 4].double(), want, rtol=0, atol=1e-6)
    assert (got[4:8] == 0).all()  # every answer equally good: no signal
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False)[8:], torch.tensor([-0.75] * 3 + [2.25]))


def _objective(tok, references, **settings):
    from engine.grpo import GRPOObjective
    from sft.rewards import RewardModel
    from sft.templates import make_spec, pad_token_id, stop_ids

    spec = make_spec("chinese-alpaca-2", tok)
    return spec, GRPOObjective(reward=RewardModel({"zh_share": 1.0}, references, [{}] * len(references)),
                               decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
                               stop_ids=stop_ids(tok, spec), pad_id=pad_token_id(tok), **settings)


@pytest.mark.parametrize("kind, temperature, fused, beta, correction, top", [
    ("token", 1.0, False, 0.0, True, 1.0), ("sequence", 0.7, True, 0.0, True, 1.0), ("token", 0.7, True, 0.0, True, 1.0),
    ("token", 1.0, False, 0.3, True, 1.0), ("sequence", 0.7, True, 0.3, True, 1.0), ("token", 0.7, True, 0.3, False, 1.0),
    ("dr_grpo", 1.0, True, 0.3, True, 1.0), ("token", 0.7, True, 0.3, True, 0.3), ("sequence", 1.0, False, 0.0, True, 0.5)])
def test_rollouts_are_the_models_samples_and_the_gradient_is_advantage_times_log_prob(tmp_path, kind, temperature,
                                                                                      fused, beta, correction, top):
    """The gradient of the sampling distribution's log-probabilities (logits / temperature), by the plain and
    the chunked (fused head) path; with beta, plus beta x the per-token KL to a reference model (another one
    here, so that the KL and its gradient are not 0); with top < 1, the policy term of the highest-entropy
    tokens only (the KL of all)."""
    from transformers import AutoModelForCausalLM

    from engine.grpo_sampling import group_advantages
    from engine.loss import install_fused_head
    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "model", tok_dir)), dtype=torch.float32)
    if fused:
        install_fused_head(model, chunk_tokens=5)
    from engine.grpo_reference import FrozenCopy

    other = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "reference", tok_dir, seed=3)),
                                                 dtype=torch.float32)
    reference = FrozenCopy(lambda ds_config: (other, None)) if beta else None
    spec, objective = _objective(tok, [None] * 3, generations=4, max_new_tokens=12, loss_kind=kind, seed=7,
                                 temperature=temperature, beta=beta, reference=reference, kl_correction=correction,
                                 top_entropy_quantile=top)
    if beta:
        reference.build(bare_engine(model))
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS[:3]]
    batch = PromptCollator(0)([PromptDataset(prompts, [0, 1, 2])[i] for i in range(3)])
    engine = bare_engine(model).train()
    objective.begin_step(5)
    rollout = objective.rollout(engine, dict(batch), torch.device("cpu"))
    objective.begin_step(5)
    assert torch.equal(objective.rollout(engine, dict(batch), torch.device("cpu")).batch["input_ids"],
                       rollout.batch["input_ids"])  # seeded by the step: a resume writes the same answers
    objective.begin_step(6)
    assert not torch.equal(objective.rollout(engine, dict(batch), torch.device("cpu")).batch["input_ids"],
                           rollout.batch["input_ids"])
    assert engine.training  # sampled in eval mode, training mode restored
    rows = rollout.batch
    stops = set(objective.stop_ids)
    for r in range(12):
        prompt = prompts[r // 4]
        n = int(rows["attention_mask"][r].sum())
        assert rows["input_ids"][r, :len(prompt)].tolist() == prompt
        answer = rows["input_ids"][r, len(prompt):n].tolist()
        assert answer == rows["labels"][r, len(prompt):n].tolist() and (rows["labels"][r, :len(prompt)] == -100).all()
        assert len(answer) == int(rollout.answer_tokens[r])
        ended = [k for k, token in enumerate(answer) if token in stops]
        assert ended == ([len(answer) - 1] if not rollout.truncated[r] else []), answer  # cut at the first stop
        text = tok.decode(answer[:-1] if ended else answer, skip_special_tokens=True)
        assert rollout.rewards[r] == pytest.approx(objective.reward.score(0, text))
    torch.testing.assert_close(rollout.advantages, group_advantages(rollout.rewards, 4, True))

    # the objective's gradient against a direct computation on the full logits, for the same answers
    objective.rollout = lambda engine, batch, device: rollout
    model.zero_grad()
    loss_sum, count = objective.loss(engine, dict(batch), torch.device("cpu"))
    (loss_sum / count).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits[:, :-1].float()
    logits = logits / temperature
    labels = rows["labels"][:, 1:]
    token_logps = logits.log_softmax(-1).gather(2, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)
    with torch.no_grad():
        log_probs = logits.log_softmax(-1)
        entropies = -(log_probs.exp() * log_probs).sum(-1)
        threshold = torch.quantile(entropies[labels != -100], 1 - top)
        forking = (entropies >= threshold) & (labels != -100)  # the tokens whose policy term trains
    assert top == 1.0 or 0 < int(forking.sum()) < int((labels != -100).sum())
    per_answer = (token_logps * forking).sum(1)
    tokens = (labels != -100).sum(1)
    with torch.no_grad():
        ref_logits = other(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits[:, :-1].float()
        ref_logps = (ref_logits / temperature).log_softmax(-1).gather(2, labels.clamp(min=0)[..., None]).squeeze(-1)
    gap = ref_logps - token_logps
    k3 = torch.exp(gap) - gap - 1  # with the correction, its gradient gains k3 x grad(log pi): the KL's own
    terms = k3 + k3.detach() * (token_logps - token_logps.detach()) if correction else k3
    kl = (terms * (labels != -100)).sum(1)  # per answer, summed over its tokens
    if kind == "token":
        direct = (-(rollout.advantages * per_answer).sum() + beta * kl.sum()) / tokens.sum()
    elif kind == "dr_grpo":  # every answer as if max_new_tokens long
        direct = (-(rollout.advantages * per_answer).sum() + beta * kl.sum()) / (12 * 12)
    else:
        direct = (-(rollout.advantages * per_answer / tokens) + beta * kl / tokens).sum() / len(tokens)
    direct.backward()
    if beta:
        assert float(kl.detach().sum()) > 1e-3  # another model: a KL whose gradient counts
    assert int(count) == {"token": int(tokens.sum()), "sequence": 12, "dr_grpo": 12 * 12}[kind]
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
    assert any(float(g.abs().max()) > 0 for g in got.values())
    entropy = (entropies * (labels != -100)).sum()  # train/entropy: summed over the answer tokens
    assert dict(zip(_SUMS, objective._window.tolist()))["entropy"] == pytest.approx(float(entropy), rel=1e-5)


@pytest.mark.parametrize("importance, clip, beta", [
    ("token", {"epsilon": 0.2}, 0.0), ("token", {"epsilon": 0.1, "epsilon_high": 0.28, "delta": 1.3}, 0.3),
    ("sequence", {"epsilon": 3e-3, "epsilon_high": 4e-3}, 0.0)])
def test_a_second_pass_weights_each_token_by_its_clipped_ratio_to_the_policy_that_wrote_it(tmp_path, importance,
                                                                                           clip, beta):
    """iterations=2: the answers (and their log-probabilities when written, and the reference's) are kept from
    the first pass; after the weights moved, the gradient is PPO's clipped surrogate's, by a direct computation."""
    from transformers import AutoModelForCausalLM

    from engine.grpo_clip import Clip
    from engine.grpo_reference import FrozenCopy
    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    folder = tiny_model(tmp_path / "model", tok_dir)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    start = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    reference = FrozenCopy(lambda ds_config: (start, None)) if beta else None
    spec, objective = _objective(tok, [None] * 3, generations=4, max_new_tokens=12, seed=7, beta=beta,
                                 reference=reference, iterations=2, clip=Clip(**clip, importance=importance))
    engine = bare_engine(model).train()
    if beta:
        reference.build(engine)
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS[:3]]
    batch = PromptCollator(0)([PromptDataset(prompts, [0, 1, 2])[i] for i in range(3)])
    objective.begin_step(4)
    objective.loss(engine, dict(batch), torch.device("cpu"))  # first pass: writes and keeps the answers
    rows = objective._kept[0].batch
    labels = rows["labels"][:, 1:]
    mask = labels != -100

    def token_logps(net):
        logits = net(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits[:, :-1].float()
        return logits.log_softmax(-1).gather(2, labels.clamp(min=0)[..., None]).squeeze(-1)

    with torch.no_grad():
        old = token_logps(model)
        generator = torch.Generator().manual_seed(5)  # the weights move, as an optimizer step moves them
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    objective.begin_step(5)
    objective._window = None
    model.zero_grad()
    loss_sum, count = objective.loss(engine, dict(batch), torch.device("cpu"))  # the kept answers, not new ones
    (loss_sum / count).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    new = token_logps(model)
    log_ratio = (new - old) * mask
    if importance == "sequence":  # the answer's mean log-ratio, for each of its tokens
        log_ratio = (log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True)).expand_as(log_ratio)
    ratio = torch.exp(log_ratio)
    advantages = objective._kept[0].advantages[:, None]
    high = clip.get("epsilon_high", clip["epsilon"])
    capped = ratio.clamp(max=clip.get("delta", float("inf")))
    term = -torch.min(capped * advantages, ratio.clamp(1 - clip["epsilon"], 1 + high) * advantages)
    if beta:
        with torch.no_grad():
            gap = token_logps(start) - new.detach()
        gap = gap + new.detach() - new  # ref - pi, with pi's gradient
        term = term + beta * (torch.exp(gap) - gap - 1) * ratio
    direct = (term * mask).sum() / mask.sum()
    direct.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-4, atol=1e-7, msg=name)
    sums = dict(zip(_SUMS, objective._window.tolist()))
    clipped = ((ratio < 1 - clip["epsilon"]) & (advantages < 0)) | ((ratio > 1 + high) & (advantages > 0))
    assert sums["clipped"] == int((clipped & mask).sum()) and 0 < sums["clipped"] < sums["loss_tokens"]
    assert sums["answers"] == 12  # the kept answers' rewards count again: the answers trained on at this step


def test_the_answers_kept_between_passes_go_into_checkpoints_and_come_back(tmp_path):
    from engine.grpo_sampling import Rollout

    _, objective = _objective(load_tokenizer(tiny_tokenizer(tmp_path / "tok")), [None], generations=2, iterations=3)
    kept = Rollout({"input_ids": torch.ones(2, 3)}, torch.ones(2), torch.zeros(2), torch.ones(2), torch.zeros(2),
                   torch.tensor([4]), torch.zeros(3), None)
    objective.begin_step(6)
    objective._kept = {0: kept}
    assert objective.checkpoint_state(9) is None  # a group's first step writes its answers anew
    state = objective.checkpoint_state(7)
    assert state["group_start"] == 6 and objective.checkpoint_state(8)["group_start"] == 6
    _, resumed = _objective(load_tokenizer(tmp_path / "tok"), [None], generations=2, iterations=3)
    resumed.restore(state, 8, "checkpoint X")
    assert torch.equal(resumed._kept[0].prompt_keys, kept.prompt_keys) and resumed._kept[0].ref_logps is None
    resumed.restore(None, 9, "checkpoint X")  # nothing kept is needed there
    for bad in (None, {**state, "group_start": 3}):
        with pytest.raises(UserError, match=r"checkpoint X: step 8 trains again on the answers written at step 6 "
                                            r"\(grpo.iterations=3\), and the checkpoint does not hold them"):
            resumed.restore(bad, 8, "checkpoint X")
    resumed.begin_step(7)
    with pytest.raises(RuntimeError, match="the answers written at step 6 are to other prompts"):
        resumed._rollout_of(None, {"prompt_keys": torch.tensor([5])}, torch.device("cpu"))


def test_the_judge_reward_is_the_graded_rubric_of_evaluation_judge_asked_once_per_answer(tmp_path, capsys):
    """An LLM judge (a fake server: an answer holding the reference scores 9, else 3) grades each answer with the
    question, its input, the reference and the record's class criterion; (grade - 1) / 9 is the reward; a reply
    without a grade scores 0 with a warning; the replies are kept, so the same answers are not asked twice."""
    from helpers_judge import block, serve_fake_judge

    from sft.data import Conversation, Turn
    from sft.reward_judge import JudgeReward
    from sft.rewards import RewardModel, zh_share_reward
    from zhllama.openai_client import Endpoint

    conversations = [Conversation((Turn("3+4=?", None),)), Conversation((Turn("翻译", None, "hello"),))]
    references, records = ["7", None], [{"class": "math"}, {"class": "generation"}]
    with serve_fake_judge() as fake:
        judge = JudgeReward(Endpoint(fake.url, "judge-model"), conversations, references, records,
                            tmp_path / "calls.jsonl", workers=4, max_tokens=64)
        model = RewardModel({"judge": 1.0, "zh_share": 0.5}, references, records, judge)
        answers = ["<think>3+4</think>答案是 7", "答案是 8", "你好", "UNREADABLE"]
        got = model([0, 0, 1, 1], answers)
        zh = [zh_share_reward(a) for a in answers]
        assert got == pytest.approx([g + 0.5 * z for g, z in zip([8 / 9, 2 / 9, 2 / 9, 0.0], zh)])
        asked = [r["body"] for r in fake.requests]
        assert len(asked) == 4 and all(r["model"] == "judge-model" and r["temperature"] == 0.0 for r in asked)
        texts = {block(r["messages"][-1]["content"], "助手的回答"): r["messages"][-1]["content"] for r in asked}
        assert "答案是 7" in texts and "<think>" not in "".join(texts)  # the answer after the reasoning
        assert block(texts["答案是 7"], "问题") == "3+4=?" and block(texts["答案是 7"], "参考答案") == "7"
        assert "最终结果是否正确最重要" in texts["答案是 7"]  # BELLE's math criterion: the reference decides
        assert block(texts["你好"], "输入") == "hello" and "[参考答案]" not in texts["你好"]
        assert "1 of 4 replies had no 评分 line" in capsys.readouterr().err
        assert model([0, 1], ["答案是 8", "你好"]) == pytest.approx([2 / 9 + 0.5, 2 / 9 + 0.5])
        assert len(fake.requests) == 4  # already graded: read back from the kept replies
    with pytest.raises(UserError, match="judge needs grpo.judge.url"):
        RewardModel({"judge": 1.0}, references, records)


def test_overlong_answers_lose_reward_linearly_in_the_buffer_before_max_new_tokens():
    from engine.grpo_sampling import overlong_shaping

    lengths = torch.tensor([3, 12, 13, 14, 16])
    torch.testing.assert_close(overlong_shaping(lengths, 16, 4, 0.5), torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5]))
    assert not overlong_shaping(lengths, 16, 0, 1.0).any()


def test_dynamic_sampling_replaces_groups_that_all_scored_the_same_with_groups_for_drawn_prompts(tmp_path):
    """Prompts 0 and 1 always score 1 (their groups teach nothing); the others score by answer length. Their
    groups give way, in place, to groups written for prompts drawn (seeded) from the training set; the rows
    trained on are those groups' prompts and answers, scored by the same reward, shaped by length."""
    from transformers import AutoModelForCausalLM

    from engine.grpo_sampling import group_advantages
    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "model", tok_dir)), dtype=torch.float32)
    spec, objective = _objective(tok, [None] * len(QUESTIONS), generations=4, max_new_tokens=12, seed=7,
                                 dynamic_sampling=3, overlong_buffer=4)
    objective.reward = lambda keys, texts: [1.0 if k < 2 else 0.1 * len(t) for k, t in zip(keys, texts)]
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS]
    train = PromptDataset(prompts, list(range(len(QUESTIONS))))
    objective._prompts = (train, PromptCollator(0))
    batch = PromptCollator(0)([train[i] for i in (0, 5, 1)])
    engine = bare_engine(model).train()
    objective.begin_step(3)
    rollout = objective.rollout(engine, dict(batch), torch.device("cpu"))
    objective.begin_step(3)
    again = objective.rollout(engine, dict(batch), torch.device("cpu"))
    assert torch.equal(again.batch["input_ids"], rollout.batch["input_ids"])  # drawn and written by the seed
    keys = [QUESTIONS.index(next(q for q in QUESTIONS if q in tok.decode(rollout.batch["input_ids"][r],
                                                                          skip_special_tokens=True)))
            for r in range(0, 12, 4)]
    assert keys[1] == 5 and keys[0] >= 2 and keys[2] >= 2, keys  # replaced where they were; 5 kept
    assert rollout.groups_written in (6, 9, 12) and torch.equal(rollout.prompt_keys, batch["prompt_keys"])
    for r in range(12):
        n = int(rollout.batch["attention_mask"][r].sum())
        start = len(prompts[keys[r // 4]])
        assert rollout.batch["input_ids"][r, :start].tolist() == prompts[keys[r // 4]]
        answer = rollout.batch["input_ids"][r, start:n].tolist()
        text = tok.decode(answer if rollout.truncated[r] else answer[:-1], skip_special_tokens=True)
        shaped = -max(0, len(answer) - 8) / 4  # overlong_buffer 4 of max_new_tokens 12
        assert rollout.rewards[r] == pytest.approx(0.1 * len(text) + shaped), r
    torch.testing.assert_close(rollout.advantages, group_advantages(rollout.rewards, 4, True))
    objective.dynamic_sampling = 0
    objective.begin_step(3)
    plain = objective.rollout(engine, dict(batch), torch.device("cpu"))  # round 0 is the same answers
    for r in range(4, 8):
        row, mask = plain.batch["input_ids"][r], plain.batch["attention_mask"][r]
        assert row[mask == 1].tolist() == rollout.batch["input_ids"][r][rollout.batch["attention_mask"][r] == 1].tolist()
    assert (plain.advantages[:4] == 0).all() and plain.groups_written == 3


def test_answers_come_from_the_policy_whatever_the_models_generation_config_says(tmp_path):
    """A chat model's generation_config.json (temperature, top_k, repetition penalty ...) must not change
    the sampling distribution: the loss assumes softmax(logits / grpo.temperature)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    folder = tiny_model(tmp_path / "model", tok_dir)
    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    GenerationConfig(do_sample=True, temperature=0.3, top_k=5, top_p=0.5, repetition_penalty=1.5,
                     no_repeat_ngram_size=2, min_new_tokens=12).save_pretrained(str(folder))
    chatty = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert chatty.generation_config.temperature == 0.3
    spec, objective = _objective(tok, [None] * 3, generations=4, max_new_tokens=12, temperature=0.9)
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS[:3]]
    batch = PromptCollator(0)([PromptDataset(prompts, [0, 1, 2])[i] for i in range(3)])
    for sample in (True, False):
        want = objective._generate(bare_engine(plain), batch, torch.device("cpu"), sample=sample, seed=11)
        got = objective._generate(bare_engine(chatty), batch, torch.device("cpu"), sample=sample, seed=11)
        assert torch.equal(got, want)


def test_a_model_trained_with_flex_attention_generates_with_sdpa(tmp_path):
    """Generation has no packed documents: flex_attention (chosen for training on CUDA) gives way to sdpa
    while answers are written (on CPU its decoding steps do not even compile), and comes back after."""
    from transformers import AutoModelForCausalLM

    from sft.data import Conversation, Turn
    from sft.grpo_data import PromptCollator, PromptDataset
    from sft.templates import encode_prompt

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    folder = tiny_model(tmp_path / "model", tok_dir)
    sdpa = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    flex = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="flex_attention")
    spec, objective = _objective(tok, [None] * 2, generations=2, max_new_tokens=6)
    prompts = [encode_prompt(Conversation((Turn(q, None),)), tok, spec) for q in QUESTIONS[:2]]
    batch = PromptCollator(0)([PromptDataset(prompts, [0, 1])[i] for i in range(2)])
    want = objective._generate(bare_engine(sdpa), batch, torch.device("cpu"), sample=True, seed=3)
    got = objective._generate(bare_engine(flex), batch, torch.device("cpu"), sample=True, seed=3)
    assert torch.equal(got, want) and flex.config._attn_implementation == "flex_attention"


# ---------------------------------------------------------------- real runs
def test_the_reference_is_the_starting_model_without_a_copy_where_only_adapters_train(tmp_path):
    """LoRA: switching the adapters off gives the starting model's log-probabilities, however far the adapters
    moved; embeddings trained in place (or full training) need a copy, since switching adapters off keeps them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.config import TrainConfig
    from engine.grpo_reference import AdapterOff, FrozenCopy, reference_for
    from engine.preference import labelled_token_logps

    folder = tiny_model(tmp_path / "model", tiny_tokenizer(tmp_path / "tok"))
    start = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32),
                            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ids = torch.randint(5, 60, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    engine = bare_engine(policy)
    got = AdapterOff()(engine, batch, torch.device("cpu"), 0.7)
    with torch.no_grad():
        want = labelled_token_logps(start, batch, torch.device("cpu"), 0.7)[0]
        moved = labelled_token_logps(engine, batch, torch.device("cpu"), 0.7)[0]
    torch.testing.assert_close(got, want)
    assert float((moved - want).abs().max()) > 1e-2  # the adapters did move the policy
    cfg = TrainConfig()
    cfg.mode, cfg.lora.modules_to_save = "lora", []
    assert isinstance(reference_for(cfg), AdapterOff)
    cfg.lora.modules_to_save = ["embed_tokens"]
    assert isinstance(reference_for(cfg), FrozenCopy)
    cfg.mode = "full"
    assert isinstance(reference_for(cfg), FrozenCopy)


def test_the_reference_moves_to_the_policy_and_its_weights_go_into_checkpoints(tmp_path):
    """sync_from: ref <- alpha x policy + (1 - alpha) x ref; alpha 1 makes it the policy (KL 0); state() and
    load_state() carry it through a checkpoint; a setting that cannot move is refused."""
    from transformers import AutoModelForCausalLM

    from engine.grpo_reference import AdapterOff, FrozenCopy
    from engine.preference import labelled_token_logps

    folder = tiny_model(tmp_path / "model", tiny_tokenizer(tmp_path / "tok"))
    policy = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    reference = FrozenCopy(lambda ds_config: (AutoModelForCausalLM.from_pretrained(str(folder),
                                                                                   dtype=torch.float32), None))
    reference.build(bare_engine(policy))
    start = {n: w.clone() for n, w in reference.state().items()}
    reference.sync_from(bare_engine(policy), 0.25)
    for name, weight in policy.named_parameters():
        torch.testing.assert_close(reference.state()[name], 0.25 * weight.detach() + 0.75 * start[name])
    saved = reference.state()
    reference.sync_from(bare_engine(policy), 1.0)
    ids = torch.randint(5, 60, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with torch.no_grad():
        torch.testing.assert_close(reference(None, batch, torch.device("cpu"), 0.7),
                                   labelled_token_logps(policy, batch, torch.device("cpu"), 0.7)[0])
    reference.load_state(saved)
    assert all(torch.equal(reference.state()[n], w) for n, w in saved.items())
    with pytest.raises(ValueError, match="ref_sync_steps needs a reference that can move"):
        _objective(load_tokenizer(tmp_path / "tok"), [None], beta=0.1, reference=AdapterOff(), ref_sync_steps=4)


@pytest.mark.distributed
def test_two_rank_zero3_reference_reset_to_the_policy_every_two_steps(setup):
    """ref_sync_alpha 1 (ProRL's reset) every 2 steps under ZeRO-3, the copy partitioned like the policy: the
    KL is 0 at steps 1, 3, 5 (the reference is the policy that wrote the answers) and not at steps 2, 4."""
    root, model, data = setup
    out = root / "reset"
    _train(root, model, data, out, 2, "schedule.max_steps=5", "eval.every_steps=0", "eval.at_start=false",
           "grpo.beta=0.05", "grpo.ref_sync_steps=2", "grpo.ref_sync_alpha=1.0")
    kl = [r["train/kl"] for r in read_metrics(out) if "train/kl" in r]
    assert len(kl) == 5 and max(kl[0::2]) < 1e-6 < 1e-4 < min(kl[1::2]), kl


def _train(root: Path, model: Path, data: Path, out: Path, ranks: int, *extra: str) -> str:
    proc = sft_train(torchrun_launch(ranks), "--config", str(CONFIG), f"model.path={model}", f"output_dir={out}",
                     f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.2",
                     "grpo.rewards={zh_share: 1.0}", "mode=full", "optim.lr=1e-2", *extra)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    model = tiny_model(root / "model", tiny_tokenizer(root / "tok"), hidden=32)
    return root, model, write_jsonl(root / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])


@pytest.mark.distributed
def test_two_rank_zero3_grpo_raises_the_reward(setup):
    """A random tiny model writes about half Han characters; rewarded for writing Chinese, it writes more."""
    root, model, data = setup
    out = root / "run"
    # a quarter of the prompts score 1 whatever the answer: dynamic sampling replaces their groups, on the rank
    # that has them while the other one writes the same rounds (generation is collective under ZeRO-3)
    fixed = write_jsonl(root / "fixed.jsonl", [{"prompt": q, **({"fixed": 1.0} if i % 4 == 0 else {})}
                                               for i, q in enumerate(QUESTIONS)])
    log = _train(root, model, fixed, out, 2, "schedule.max_steps=16", "grpo.generations=8", "grpo.beta=0.02",
                 "grpo.dynamic_sampling=2", "grpo.rewards={'tests.helpers_rewards:chinese_unless_fixed': 1.0}")
    logged = [r for r in read_metrics(out) if "train/reward" in r]
    assert len(logged) == 16 and all(r["train/answer_tokens"] > 0 for r in logged)
    # a quarter of the groups would be flat; replaced, few are left, at the cost of groups written in more rounds
    assert sum(r["train/flat_groups"] for r in logged) / 16 < 0.1 and max(r["train/groups_written"] for r in logged) > 1
    # the KL to the frozen copy of the starting model (partitioned like the policy): 0 at step 1, then growing
    assert logged[0]["train/kl"] < 1e-6 and logged[-1]["train/kl"] > 1e-3, [r["train/kl"] for r in logged]
    assert "KL penalty 0.02 per answer token against a frozen copy of the starting model" in log
    first = sum(r["train/reward"] for r in logged[:4]) / 4
    last = sum(r["train/reward"] for r in logged[-4:]) / 4
    assert last > first + 0.15, [round(r["train/reward"], 3) for r in logged]
    evals = [r for r in read_metrics(out) if "eval/reward" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 16 and evals[-1]["eval/prompts"] >= 1
    report = json.loads((out / "final" / "train_report.json").read_text())
    assert report["data"]["stage"] == "grpo"
    card = (out / "final" / "README.md").read_text()  # the model card names the stage and what a step was
    assert "(GRPO): mode `full`, 16 steps of 4 prompts × 8 answers" in card, card
    assert "mode=full" in log and "GRPO under ZeRO-3" in log  # the hint to generate under ZeRO-2 where it fits


@pytest.mark.distributed
def test_zero3_answers_are_the_same_written_with_the_whole_model_gathered_once_or_per_token(setup):
    """grpo.gather_for_generation: the whole model gathered on each rank for a generate call, ZeRO-3's hooks off
    meanwhile, the ranks writing independently; then partitioned again and trained on: the same answers, rewards
    and weights as with the weights gathered layer by layer at every token, in step across ranks."""
    from safetensors.torch import load_file

    root, model, data = setup
    runs = {gather: root / f"gather_{gather}" for gather in ("true", "false")}
    for gather, out in runs.items():
        _train(root, model, data, out, 2, "schedule.max_steps=3", "eval.every_steps=3", "grpo.beta=0.05",
               f"grpo.gather_for_generation={gather}")
    gathered, per_token = ([r for r in read_metrics(out) if "train/reward" in r or "eval/reward" in r]
                           for out in runs.values())
    for key in ("train/reward", "train/answer_tokens", "train/kl", "eval/reward", "eval/answer_tokens"):
        assert [r.get(key) for r in gathered] == [r.get(key) for r in per_token], key
    weights = [load_file(str(next((out / "final").glob("*.safetensors")))) for out in runs.values()]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)


def test_a_run_rewarded_by_a_judge_server_asks_it_about_the_answers_it_writes(setup):
    from helpers_judge import block, serve_fake_judge

    root, model, data = setup
    out = root / "judged"
    with serve_fake_judge() as fake:
        _train(root, model, data, out, 1, "schedule.max_steps=2", "eval.every_steps=0", "eval.at_start=false",
               "grpo.rewards={judge: 1.0, zh_share: 0.1}", f"grpo.judge.url={fake.url}", "grpo.judge.model=m")
        asked = [block(r["body"]["messages"][-1]["content"], "问题") for r in fake.requests]
    logged = [r for r in read_metrics(out) if "train/reward" in r]
    held_out = [r for r in read_metrics(out) if "eval/prompts" in r][-1]["eval/prompts"]  # their greedy answers
    assert len(asked) == 2 * 2 * 4 + held_out and set(asked) <= set(QUESTIONS)  # 2 steps x 2 prompts x 4 answers
    calls = (out / "judge_calls-rank0.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(calls) == len(asked) and all("评分：3" in json.loads(c)["reply"] for c in calls)
    assert len(logged) == 2 and all(2 / 9 <= r["train/reward"] <= 2 / 9 + 0.1 for r in logged)  # no reference: 3


def test_resume_writes_the_same_answers_and_ends_as_the_uninterrupted_run(setup):
    """Two steps on each batch of answers (grpo.iterations=2): step 3's checkpoint is between the two passes over
    step 2's answers, so it must give them back; step 4 writes new ones, seeded by the step. The reference moved
    half way to the policy as step 2 began (ref_sync_steps=2): the checkpoint gives it back too."""
    from safetensors.torch import load_file

    root, model, data = setup
    out, resumed, lost = root / "one_rank", root / "resumed", root / "lost"
    common = ("schedule.max_steps=6", "checkpoint.every_steps=3", "checkpoint.keep_last=2", "eval.at_start=false",
              "grpo.beta=0.05",  # the resumed run's reference is the starting model again, not step 3's
              "grpo.iterations=2", "grpo.epsilon=0.1", "grpo.epsilon_high=0.15",
              "grpo.ref_sync_steps=2", "grpo.ref_sync_alpha=0.5")  # moved at step 2: checkpoint 3 holds it
    _train(root, model, data, out, 1, *common)
    assert (out / "checkpoints" / "step-00000003" / "objective-rank0.pt").is_file()
    for copy in (resumed, lost):
        shutil.copytree(out, copy, ignore=shutil.ignore_patterns("final", "train_report.json", "step-00000006"))
    log = _train(root, model, data, resumed, 1, *common)
    assert "resuming from step-00000003" in log, log[-3000:]
    want = [r for r in read_metrics(out) if "train/reward" in r]
    got = [r for r in read_metrics(resumed) if "train/reward" in r]
    assert [r["train/reward"] for r in want[:4]] == [want[0]["train/reward"]] * 2 + [want[2]["train/reward"]] * 2
    assert want[2]["train/reward"] != want[0]["train/reward"]  # a new batch of answers every second step
    assert [r["train/clipped"] for r in want[::2]] == [0.0] * 3 and max(r["train/clipped"] for r in want) > 0
    for key in ("train/reward", "train/kl", "train/clipped"):
        assert [r[key] for r in got[-3:]] == [r[key] for r in want[-3:]], key
    assert want[-1]["train/kl"] > 0
    card = (out / "final" / "README.md").read_text()
    assert "6 steps of 2 prompts × 4 answers (each batch of answers trained on for 2 steps)" in card, card
    (lost / "checkpoints" / "step-00000003" / "objective-rank0.pt").unlink()
    (lost / "checkpoints" / "step-00000003" / "complete.json").write_text(json.dumps(
        {k: v for k, v in json.loads((out / "checkpoints" / "step-00000003" / "complete.json").read_text()).items()
         if k != "files"}))  # as if it never had the file (not a truncated checkpoint)
    with pytest.raises(AssertionError) as failed:  # a clear refusal, not new answers in place of the kept ones
        _train(root, model, data, lost, 1, *common)
    assert "step 3 trains again on the answers written at step 2 (grpo.iterations=2)" in str(failed.value)
    got_w, want_w = (load_file(str(next((d / "final").glob("*.safetensors")))) for d in (resumed, out))
    for name in want_w:
        torch.testing.assert_close(got_w[name], want_w[name], rtol=0, atol=1e-6, msg=name)
