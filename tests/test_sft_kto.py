"""KTO (`objective: kto`): answers judged one by one in every accepted shape (and pairs split into both
verdicts), all bad records reported at once, each example's mismatched answer, the loss equal to a direct
computation, and real runs: 2 ranks ZeRO-3 LoRA, where the first evaluation is the reference itself (loss
0.5, rewards 0) and the verdicts are learned on held-out examples; one rank, where a resume reads the
reference back and ends as the uninterrupted run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers_dist import REPO, sft_train, torchrun_launch
from helpers_sft import (ZH_RECORDS, load_tokenizer, read_metrics, tiny_model, tiny_tokenizer, write_json,
                          write_jsonl)

from sft.data import Conversation, Turn
from zhllama.errors import UserError

CONFIG = REPO / "sft" / "configs" / "kto_tiny_cpu.yaml"
REFUSALS = ["不知道。", "我无法回答这个问题。"]


def _examples() -> list[dict]:
    """What the tiny model can learn from a few dozen verdicts: real answers are good, refusals bad."""
    good = [{"prompt": r["instruction"] + r["input"], "completion": r["output"], "label": True} for r in ZH_RECORDS]
    bad = [{"instruction": r["instruction"], "input": r["input"], "output": no, "kto_tag": False}
           for no in REFUSALS for r in ZH_RECORDS]
    return good + good + bad  # 2 : 2 desirable to undesirable, in two shapes


# ---------------------------------------------------------------- records
def test_every_shape_gives_its_examples():
    from sft.kto import parse_example

    good = Conversation((Turn("问", "好答案"),))
    assert parse_example({"prompt": "问", "completion": "好答案", "label": True}) == [(good, True)]
    assert parse_example({"prompt": [{"role": "user", "content": "问"}],  # TRL's conversational form
                          "completion": [{"role": "assistant", "content": "好答案"}], "label": False}) == [(good, False)]
    assert parse_example({"instruction": "问", "output": "好答案", "kto_tag": True}) == [(good, True)]
    assert parse_example({"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "好答案"}],
                          "label": True}) == [(good, True)]
    bad = Conversation((Turn("问", "坏答案"),))
    assert parse_example({"prompt": "问", "chosen": "好答案", "rejected": "坏答案"}) == [(good, True), (bad, False)]


def test_all_bad_records_are_reported_before_anything_runs(tmp_path):
    from sft.config import SFTConfig
    from sft.train_cli import prepare
    from zhllama.config import load_config

    bad = [
        {"prompt": "问", "completion": "答"},  # no verdict
        {"prompt": "问", "completion": "答", "label": "yes"},
        {"prompt": "问", "completion": "答", "label": True, "kto_tag": True},
        {"prompt": "问", "completion": "答", "output": "答", "label": True},
        {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
         "completion": "a", "label": True},  # the prompt already ends with an answer
        {"instruction": "问", "label": False},  # nothing judged
        {"prompt": "问", "completion": "好", "label": True},  # fine
    ]
    data = write_jsonl(tmp_path / "judged.jsonl", bad)
    cfg = load_config(SFTConfig, CONFIG, [f"model.path={tmp_path / 'none'}", f"data.files=[{{path: '{data}'}}]"])
    with pytest.raises(UserError) as err:
        prepare(cfg)
    text = str(err.value)
    for line, what in [(1, "a KTO example needs its verdict as `label` or `kto_tag`"), (2, "`label` must be true or false"),
                       (3, "not both"), (4, "`output` next to `completion`"),
                       (5, "the prompt must end with the user's turn"), (6, "missing `output`")]:
        reported = [entry for entry in text.splitlines() if f"line {line} (record {line}): " in entry]
        assert len(reported) == 1 and what in reported[0], text
    assert "line 7" not in text and "malformed KTO examples" in text


def test_kto_settings_are_validated():
    from sft.config import SFTConfig
    from zhllama.config import load_config

    with pytest.raises(UserError) as err:
        load_config(SFTConfig, CONFIG, ["kto.loss=dpo", "kto.beta=0", "kto.desirable_weight=0",
                                        "kto.undesirable_weight=-1", "data.packing=true", "mode=embeddings"])
    for what in ("kto.loss: expected one of ['kto', 'apo_zero_unpaired'], got 'dpo'", "kto.beta:",
                 "kto.desirable_weight: must be > 0", "kto.undesirable_weight: must be > 0",
                 "data.packing: not with objective=kto", "mode: embeddings"):
        assert what in str(err.value), str(err.value)


def test_each_example_gets_another_prompts_answer_as_its_mismatched_one():
    from sft.kto import kto_units, parse_example

    records = [parse_example(r) for r in [{"prompt": f"问{i}", "chosen": f"好{i}", "rejected": f"坏{i}"}
                                          for i in range(6)]]
    units = kto_units(records)
    assert [(u[0], u[3]) for u in units] == [(i // 2, i % 2 == 0) for i in range(12)]  # record, verdict
    answers = {u[1].turns[-1].assistant for u in units}
    for number, example, mismatched, _ in units:
        assert mismatched.turns[-1].user == example.turns[-1].user  # this prompt ...
        other = mismatched.turns[-1].assistant
        assert other in answers and other[1:] != example.turns[-1].assistant[1:]  # ... another prompt's answer
    assert kto_units(records) == units  # fixed: the reference pass scores the very rows training sees


def test_a_pair_file_tokenized_for_dpo_gives_kto_its_own_rows(tmp_path):
    """The same file, cache folder and template: DPO's rows (chosen, rejected) and KTO's (an example, its
    mismatched answer) are different rows, so the cache keeps them apart."""
    from sft.config import SFTConfig
    from sft.train_cli import prepare
    from zhllama.config import load_config

    model = tiny_model(tmp_path / "model", tiny_tokenizer(tmp_path / "tok"))
    pairs = write_json(tmp_path / "pairs.json", [{"instruction": r["instruction"], "input": r["input"],
                                                  "chosen": r["output"], "rejected": "不知道。"} for r in ZH_RECORDS])
    common = [f"model.path={model}", f"data.files=[{{path: '{pairs}'}}]", "data.eval_fraction=0.0",
              f"data.cache_dir={tmp_path / 'cache'}"]
    dpo = prepare(load_config(SFTConfig, REPO / "sft" / "configs" / "dpo_tiny_cpu.yaml", common))[2]
    kto = prepare(load_config(SFTConfig, CONFIG, common))[2]
    assert (len(dpo), len(kto)) == (len(ZH_RECORDS), 2 * len(ZH_RECORDS))
    assert sorted(kto.flags) == [False] * len(ZH_RECORDS) + [True] * len(ZH_RECORDS)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    for example, mismatched in kto.pairs:  # the second row is never the example's own answer
        assert not (kto.samples.get(example)[0].tolist() == kto.samples.get(mismatched)[0].tolist())


# ---------------------------------------------------------------- the loss
@pytest.mark.parametrize("kind", ["kto", "apo_zero_unpaired"])
def test_kto_loss_equals_a_direct_computation(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    from engine.kto import KTOObjective
    from engine.preference import sequence_logps
    from sft.cache import encode_all
    from sft.kto import kto_units, parse_example
    from sft.pairs import PairCollator, PairDataset
    from sft.templates import make_spec

    tok_dir = tiny_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tok_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model(tmp_path / "model", tok_dir)), dtype=torch.float32)
    units = kto_units([parse_example(r) for r in _examples()[:2] + _examples()[-2:]])
    samples, _ = encode_all([c for u in units for c in u[1:3]], tok, make_spec("chinese-alpaca-2", tok), 512, pairs=True)
    flags = [u[3] for u in units]
    ds = PairDataset(samples, [(0, 1), (2, 3), (4, 5), (6, 7)], flags)
    reference = torch.tensor([[-30.0, -20.0], [-25.5, -31.0], [-12.0, -40.0], [-22.0, -90.0]], dtype=torch.float64)
    ds.set_reference(reference)
    batch = PairCollator(pad_token_id=0)([ds[i] for i in range(4)])
    beta, good_w, bad_w = 0.3, 1.5, 0.75
    with torch.no_grad():
        logps, _ = sequence_logps(model, batch, torch.device("cpu"))
        stats = KTOObjective(beta, good_w, bad_w, kind).example_stats(model, batch, torch.device("cpu"))
    r = logps.double() - reference.reshape(-1)
    z0 = max(float(r[1::2].mean()), 0.0) if kind == "kto" else 0.0
    want = [(good_w if good else bad_w) * (1 - torch.sigmoid(beta * ((ri - z0) if good else (z0 - ri))))
            for ri, good in zip(r[0::2].tolist(), flags) for ri in [torch.tensor(ri)]]
    assert flags == [True, True, False, False]
    torch.testing.assert_close(stats.loss.double(), torch.stack(want).double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(stats.reward.double(), beta * r[0::2], rtol=0, atol=1e-5)
    assert float(stats.kl) == pytest.approx(max(float(r[1::2].mean()), 0.0), abs=1e-4)


# ---------------------------------------------------------------- real runs
def _train(root: Path, model: Path, data: Path, out: Path, ranks: int, *extra: str) -> str:
    proc = sft_train(torchrun_launch(ranks), "--config", str(CONFIG), f"model.path={model}", f"output_dir={out}",
                     f"data.cache_dir={root / 'cache'}", f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.25",
                     "kto.beta=0.5", "schedule.max_steps=8", *extra)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kto")
    model = tiny_model(root / "model", tiny_tokenizer(root / "tok"), hidden=32)
    return root, model, write_json(root / "judged.json", _examples())


@pytest.mark.distributed
def test_two_rank_zero3_lora_kto_learns_the_verdicts(setup):
    from safetensors.torch import load_file

    root, model, data = setup
    out = root / "run"
    log = _train(root, model, data, out, 2)
    evals = [r for r in read_metrics(out) if "eval/kl" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and first["eval/loss"] == pytest.approx(0.5, abs=1e-6)  # policy == reference
    assert first["eval/reward_desirable"] == pytest.approx(0, abs=1e-6) == first["eval/reward_undesirable"]
    assert last["eval/reward_desirable"] > last["eval/reward_undesirable"] + 0.5, evals  # held-out verdicts
    assert last["eval/loss"] < 0.48, evals
    logged = [r for r in read_metrics(out) if "train/kl" in r]  # every log line, over both ranks' examples
    assert len(logged) == 8 and all(r["train/kl"] >= 0 for r in logged)
    gaps = [r["train/reward_desirable"] - r["train/reward_undesirable"] for r in logged[-4:]
            if "train/reward_desirable" in r and "train/reward_undesirable" in r]
    assert gaps and min(gaps) > 0, logged
    report = json.loads((out / "sft_data_report.json").read_text())
    reference = json.loads((out / "kto_reference.json").read_text())
    assert len(reference["tables"]["train"]) == report["train_samples"] and report["eval_samples"] >= 1
    assert report["train_samples"] + report["eval_samples"] == len(_examples())
    adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)  # the base weights stayed frozen
    assert "KTO reference: scoring" in log and "desirable and" in log


def test_resume_reads_the_reference_back_and_ends_as_the_uninterrupted_run(setup):
    from safetensors.torch import load_file

    root, model, data = setup
    out, resumed = root / "one_rank", root / "resumed"
    _train(root, model, data, out, 1, "checkpoint.every_steps=4", "checkpoint.keep_last=2", "eval.at_start=false")
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("final", "train_report.json", "step-00000008"))
    log = _train(root, model, data, resumed, 1, "checkpoint.every_steps=4", "checkpoint.keep_last=2",
                 "eval.at_start=false")
    assert "resuming from step-00000004" in log and "read back from" in log, log[-3000:]
    got = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    want = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
