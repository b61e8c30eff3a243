"""``objective: distill``: the teacher is checked against the student before anything loads, then given to the
engine's distillation objective (engine/distill.py) with the sampler that writes the student's answers.

The teacher must read and write the same ids as the student: the same tokenizer vocabulary (token -> id, every
entry) and the same number of output rows. A teacher of another family (Qwen teaching a LLaMA) has other ids,
and its distribution means nothing at the student's ids; such a teacher is refused, saying what differs.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from zhllama.errors import UserError


def _vocab_size(folder: Path) -> int | None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    return text.get("vocab_size")


def check_teacher(cfg, tokenizer: Any) -> None:
    """Refuse a teacher folder that is missing or whose ids differ from the student's."""
    from transformers import AutoTokenizer

    teacher = Path(cfg.distill.teacher)
    if not (teacher / "config.json").is_file():
        raise UserError(f"distill.teacher: {teacher} is not a model folder (no config.json)")
    try:
        theirs = AutoTokenizer.from_pretrained(str(teacher))
    except (OSError, ValueError) as exc:
        raise UserError(f"distill.teacher: {teacher} has no tokenizer to compare with the student's ({exc}); "
                        "copy the tokenizer files it was trained with into the folder") from None
    ours_vocab, theirs_vocab = tokenizer.get_vocab(), theirs.get_vocab()
    if ours_vocab != theirs_vocab:
        differ = sorted(t for t in set(ours_vocab) | set(theirs_vocab) if ours_vocab.get(t) != theirs_vocab.get(t))
        shown = ", ".join(f"{t!r}: {ours_vocab.get(t)} vs {theirs_vocab.get(t)}" for t in differ[:5])
        raise UserError(f"distill.teacher: {teacher}'s tokenizer ({len(theirs_vocab):,} tokens) is not the student's "
                        f"({len(ours_vocab):,}): {len(differ):,} tokens have other ids ({shown}, ...). The teacher's "
                        "distribution is over its own ids; distil from a teacher with the student's vocabulary "
                        "(e.g. one trained from the same extended base)")
    student_rows, teacher_rows = _vocab_size(Path(cfg.model.path)), _vocab_size(teacher)
    if student_rows != teacher_rows:
        raise UserError(f"distill.teacher: {teacher} has {teacher_rows} output rows, the student {student_rows}; both "
                        "must score the same ids (resize one: python -m vocab resize)")


def distill_objective(cfg, tokenizer: Any, spec) -> Any:
    """The engine's objective: the teacher (checked, loaded later beside the student) and the student's sampler."""
    from engine.distill import DistillObjective
    from engine.grpo_reference import FrozenCopy
    from engine.model import load_model
    from engine.sampling import Sampler

    from .templates import pad_token_id, stop_ids

    check_teacher(cfg, tokenizer)
    teacher_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=cfg.distill.teacher,
                                                                     tokenizer=None, gradient_checkpointing=False))
    settings = cfg.distill
    sampler = Sampler(stop_ids(tokenizer, spec), pad_token_id(tokenizer), settings.max_new_tokens,
                      settings.temperature, settings.top_p, settings.gather_for_generation)
    return DistillObjective(teacher=FrozenCopy(lambda ds_config: load_model(teacher_cfg, ds_config)), sampler=sampler,
                            beta=settings.beta, lmbda=settings.lmbda, temperature=settings.temperature,
                            seed=cfg.seed, chunk_tokens=divergence_chunk(cfg.model.loss_chunk_tokens))


def divergence_chunk(loss_chunk_tokens: int) -> int:
    """Positions whose logits exist at a time in the divergence: a quarter of the cross-entropy's, since it holds
    four chunk-sized fp32 buffers (both models' log-probabilities and two more) where the cross-entropy holds one,
    so both peak alike (benchmarks/loss_memory.py --objective distill)."""
    return max(1, loss_chunk_tokens // 4)
