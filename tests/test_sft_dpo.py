"""DPO (`objective: dpo`): pair records in every accepted shape, all bad records reported at once, only
the final answer labelled, the loss equal to a direct computation, and a real 2-rank ZeRO-3 LoRA run:
the first evaluation is the reference itself (loss ln 2), the preference is learned, the frozen weights
stay frozen, and a resume reads the starting model's log-probabilities back and ends where the
uninterrupted run ends."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers_dist import REPO, sft_train, torchrun_launch
from helpers_sft import (ZH_RECORDS, load_tokenizer, read_metrics, tiny_model, tiny_tokenizer, write_json,
                          write_jsonl)

from sft.data import Conversation, Turn
from zhllama.errors import UserError

CONFIG = REPO / "sft" / "configs" / "dpo_tiny_cpu.yaml"
REFUSALS = ["不知道。", "我无法回答这个问题。"]


def _pairs() -> list[dict]:
    """A preference the tiny model can learn from a dozen pairs: a real answer over a refusal."""
    return [{"instruction": r["instruction"], "input": r["input"], "chosen": r["output"], "rejected": no}
            for no in REFUSALS for r in ZH_RECORDS]


# ---------------------------------------------------------------- records
def test_every_pair_shape_gives_the_same_conversations():
    from sft.pairs import parse_pair

    want = (Conversation((Turn("问", "好答案"),)), Conversation((Turn("问", "坏答案"),)))
    assert parse_pair({"instruction": "问", "chosen": "好答案", "rejected": "坏答案"}) == want
    assert parse_pair({"prompt": "问", "chosen": "好答案", "rejected": "坏答案"}) == want
    assert parse_pair({"prompt": [{"role": "user", "content": "问"}],  # TRL's conversational form
                       "chosen": [{"role": "assistant", "content": "好答案"}],
                       "rejected": [{"role": "assistant", "content": "坏答案"}]}) == want
    multi = parse_pair({"conversations": [{"from": "human", "value": "一"}, {"from": "gpt", "value": "二"},
                                          {"from": "human", "value": "问"}], "system": "系统",
                        "chosen": {"from": "gpt", "value": "好答案"}, "rejected": {"from": "gpt", "value": "坏答案"}})
    assert multi[0] == Conversation((Turn("一", "二"), Turn("问", "好答案")), system="系统")
    assert multi[1].turns[-1].assistant == "坏答案" and multi[1].turns[0] == multi[0].turns[0]


def test_all_bad_pair_records_are_reported_before_anything_runs(tmp_path):
    from sft.config import SFTConfig
    from sft.train_cli import prepare
    from zhllama.config import load_config

    bad = [
        {"instruction": "问", "chosen": "好答案"},  # no rejected
        {"instruction": "问", "chosen": "同一个", "rejected": "同一个"},
        {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
         "chosen": "a", "rejected": "b"},  # the prompt already ends with an answer
        {"instruction": "问", "output": "答", "chosen": "a", "rejected": "b"},
        {"instruction": "问", "chosen": {"role": "user", "content": "a"}, "rejected": "b"},
        {"instruction": "问", "chosen": "  ", "rejected": "b"},
        {"instruction": "问", "chosen": "好", "rejected": "坏"},  # fine
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", bad)
    cfg = load_config(SFTConfig, CONFIG, [f"model.path={tmp_path / 'none'}", f"data.files=[{{path: '{data}'}}]"])
    with pytest.raises(UserError) as err:
        prepare(cfg)
    text = str(err.value)
    for line, what in [(1, "missing `rejected`"), (2, "`chosen` and `rejected` are the same text"),
                       (3, "the prompt must end with the user's turn"),
                       (4, "`output` next to"), (5, "`chosen` must be the assistant's answer"), (6, "`chosen` is empty")]:
        assert f"line {line} (record {line}): {what}" in text, text
    assert "line 7" not in text


def test_dpo_settings_are_validated(tmp_path):
    from sft.config import SFTConfig
    from zhllama.config import load_config

    with pytest.raises(UserError) as err:
        load_config(SFTConfig, CONFIG, ["dpo.beta=0", "dpo.label_smoothing=0.5", "dpo.nll_weight=-1",
                                        "data.packing=true", "mode=embeddings"])
    for what in ("dpo.beta:", "dpo.label_smoothing:", "dpo.nll_weight:", "data.packing: not with", "mode: embeddings"):
        assert what in str(err.value), str(err.value)
    with pytest.raises(UserError, match=r"objective: expected one of \[.sft., .dpo., .kto., .grpo., .distill.\], got .ppo."):
        load_config(SFTConfig, CONFIG, ["objective=ppo"])
    with pytest.raises(UserError) as err:
        load_config(SFTConfig, CONFIG, ["dpo.loss=kto", "dpo.simpo_gamma=-1"])
    assert "dpo.loss: expected one of ['sigmoid', 'ipo', 'simpo', 'orpo'], got 'kto'" in str(err.value)
    assert "dpo.simpo_gamma: must be >= 0" in str(err.value)
    for loss in ("ipo", "orpo"):
        with pytest.raises(UserError, match="dpo.label_smoothing: only with loss sigmoid or simpo"):
            load_config(SFTConfig, CONFIG, [f"dpo.loss={loss}", "dpo.label_smoothing=0.1"])


def test_only_the_final_answer_is_labelled_and_a_cut_answer_drops_the_pair(tmp_path):
    from sft.cache import encode_all
    from sft.pairs import parse_pair
    from sft.templates import IGNORE_INDEX, make_spec

    tok = load_tokenizer(tiny_tokenizer(tmp_path / "tok"))
    spec = make_spec("chinese-alpaca-2", tok)
    record = {"conversations": [{"from": "human", "value": "第一问"}, {"from": "gpt", "value": "第一答"},
                                {"from": "human", "value": "第二问"}], "chosen": "好的回答", "rejected": "不知道"}
    samples, stats = encode_all(list(parse_pair(record)), tok, spec, 512, pairs=True)
    assert stats.kept == 2
    for index, answer in enumerate(["好的回答", "不知道"]):
        ids, labels = samples.get(index)
        trained = [int(i) for i, label in zip(ids, labels) if label != IGNORE_INDEX]
        assert trained[-1] == tok.eos_token_id
        assert tok.decode(trained[:-1]).strip() == answer  # "第一答" is context, not compared
    prompt_length = int((samples.get(1)[1] == IGNORE_INDEX).sum())
    short, stats = encode_all(list(parse_pair(record)), tok, spec, prompt_length, pairs=True)
    assert stats.kept == 0 and stats.dropped_no_trainable_token == 2  # not trained on "第一答" instead


# ---------------------------------------------------------------- the loss
def test_dpo_loss_equals_a_direct_computation(tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.preference import DPOObjective, sequence_logps
    from sft.pairs import PairCollator, PairDataset
    from sft.cache import encode_all
    from sft.pairs import parse_pair
    from sft.templates import make_spec

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "model", tok_dir)), dtype=torch.float32)
    pairs = [parse_pair(p) for p in _pairs()[:2]] + [parse_pair({"instruction": "长一点的问题" * 5, "chosen": "好",
                                                                  "rejected": "坏的回答" * 3})]
    samples, _ = encode_all([c for pair in pairs for c in pair], tok, make_spec("chinese-alpaca-2", tok), 512, pairs=True)
    ds = PairDataset(samples, [(0, 1), (2, 3), (4, 5)])
    reference = torch.tensor([[-30.0, -20.0], [-25.5, -31.0], [-12.0, -40.0]], dtype=torch.float64)
    ds.set_reference(reference)
    batch = PairCollator(pad_token_id=0)([ds[i] for i in range(3)])

    def direct(row: int) -> float:  # one unpadded sequence, log-softmax over the whole vocabulary
        ids, labels = (torch.from_numpy(a.astype("int64")) for a in samples.get(row))
        logp = model(input_ids=ids[None]).logits[0, :-1].log_softmax(-1)
        keep = labels[1:] != -100
        return float(logp[keep].gather(1, labels[1:][keep][:, None]).sum())

    with torch.no_grad():
        logps, tokens = sequence_logps(model, batch, torch.device("cpu"))
        want = torch.tensor([direct(r) for r in range(6)])
        torch.testing.assert_close(logps, want, rtol=0, atol=1e-4)  # padding changes nothing
        beta, eps, nll, gamma = 0.3, 0.1, 0.5, 0.4
        stats = {kind: DPOObjective(beta, eps if kind in ("sigmoid", "simpo") else 0.0, nll, kind, gamma).pair_stats(
            model, batch, torch.device("cpu")) for kind in ("sigmoid", "ipo", "simpo", "orpo")}
        del batch["reference_logps"]  # SimPO and ORPO need none
        for kind in ("simpo", "orpo"):
            torch.testing.assert_close(DPOObjective(beta, eps if kind == "simpo" else 0.0, nll, kind, gamma).pair_stats(
                model, batch, torch.device("cpu")).loss, stats[kind].loss, rtol=0, atol=0)
    logsig, ref, n = torch.nn.functional.logsigmoid, reference.float(), tokens.float()
    rpo = nll * (-want[0::2] / n[0::2])
    smoothed = lambda m: -(1 - eps) * logsig(m) - eps * logsig(-m)
    dpo = beta * ((want[0::2] - ref[:, 0]) - (want[1::2] - ref[:, 1]))  # sums of log-probabilities
    mean = want / n  # IPO and SimPO compare per-token means
    ipo = beta * ((mean[0::2] - ref[:, 0] / n[0::2]) - (mean[1::2] - ref[:, 1] / n[1::2]))
    simpo = beta * (mean[0::2] - mean[1::2])
    odds = lambda m: m - torch.log1p(-torch.exp(m))  # log(p / (1 - p)) of the mean probability p = exp(m)
    orpo = -mean[0::2] - beta * logsig(odds(mean[0::2]) - odds(mean[1::2]))
    for kind, margin, expect in [("sigmoid", dpo, smoothed(dpo) + rpo),
                                 ("ipo", ipo, (ipo / beta - 1 / (2 * beta)) ** 2 + rpo),
                                 ("simpo", simpo, smoothed(simpo - gamma) + rpo),
                                 ("orpo", simpo, orpo + rpo)]:
        torch.testing.assert_close(stats[kind].loss, expect, rtol=0, atol=1e-4, msg=kind)
        got = (stats[kind].chosen_reward - stats[kind].rejected_reward).tolist()
        assert got == pytest.approx(margin.tolist(), abs=1e-4), kind


def test_the_chunked_head_gives_the_plain_paths_loss_and_gradients(tmp_path, monkeypatch):
    """model.fused_loss (the default): answer log-probabilities from the hidden states a few positions at a
    time, never the full logits. Loss and every parameter's gradient equal the plain logits path."""
    from transformers import AutoModelForCausalLM

    from engine.loss import install_fused_head
    from engine.preference import DPOObjective
    from sft.cache import encode_all
    from sft.pairs import PairCollator, PairDataset, parse_pair
    from sft.templates import make_spec

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    model_dir = tiny_model(tmp_path / "model", tok_dir)
    samples, _ = encode_all([c for p in _pairs()[:3] for c in parse_pair(p)], tok, make_spec("chinese-alpaca-2", tok),
                            512, pairs=True)
    ds = PairDataset(samples, [(0, 1), (2, 3), (4, 5)])
    ds.set_reference(torch.tensor([[-30.0, -20.0], [-25.5, -31.0], [-12.0, -40.0]], dtype=torch.float64))
    batch = PairCollator(pad_token_id=0)([ds[i] for i in range(3)])
    import engine.loss

    chunked_calls = []
    real = engine.loss.linear_token_logps
    monkeypatch.setattr(engine.loss, "linear_token_logps", lambda *a: chunked_calls.append(1) or real(*a))
    results = []
    for fused in (False, True):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if fused:
            install_fused_head(model, chunk_tokens=5)
        total, pairs = DPOObjective(beta=0.5, nll_weight=0.3).loss(model, batch, torch.device("cpu"))
        (total / pairs).backward()
        results.append((total.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(chunked_calls) == 1  # the fused run took the chunked path; the plain one did not
    (plain, plain_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_resume_without_the_reference_file_is_refused(tmp_path):
    from engine.preference import REFERENCE_FILE, _read_reference
    from zhllama.files import write_json_atomic

    datasets = {"train": [0, 1]}
    with pytest.raises(UserError, match="cannot resume"):
        _read_reference(tmp_path / REFERENCE_FILE, "abc", datasets, "DPO", "pairs")
    write_json_atomic(tmp_path / REFERENCE_FILE, {"data_fingerprint": "other", "tables": {"train": [[0, 0], [0, 0]]}})
    with pytest.raises(UserError, match="made for other data"):
        _read_reference(tmp_path / REFERENCE_FILE, "abc", datasets, "DPO", "pairs")
    write_json_atomic(tmp_path / REFERENCE_FILE, {"data_fingerprint": "abc", "tables": {"train": [[-1.5, -2.25]]}})
    with pytest.raises(UserError, match="no reference for the 2 train pairs"):
        _read_reference(tmp_path / REFERENCE_FILE, "abc", datasets, "DPO", "pairs")


# ---------------------------------------------------------------- a real run: 2 ranks, ZeRO-3, LoRA
def _train(root: Path, model: Path, data: Path, out: Path, *extra: str) -> str:
    proc = sft_train(torchrun_launch(2), "--config", str(CONFIG), f"model.path={model}", f"output_dir={out}",
                     f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}', weight: 2.0}}]",
                     "data.eval_fraction=0.25", "dpo.beta=0.5", "schedule.max_steps=8", "checkpoint.every_steps=4",
                     "checkpoint.keep_last=2", *extra)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    model = tiny_model(root / "model", tiny_tokenizer(root / "tok"), hidden=32)
    data = write_json(root / "pairs.json", _pairs())
    out = root / "run"
    return root, model, data, out, _train(root, model, data, out)


@pytest.mark.distributed  # dpo_run launches torchrun with 2 ranks
def test_two_rank_zero3_lora_dpo_learns_the_preference(dpo_run):
    from safetensors.torch import load_file

    _, _, _, out, log = dpo_run
    evals = [r for r in read_metrics(out) if "eval/reward_accuracy" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and first["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    assert first["eval/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert last["eval/reward_accuracy"] == 1.0 and last["eval/loss"] < 0.6 * math.log(2), evals  # held-out pairs
    losses = [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]
    assert len(losses) == 8 and losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert sum(losses[-2:]) / 2 < 0.7 * math.log(2), losses
    logged = [r for r in read_metrics(out) if "train/reward_accuracy" in r]  # every log line, over both ranks' pairs
    assert len(logged) == 8 and logged[-1]["train/reward_accuracy"] == 1.0 and logged[-1]["train/reward_margin"] > 0
    assert last["eval/logp_rejected"] < first["eval/logp_rejected"]  # the held-out refusals lost probability
    data_report = json.loads((out / "sft_data_report.json").read_text())
    assert data_report["eval_samples"] >= 1 and data_report["train_samples"] == 2 * (12 - data_report["eval_samples"])
    reference = json.loads((out / "dpo_reference.json").read_text())
    assert len(reference["tables"]["train"]) == data_report["train_samples"]
    adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)  # the base weights stayed frozen
    assert "mode=lora" in log and (out / "final" / "sft_template.json").is_file()
    assert f"DPO reference: scoring {data_report['train_samples']} train + {data_report['eval_samples']} eval pairs" in log


@pytest.mark.parametrize("loss, beta", [("simpo", 2.0), ("orpo", 0.5)])
def test_reference_free_losses_train_without_a_reference_pass(dpo_run, loss, beta):
    """One rank, SimPO and ORPO: no reference file, no reference pass, and the preference is still learned."""
    root, model, data, _, _ = dpo_run
    out = root / loss
    proc = sft_train(torchrun_launch(1), "--config", str(CONFIG), f"model.path={model}", f"output_dir={out}",
                     f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}', weight: 2.0}}]",
                     "data.eval_fraction=0.25", f"dpo.loss={loss}", f"dpo.beta={beta}", "schedule.max_steps=8",
                     "batch.micro_batch_size=4")
    assert not (out / "dpo_reference.json").exists() and "DPO reference" not in proc.stdout + proc.stderr
    evals = [r for r in read_metrics(out) if "eval/reward_accuracy" in r]
    assert evals[-1]["eval/reward_accuracy"] == 1.0 and evals[-1]["eval/loss"] < evals[0]["eval/loss"], evals


@pytest.mark.distributed
def test_resume_reads_the_reference_back_and_ends_as_the_uninterrupted_run(dpo_run):
    """Step 4's checkpoint continued in another folder: by then the policy differs from the starting model,
    so only the saved reference (not a new pass) can give the uninterrupted run's weights."""
    from safetensors.torch import load_file

    root, model, data, out, _ = dpo_run
    resumed = root / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("final", "train_report.json", "step-00000008"))
    log = _train(root, model, data, resumed)
    assert "resuming from step-00000004" in log and "read back from" in log, log[-3000:]
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    want = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
