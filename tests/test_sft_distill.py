"""Knowledge distillation (`objective: distill`): the divergence is GKD's definition, the chunked head's value and
gradients equal autograd's on full logits, the fused and plain heads train alike and only the student, the student
answers the prompts of SFT rows where their last answer starts, drawn per micro batch and seeded, bad settings and
teachers of another vocabulary are refused, and real runs: 2 ranks ZeRO-3 where the divergence falls, one rank where
a resume ends as the uninterrupted run."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers_dist import REPO, sft_train, torchrun_launch
from helpers_sft import (ZH_RECORDS, bare_engine, load_tokenizer, read_metrics, tiny_model, tiny_tokenizer,
                          write_json)

from zhllama.errors import UserError

CONFIG = REPO / "sft" / "configs" / "distill_tiny_cpu.yaml"
BETAS = [0.0, 0.3, 0.5, 1.0]


def peaked_teacher(folder: Path, tokenizer_dir: Path, sharpen: float = 6.0) -> Path:
    """A random tiny LLaMA, wider and deeper than the students, whose output layer is scaled so that its
    distributions are far from uniform (a random model's are nearly uniform: nothing to learn from them)."""
    from engine.tiny import make_tiny_model

    return _sharpened(make_tiny_model(folder, tokenizer_dir, hidden=48, layers=3, heads=4, seed=5), sharpen)


def _sharpened(folder: Path, factor: float) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["lm_head.weight"] = weights["lm_head.weight"] * factor
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


# ---------------------------------------------------------------- the divergence
def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * (a / b).log()).sum(dim=-1)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_divergence_is_gkds_generalized_jsd_of_the_tempered_distributions(beta, temperature):
    """Against the definition written with probabilities in float64: forward KL at beta 0, reverse KL at 1, and
    beta KL(q || m) + (1 - beta) KL(p || m) with m = beta q + (1 - beta) p between (TRL's generalized_jsd_loss)."""
    from engine.distill_loss import token_divergence

    torch.manual_seed(0)
    student, teacher = torch.randn(9, 40) * 3, torch.randn(9, 40) * 3
    p = (student.double() / temperature).softmax(-1)
    q = (teacher.double() / temperature).softmax(-1)
    m = beta * q + (1 - beta) * p
    want = {0.0: _kl(q, p), 1.0: _kl(p, q)}.get(beta, beta * _kl(q, m) + (1 - beta) * _kl(p, m))
    got = token_divergence(student, teacher, beta, temperature)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (got > 0).all() and token_divergence(student, student, beta, temperature).abs().max() < 1e-5
    if beta == 0.5:  # the Jensen-Shannon divergence: symmetric, at most log 2
        torch.testing.assert_close(got, token_divergence(teacher, student, beta, temperature), rtol=1e-5, atol=1e-6)
        assert (got <= math.log(2)).all()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature, dtype", [(1.0, torch.float32), (0.7, torch.float32), (1.0, torch.bfloat16)])
def test_the_chunked_head_gives_autograds_value_and_gradients_on_full_logits(beta, temperature, dtype):
    """linear_divergence (hidden states x both output layers, 5 positions at a time, positions labelled -100
    left out, the gradient written out in forward) against token_divergence on the whole logits by autograd,
    for the student's hidden states and output weight; a teacher of another width."""
    from engine.distill_loss import linear_divergence, token_divergence

    torch.manual_seed(1)
    hidden = torch.randn(3, 8, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, dtype=dtype, requires_grad=True)
    teacher_hidden, teacher_weight = torch.randn(3, 8, 24, dtype=dtype), torch.randn(50, 24, dtype=dtype) * 2
    labels = torch.randint(0, 50, (3, 8))
    labels[0, :3], labels[2, 5:] = -100, -100
    keep = labels != -100
    want = token_divergence(hidden[keep] @ weight.t(), teacher_hidden[keep] @ teacher_weight.t(), beta,
                            temperature).sum()
    want_grads = torch.autograd.grad(want * 0.5, (hidden, weight))
    got = linear_divergence(hidden, weight, labels, teacher_hidden[keep], teacher_weight, beta, temperature, chunk=5)
    got_grads = torch.autograd.grad(got * 0.5, (hidden, weight))  # backward scales by the upstream gradient
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tolerance)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.float(), w.float(), **tolerance)
    assert got_grads[0][~keep].abs().max() == 0  # an unlabelled position gets no gradient


def _objective(root: Path, fused: bool, **settings):
    """(student engine, objective, tokenizer, collated SFT batch) on tiny models sharing one tokenizer."""
    from transformers import AutoModelForCausalLM

    from engine.distill import DistillObjective
    from engine.grpo_reference import FrozenCopy
    from engine.loss import install_fused_head
    from engine.sampling import Sampler
    from sft.collate import SFTCollator
    from sft.data import Conversation, Turn
    from sft.templates import encode_conversation, make_spec, pad_token_id, stop_ids

    tok_dir = root / "tok"
    if not tok_dir.is_dir():
        tiny_tokenizer(tok_dir)
        tiny_model(root / "student", tok_dir, seed=2)
        peaked_teacher(root / "teacher", tok_dir)
    tok = load_tokenizer(tok_dir)
    student = AutoModelForCausalLM.from_pretrained(str(root / "student"), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(str(root / "teacher"), dtype=torch.float32)
    if fused:
        install_fused_head(student, chunk_tokens=7)
    spec = make_spec("chinese-alpaca-2", tok)
    objective = DistillObjective(teacher=FrozenCopy(lambda ds_config: (teacher, None)),
                                 sampler=Sampler(stop_ids(tok, spec), pad_token_id(tok), 10), seed=3,
                                 chunk_tokens=7, **settings)
    engine = bare_engine(student)
    objective.prepare(engine, {}, None, 2, root, False, None, torch.device("cpu"))
    rows = [encode_conversation(Conversation((Turn(r["instruction"], r["output"], r["input"]),)), tok, spec)
            for r in ZH_RECORDS[:3]]
    items = [{"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)} for ids, labels in rows]
    batch = SFTCollator(pad_token_id=pad_token_id(tok))(items)
    return engine, objective, tok, batch


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_fused_and_plain_heads_give_the_same_loss_and_only_the_student_learns(tmp_path, beta):
    """The objective's divergence on an SFT batch (data answers) and on the student's own answers: the fused
    head (the teacher's forward stopping at its hidden states, the student's head computing the divergence in
    chunks) equals both models' full logits; the student's every weight gets a gradient, the teacher's none."""
    from torch.distributed import is_initialized

    assert not is_initialized()
    results = []
    for fused in (False, True):
        engine, objective, _, batch = _objective(tmp_path, fused, beta=beta, lmbda=0.5)
        rows, _ = objective.student_answers(engine, batch, torch.device("cpu"), seed=9)
        totals = []
        for part in (batch, rows):
            total, tokens = objective.divergence(engine, part, torch.device("cpu"))
            total.backward()
            totals.append((float(total.detach()), int(tokens)))
        grads = {n: p.grad.clone() for n, p in engine.module.named_parameters()}
        assert all(g.abs().sum() > 0 for g in grads.values())
        assert all(p.grad is None for p in objective.teacher.engine.parameters())
        results.append((totals, grads, rows["input_ids"]))
    (plain, plain_grads, plain_rows), (fused, fused_grads, fused_rows) = results
    assert torch.equal(plain_rows, fused_rows)  # the same answers written
    for (a, n), (b, m) in zip(plain, fused):
        assert n == m > 0 and a == pytest.approx(b, rel=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_packed_records_are_scored_as_alone_by_both_models(tmp_path, fused):
    """distill.lmbda=0 may pack rows: position_ids restarting at each record keep both the student's and the
    teacher's attention inside it, so a packed row's divergence is the sum of its records' alone."""
    from sft.collate import SFTCollator

    engine, objective, tok, batch = _objective(tmp_path, fused, lmbda=0.0)
    cpu = torch.device("cpu")
    alone = [objective.divergence(engine, {k: v[r:r + 1] for k, v in batch.items()}, cpu) for r in range(3)]
    items = []
    for r in range(3):
        n = int(batch["attention_mask"][r].sum())
        items.append((batch["input_ids"][r, :n], batch["labels"][r, :n]))
    packed = SFTCollator(pad_token_id=0)([{"input_ids": torch.cat([i for i, _ in items]),
                                           "labels": torch.cat([lab for _, lab in items]),
                                           "position_ids": torch.cat([torch.arange(len(i)) for i, _ in items])}])
    total, tokens = objective.divergence(engine, packed, cpu)
    assert int(tokens) == sum(int(n) for _, n in alone)
    assert float(total.detach()) == pytest.approx(sum(float(t.detach()) for t, _ in alone), rel=1e-5)
    # one causal row: the records see each other (random tiny models attend almost evenly, so it moves little)
    crossed = {k: v for k, v in packed.items() if k != "position_ids"}
    crossed_total = float(objective.divergence(engine, crossed, cpu)[0].detach())
    assert abs(crossed_total - float(total.detach())) > 1e-4 * abs(crossed_total)


def test_the_student_answers_where_the_last_answer_starts():
    """Each row's prompt is everything before its last labelled span (a multi-turn row keeps its earlier turns and
    answers), left-padded; a row without labels is a prompt whole."""
    from engine.distill import answer_prompts

    ids = torch.tensor([[1, 5, 6, 7, 8, 2, 0, 0], [1, 5, 9, 9, 6, 6, 7, 2], [1, 4, 4, 0, 0, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7, 8, 2, -100, -100],
                           [-100, -100, 9, 9, -100, -100, 7, 2],  # two answers: the last starts at 6
                           [-100] * 8])
    mask = torch.tensor([[1] * 6 + [0] * 2, [1] * 8, [1] * 3 + [0] * 5])
    got = answer_prompts({"input_ids": ids, "labels": labels, "attention_mask": mask}, pad_id=0)
    assert got["input_ids"].tolist() == [[0, 0, 0, 1, 5, 6], [1, 5, 9, 9, 6, 6], [0, 0, 0, 1, 4, 4]]
    assert got["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [1] * 6, [0, 0, 0, 1, 1, 1]]


def test_own_answers_are_drawn_per_micro_batch_and_written_from_the_seed(tmp_path):
    """Whether a micro batch trains on the student's answers depends on the seed, step and micro batch only (not
    the rank: under ZeRO-3 both ranks generate together) at a rate of lmbda; the answers depend on their seed only,
    end at the first stop id, and are the only labelled tokens of their rows."""
    engine, objective, tok, batch = _objective(tmp_path, True, lmbda=0.3)
    draws = [objective.on_own_answers(step, micro) for step in range(300) for micro in range(2)]
    assert 0.24 < sum(draws) / len(draws) < 0.36
    assert draws == [objective.on_own_answers(step, micro) for step in range(300) for micro in range(2)]
    objective.lmbda = 0.0
    assert not any(objective.on_own_answers(step, 0) for step in range(50))
    cpu = torch.device("cpu")
    first, cut = objective.student_answers(engine, batch, cpu, seed=4)
    again, _ = objective.student_answers(engine, batch, cpu, seed=4)
    other, _ = objective.student_answers(engine, batch, cpu, seed=5)
    assert torch.equal(first["input_ids"], again["input_ids"]) and not torch.equal(first["input_ids"],
                                                                                   other["input_ids"])
    stops = set(objective.sampler.stop_ids)
    for row, labels, truncated in zip(first["input_ids"], first["labels"], cut.tolist()):
        answer = labels[labels != -100].tolist()
        assert 0 < len(answer) <= 10 and row.tolist()[:len(row)].count(answer[0]) >= 1
        assert truncated == (answer[-1] not in stops) and not stops & set(answer[:-1])


# ---------------------------------------------------------------- refusals
def test_bad_settings_and_teachers_of_another_vocabulary_are_refused(tmp_path):
    from types import SimpleNamespace

    from sft.config import SFTConfig
    from sft.distill import check_teacher
    from zhllama.config import load_config

    with pytest.raises(UserError) as bad:
        load_config(SFTConfig, CONFIG, ["distill.teacher=null", "distill.beta=2", "distill.lmbda=-1",
                                        "distill.temperature=0", "distill.top_p=0", "data.packing=true",
                                        "distill.lmbda=0.5", "distill.max_new_tokens=128"])
    for expected in ("distill.teacher: required", "beta: expected a value in [0, 1]",
                     "temperature: expected a value in (0, 10]", "top_p: expected a value in (0, 1]",
                     "data.packing: not with distill.lmbda > 0", "distill.max_new_tokens: 128 leaves no room"):
        assert expected in str(bad.value), str(bad.value)
    cfg = load_config(SFTConfig, CONFIG, ["data.packing=true", "distill.lmbda=0"])  # the data's answers: packed
    assert cfg.data.packing
    tok_dir = tiny_tokenizer(tmp_path / "tok")
    student = tiny_model(tmp_path / "student", tok_dir)
    from engine.tiny import make_tiny_tokenizer

    other_tok = make_tiny_tokenizer(tmp_path / "other_tok",
                                    ["完全不同的文本，另一个词表。" * 3, "Other words here."] * 30)
    other = tiny_model(tmp_path / "other", other_tok)
    settings = lambda teacher: SimpleNamespace(distill=SimpleNamespace(teacher=str(teacher)),  # noqa: E731
                                               model=SimpleNamespace(path=str(student)))
    tok = load_tokenizer(tok_dir)
    with pytest.raises(UserError, match="is not the student's .* tokens have other ids"):
        check_teacher(settings(other), tok)
    with pytest.raises(UserError, match="is not a model folder"):
        check_teacher(settings(tmp_path / "nowhere"), tok)
    wide = tmp_path / "wide"
    shutil.copytree(student, wide)
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))
    with pytest.raises(UserError, match="output rows, the student"):
        check_teacher(settings(wide), tok)
    check_teacher(settings(student), tok)  # itself: the same ids


# ---------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    tok = tiny_tokenizer(root / "tok")
    student = tiny_model(root / "student", tok, seed=2)
    # the student's own weights with a 4x sharper output layer: a teacher it can reach in a few steps (a random
    # teacher of another shape is a function a tiny student learns slowly)
    teacher = _sharpened(Path(shutil.copytree(student, root / "teacher")), 4.0)
    data = write_json(root / "zh.json", [{**r, "instruction": f"{r['instruction']}（{i}）"}
                                         for i in range(5) for r in ZH_RECORDS])
    return root, student, teacher, data


def _train(root: Path, setup_paths, out: Path, ranks: int, *extra: str) -> str:
    _, student, teacher, data = setup_paths
    proc = sft_train(torchrun_launch(ranks), "--config", str(CONFIG), f"model.path={student}",
                     f"distill.teacher={teacher}", f"output_dir={out}", f"data.cache_dir={root / 'cache'}",
                     f"data.files=[{{path: '{data}'}}]", "data.eval_fraction=0.25", "distill.max_new_tokens=12",
                     "optim.lr=1e-2", *extra)
    return proc.stdout + proc.stderr


@pytest.mark.distributed
def test_two_rank_zero3_distillation_brings_the_student_to_the_teacher(setup):
    """Teacher and student partitioned over 2 ranks: the held-out divergence on the data's answers falls by 40%
    (that on the student's greedy answers is logged: they change as it learns); both kinds of micro batch were
    trained on; the card names the teacher."""
    root = setup[0]
    out = root / "run"
    log = _train(root, setup, out, 2, "schedule.max_steps=16", "eval.every_steps=16", "distill.lmbda=0.5")
    evals = [r for r in read_metrics(out) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 16]
    assert evals[-1]["eval/loss"] < 0.6 * evals[0]["eval/loss"], evals
    assert all(0 < r["eval/divergence_own"] < 1 for r in evals), evals
    logged = [r for r in read_metrics(out) if "train/own_share" in r]
    assert len(logged) == 16 and {0.0, 1.0} <= {r["train/own_share"] for r in logged}
    assert all(0 < r["train/answer_tokens"] <= 12 for r in logged if "train/answer_tokens" in r)
    assert "distillation: generalized JSD, beta 0.5 to the teacher" in log
    report = json.loads((out / "final" / "train_report.json").read_text())
    assert report["data"]["stage"] == "distill" and report["data"]["teacher"] == str(setup[2])
    card = (out / "final" / "README.md").read_text()
    assert f"from the teacher `{setup[2]}` (generalized JSD, beta 0.5)" in card, card


def test_resume_ends_as_the_uninterrupted_run(setup):
    """Checkpoint at step 3 of 6; the resumed run draws the same micro batches, writes the same answers and ends at
    the same weights (forward KL on data and own answers)."""
    from safetensors.torch import load_file

    root = setup[0]
    out, resumed = root / "one_rank", root / "resumed"
    common = ("schedule.max_steps=6", "checkpoint.every_steps=3", "checkpoint.keep_last=2", "eval.at_start=false",
              "eval.every_steps=0", "distill.beta=0", "distill.lmbda=0.5")
    _train(root, setup, out, 1, *common)
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("final", "train_report.json", "step-00000006"))
    log = _train(root, setup, resumed, 1, *common)
    assert "resuming from step-00000003" in log, log[-3000:]
    want = [r for r in read_metrics(out) if "train/own_share" in r]
    got = [r for r in read_metrics(resumed) if "train/own_share" in r]
    assert {r["train/own_share"] for r in want} == {0.0, 1.0}
    for key in ("train/loss", "train/own_share"):
        assert [r[key] for r in got[-3:]] == [r[key] for r in want[-3:]], key
    got_w, want_w = (load_file(str(next((d / "final").glob("*.safetensors")))) for d in (resumed, out))
    for name in want_w:
        torch.testing.assert_close(got_w[name], want_w[name], rtol=0, atol=1e-6, msg=name)
