"""A chat model without instruction tuning: the chat vector (Huang et al., 2024, "Chat Vector").

    plan = plan_chat_vector(target="outputs/zh-pt-merged", base="llama-2-7b", chat="llama-2-7b-chat")
    report = write_chat_vector(plan, "outputs/zh-chat", ratio=1.0)

The weights a chat model's maker added to its base by instruction tuning and RLHF (chat - base) are
added to a model continued-pretrained from the same base (target + ratio x (chat - base)): the target
keeps its Chinese and gains the chat model's instruction following and template. Tensor by tensor
(never a whole model in memory), in float32, stored in the target's dtype.

A vocabulary extension keeps the base's ids (``vocab merge`` guarantees it, checked here token by
token), so the embedding and output rows the base had receive their vector and the new rows stay as
the target trained them; ``embeddings="skip"`` leaves both matrices as the target has them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zhllama.errors import UserError, raise_if_problems
from zhllama.model_folder import (TensorInfo, list_tensors, read_model_config, require_model_folder, vocab_holder,
                                  weight_files)

EMBEDDING_MODES = ("add", "skip")


@dataclass
class ChatVectorPlan:
    target: Path
    base: Path
    chat: Path
    tensors: dict[str, tuple[TensorInfo, TensorInfo, TensorInfo]]  # name -> (target, base, chat)
    vocab_rows: dict[str, int] = field(default_factory=dict)  # a row per token (embeddings, head): the base's rows


def _listing(folder: Path) -> dict[str, TensorInfo]:
    return {info.name: info for info in list_tensors(weight_files(folder))}


def plan_chat_vector(target: str | Path, base: str | Path, chat: str | Path) -> ChatVectorPlan:
    """Check the three models fit together (every problem at once) and pair their tensors."""
    folders = [require_model_folder(f, flag) for f, flag in ((target, "--target"), (base, "--base"), (chat, "--chat"))]
    mine, theirs, chatted = (_listing(f) for f in folders)
    problems = [f"{flag}: has no tensor {name}" for flag, listing in (("--base", theirs), ("--chat", chatted))
                for name in sorted(set(mine) - set(listing))[:5]]
    problems += [f"--target: has no tensor {name} (the base has it)" for name in sorted(set(theirs) - set(mine))[:5]]
    base_vocab = vocab_holder(read_model_config(folders[1]), folders[1])["vocab_size"]
    pairs, vocab_rows = {}, {}
    for name in (n for n in mine if n in theirs and n in chatted):
        t, b, c = mine[name], theirs[name], chatted[name]
        per_token = len(b.shape) == 2 and b.shape[0] == base_vocab
        if b.shape != c.shape:
            problems.append(f"{name}: {b.shape} in --base but {c.shape} in --chat (a chat model of another base?)")
        elif t.shape != b.shape and not (per_token and t.shape[1] == b.shape[1] and t.shape[0] > b.shape[0]):
            problems.append(f"{name}: {t.shape} in --target but {b.shape} in --base (not trained from this base)")
        if per_token:
            vocab_rows[name] = b.shape[0]  # rows past the base's (an extended vocabulary) are new: left as they are
        pairs[name] = (t, b, c)
    raise_if_problems("chat vector", problems, limit=10)
    return ChatVectorPlan(*folders, pairs, vocab_rows)


def check_tokenizers(plan: ChatVectorPlan) -> list[str]:
    """Notes; UserError when an id the base had means another token in the target or in the chat model
    (the rows would not line up: the vector would move one token's embedding onto another)."""
    from transformers import AutoTokenizer

    vocab = {name: AutoTokenizer.from_pretrained(str(folder)).get_vocab()
             for name, folder in (("target", plan.target), ("base", plan.base), ("chat", plan.chat))}
    token_of = {name: {i: t for t, i in v.items()} for name, v in vocab.items()}
    base_ids = sorted(token_of["base"])
    problems = []
    for other in ("target", "chat"):
        moved = [i for i in base_ids if token_of[other].get(i) != token_of["base"][i]]
        if moved:
            i = moved[0]
            problems.append(f"--{other}: {len(moved):,} of the base's {len(base_ids):,} ids are other tokens there "
                            f"(id {i} is {token_of[other].get(i)!r}, in the base {token_of['base'][i]!r})")
    raise_if_problems("chat vector tokenizers", problems)
    notes = []
    extra_chat = sorted(set(token_of["chat"]) - set(token_of["base"]))
    missing = [token_of["chat"][i] for i in extra_chat if token_of["chat"][i] not in vocab["target"]]
    if missing:
        raise UserError(f"--chat adds tokens the target lacks ({', '.join(missing[:5])}): its template needs them")
    if len(vocab["target"]) > len(vocab["base"]):
        notes.append(f"target vocabulary {len(vocab['target']):,} = base {len(vocab['base']):,} + "
                     f"{len(vocab['target']) - len(vocab['base']):,} new: the base's ids verified identical")
    return notes


def _delta_function(plan: ChatVectorPlan, ratio: float, embeddings: str):
    """``transform(name, stored target tensor)`` for the checkpoint writer: target + ratio x (chat - base)."""
    import torch
    from safetensors import safe_open

    handles: dict[Path, object] = {}

    def read(info: TensorInfo) -> torch.Tensor:
        if info.file not in handles:
            handles[info.file] = safe_open(str(info.file), framework="pt")
        return handles[info.file].get_tensor(info.name).float()

    def transform(name: str, stored: torch.Tensor) -> torch.Tensor:
        _, b, c = plan.tensors[name]
        rows = plan.vocab_rows.get(name)
        if rows is not None and embeddings == "skip":
            return stored
        vector = (read(c) - read(b)) * ratio
        out = stored.float()
        out[: vector.shape[0]] += vector  # an extended vocabulary's new rows get nothing
        return out.to(stored.dtype)

    return transform


def write_chat_vector(plan: ChatVectorPlan, out: str | Path, *, ratio: float = 1.0, embeddings: str = "add",
                      overwrite: bool = False, max_shard_bytes: int = 5 * 10**9, progress=None) -> dict:
    """The target with the chat vector added, as a model folder: the target's config and tokenizer, the
    chat model's chat template and generation settings; ``chat_vector_report.json`` says what made it (the
    target's lineage included) and the README.md model card tells it."""
    import shutil

    from zhllama.files import atomic_output_dir, write_json_atomic
    from zhllama.model_card import lineage_of, write_model_card
    from zhllama.model_fingerprint import model_fingerprint
    from zhllama.safetensors_io import write_checkpoint
    from zhllama.tokenizer_files import copy_tokenizer_files, copy_vocab_reports

    notes = check_tokenizers(plan)
    template = _chat_template(plan.chat)
    infos = [t for t, _, _ in plan.tensors.values()]
    with atomic_output_dir(out, overwrite) as tmp:
        files = write_checkpoint(tmp, infos, {}, max_shard_bytes, progress, _delta_function(plan, ratio, embeddings))
        shutil.copyfile(plan.target / "config.json", tmp / "config.json")
        generation = next((f / "generation_config.json" for f in (plan.chat, plan.target)
                           if (f / "generation_config.json").is_file()), None)
        if generation is not None:
            shutil.copyfile(generation, tmp / "generation_config.json")
        copy_tokenizer_files(plan.target, tmp)
        copy_vocab_reports([plan.target], tmp)
        if template is not None:
            from .chat_templates import set_chat_template

            set_chat_template(tmp, template)
        else:
            notes.append("--chat has no chat template: give one when generating (sft generate --template NAME)")
        report = {"kind": "chat vector", "ratio": ratio, "embeddings": embeddings,
                  "target": {"path": str(plan.target), "fingerprint": model_fingerprint(plan.target)},
                  "base": {"path": str(plan.base), "fingerprint": model_fingerprint(plan.base)},
                  "chat": {"path": str(plan.chat), "fingerprint": model_fingerprint(plan.chat)},
                  "tensors": len(infos), "per_token_tensors": plan.vocab_rows,
                  "new_rows_left_as_trained": {n: plan.tensors[n][0].shape[0] - rows for n, rows in plan.vocab_rows.items()
                                               if plan.tensors[n][0].shape[0] > rows},
                  "chat_template_from": str(plan.chat) if template is not None else None, "weight_files": files,
                  "notes": notes, "lineage": lineage_of(plan.target)}
        write_json_atomic(tmp / "chat_vector_report.json", report)
        write_model_card(tmp, Path(out).name)  # after the template: the card shows chat usage
    return report


def _chat_template(folder: Path) -> str | None:
    from transformers import AutoTokenizer

    template = getattr(AutoTokenizer.from_pretrained(str(folder)), "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None
