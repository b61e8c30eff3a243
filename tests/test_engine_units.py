"""Engine pieces without launching ranks: data order, schedule, checkpoint discovery, pre-flight checks."""
from __future__ import annotations

import json

import pytest

from engine import checkpoint
from engine.config import TrainConfig
from engine.data import StepPlan, eval_batches
from zhllama.config import load_config
from zhllama.errors import UserError


def test_data_order_is_a_function_of_seed_and_step():
    plan = StepPlan(num_samples=50, micro_batch_size=2, accumulation=3, world_size=2, seed=7)
    assert plan.steps_per_epoch == 4  # 50 // 12, the incomplete batch is dropped
    epoch0 = [i for step in range(4) for r in range(2) for mb in plan.micro_batches(step, r) for i in mb]
    assert len(epoch0) == len(set(epoch0)) == 48  # ranks and micro batches never overlap within an epoch
    again = StepPlan(50, 2, 3, 2, seed=7)
    assert again.micro_batches(5, 1) == plan.micro_batches(5, 1)  # a resumed run sees the same batches
    assert StepPlan(50, 2, 3, 2, seed=8).micro_batches(0, 0) != plan.micro_batches(0, 0)
    assert plan.micro_batches(4, 0) != plan.micro_batches(0, 0)  # a new epoch, a new order


def test_grpo_iterations_give_consecutive_steps_the_same_batch_and_count_epochs_in_batches():
    once = StepPlan(50, 2, 3, 2, seed=7)
    plan = StepPlan(50, 2, 3, 2, seed=7, repeat=3)
    for step in range(12):  # steps 3g, 3g+1, 3g+2 train on the batch an unrepeated run gives step g
        assert [plan.micro_batches(step, r) for r in range(2)] == [once.micro_batches(step // 3, r) for r in range(2)]
    assert plan.total_steps(0, 2.0) == 3 * once.total_steps(0, 2.0) == 24  # two passes over the prompts
    assert plan.total_steps(10, 2.0) == 10


def test_eval_batches_give_every_rank_the_same_number_of_forwards():
    per_rank = [list(eval_batches(7, 2, r, 3, None)) for r in range(3)]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    seen = sorted(i for batches in per_rank for b in batches for i in b)
    assert seen == list(range(7))
    assert per_rank[1][1] == []  # nothing left: the loop runs a zero-weight dummy forward


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    from engine.schedule import lr_factor

    cfg = load_config(TrainConfig, None, ["model.path=x", "schedule.warmup_steps=4", "schedule.min_lr_ratio=0.1"])
    f = lr_factor(cfg.schedule, total_steps=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_only_complete_checkpoints_are_resumed(tmp_path):
    root = checkpoint.checkpoints_dir(tmp_path)
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = root / checkpoint.tag_for(step)
        folder.mkdir(parents=True)
        (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (folder / checkpoint.MARKER).write_text(json.dumps({"step": step, "world_size": 2}))
    assert checkpoint.find_resume(tmp_path, "auto") == root / "step-00000008"
    assert checkpoint.find_resume(tmp_path, "never") is None
    with pytest.raises(UserError, match="not a complete checkpoint"):
        checkpoint.find_resume(tmp_path, str(root / "step-00000012"))
    assert checkpoint.remove_incomplete(tmp_path) == [root / "step-00000012"]
    with pytest.raises(UserError, match="written by 2 ranks, this run has 4, and it records no settings"):
        checkpoint.check_resumable(root / "step-00000008", 4, None)


def _tiny(tmp_path, rows=None):
    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    tok = make_tiny_tokenizer(tmp_path / "tok")
    model = make_tiny_model(tmp_path / "model", tok)
    if rows is not None:  # pretend the model was not resized for this tokenizer
        config = json.loads((model / "config.json").read_text())
        config["vocab_size"] = rows
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "architectures"})).save_pretrained(model)
    return model


def test_refuses_a_model_whose_embeddings_do_not_match_the_tokenizer(tmp_path):
    from engine.model import check_model_folder

    model = _tiny(tmp_path, rows=400)
    cfg = load_config(TrainConfig, None, [f"model.path={model}"])
    with pytest.raises(UserError, match="python -m vocab resize") as err:
        check_model_folder(cfg)
    assert "400" in str(err.value) and "512" in str(err.value)
    cfg = load_config(TrainConfig, None, [f"model.path={tmp_path / 'nothing'}"])
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        check_model_folder(cfg)


def test_new_rows_only_reads_the_base_size_from_the_resize_report(tmp_path):
    from engine.model import base_vocab_size

    (tmp_path / "resize_report.json").write_text(json.dumps({"old_vocab_size": 32000, "new_vocab_size": 49953}))
    cfg = load_config(TrainConfig, None, [f"model.path={tmp_path}", "mode=embeddings",
                                          "embeddings.train_new_rows_only=true"])
    assert base_vocab_size(cfg) == 32000
    (tmp_path / "resize_report.json").unlink()
    with pytest.raises(UserError, match="set embeddings.base_vocab_size"):
        base_vocab_size(cfg)
