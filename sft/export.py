"""Merge a LoRA run (adapter + fully trained embed_tokens/lm_head) into its base: a plain HF folder.

The vocabulary check comes first, because the classic failure of this step is a size mismatch:
Chinese-LLaMA's merged tokenizer has 49,953 tokens and Chinese-Alpaca's adds ``<pad>`` (49,954).
A LoRA trained on the 49,954-token model carries 49,954-row embeddings (modules_to_save) and
cannot be loaded into a 49,953-row base. Here: when the adapter's full embedding matrices have as
many rows as the run's tokenizer has tokens, the base is resized to that size first (every row is
then overwritten by the adapter's trained matrices, so nothing is invented); any other mismatch is
refused with the three numbers and what they mean.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhllama.errors import UserError
from zhllama.model_folder import require_model_folder
from zhllama.files import atomic_output_dir, write_json_atomic
from zhllama.model_card import write_model_card
from zhllama.tokenizer_files import copy_tokenizer_files, copy_vocab_reports

from .chat_templates import install_chat_template
from .templates import TEMPLATE_FILE, TemplateSpec, stop_ids

ADAPTER_CONFIG = "adapter_config.json"
SFT_DATA_REPORT = "sft_data_report.json"  # sft/train_cli.py writes it into every SFT run
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class ExportReport:
    base: str
    adapter: str
    kind: str  # "lora-merge" or "full-copy"
    base_rows: int = 0
    adapter_embedding_rows: dict[str, int] = field(default_factory=dict)
    tokenizer_tokens: int = 0
    resized_base_to: int | None = None
    notes: list[str] = field(default_factory=list)
    forced: bool = False  # --force: merged although the base is not the one the run recorded
    template: str | None = None  # None: a pretraining run, exported as a base model (no chat template)


def find_run_folder(run_output: str | Path) -> Path:
    """The folder holding the trained weights: RUN/final (engine layout) or RUN itself."""
    run_output = Path(run_output)
    for candidate in (run_output / "final", run_output):
        if (candidate / ADAPTER_CONFIG).is_file() or (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"--adapter {run_output}: neither it nor {run_output / 'final'} holds a PEFT adapter "
                    f"({ADAPTER_CONFIG}) or a model (config.json); pass the output_dir of `sft train`")


def adapter_embedding_rows(adapter_dir: Path) -> dict[str, int]:
    """Rows of the full embedding/lm_head matrices an adapter carries (modules_to_save)."""
    rows: dict[str, int] = {}
    path = adapter_dir / _ADAPTER_WEIGHTS[0]
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    else:
        import torch

        state = torch.load(adapter_dir / _ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True)
        shapes = {k: list(v.shape) for k, v in state.items()}
    for key, shape in shapes.items():
        if "lora_" in key:
            continue
        for module in ("embed_tokens", "lm_head"):
            if f".{module}." in f".{key}" and len(shape) == 2:
                rows[module] = int(shape[0])
    return rows


def _vocab_message(base_rows: int, adapter_rows: dict[str, int], tokens: int) -> str:
    return (
        f"vocabulary sizes disagree: the base model has {base_rows} embedding rows, the adapter carries "
        f"{adapter_rows or 'no'} full embedding rows, the run's tokenizer has {tokens} tokens. "
        "They must describe the same vocabulary. The classic case: Chinese-LLaMA's tokenizer has 49,953 "
        "tokens and Chinese-Alpaca's adds <pad> (49,954); a LoRA trained with one cannot be merged into a "
        "model resized for the other. Merge into the base the run was trained from (its tokenizer is in "
        "the run's final/ folder), or resize the base to that tokenizer first "
        "(python -m vocab resize --model BASE --tokenizer RUN/final --out NEW_BASE)."
    )


def _template_for(run_dir: Path, run_output: Path, template: str | None, tokenizer: Any) -> TemplateSpec | None:
    """The run's chat template; None for a pretraining run (`pretrain train` writes no SFT data report):
    its merge is a base model, with no chat template to advertise."""
    from .templates import make_spec

    if template is not None:
        return make_spec(template, tokenizer)
    for folder in (run_dir, run_output):
        if (folder / TEMPLATE_FILE).is_file():
            return TemplateSpec.load(folder)
    if not any((folder / SFT_DATA_REPORT).is_file() for folder in (run_output, run_dir.parent)):
        return None
    raise UserError(f"{run_output}: an `sft train` run without {TEMPLATE_FILE}; pass --template NAME")


def export_merged(base: str | Path, run_output: str | Path, out: str | Path, *, template: str | None = None,
                  overwrite: bool = False, force: bool = False) -> ExportReport:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, run_output = Path(base), Path(run_output)
    require_model_folder(base, "--base")
    run_dir = find_run_folder(run_output)
    tok_dir = run_dir if (run_dir / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    spec = _template_for(run_dir, run_output, template, tokenizer)
    is_lora = (run_dir / ADAPTER_CONFIG).is_file()
    report = ExportReport(str(base), str(run_dir), "lora-merge" if is_lora else "full-copy",
                          tokenizer_tokens=len(tokenizer), template=spec.name if spec else None)
    if spec is None:
        report.notes.append("a pretraining run: exported as a base model, without a chat template "
                            "(generate/chat need --template; SFT starts from it)")
    if is_lora:
        from .export_base import check_base

        report.notes.extend(check_base(base, run_dir, force))
        report.forced = force
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        report.base_rows = model.get_input_embeddings().weight.shape[0]
        report.adapter_embedding_rows = adapter_embedding_rows(run_dir)
        model = _merge(model, run_dir, report)
        _apply_run_context(model, run_dir, report)
    else:  # mode=full/embeddings runs are already whole models: re-save with the template
        model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=torch.float32)
        report.base_rows = model.get_input_embeddings().weight.shape[0]
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UserError(_vocab_message(report.base_rows, report.adapter_embedding_rows, len(tokenizer)))
    if len(tokenizer) < rows:
        report.notes.append(f"{rows - len(tokenizer)} embedding rows beyond the tokenizer's {len(tokenizer)} "
                            "tokens (padding rows, e.g. pad_to_multiple_of): never produced, harmless")
    stops = stop_ids(tokenizer, spec) if spec else [tokenizer.eos_token_id]
    if len(stops) > 1:  # generation_config.json: transformers, vLLM and TGI then stop where a reply ends
        model.generation_config.eos_token_id = stops
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer_files(tok_dir, tmp)  # byte for byte, as the run read it
        copy_vocab_reports((run_dir, base), tmp)
        if spec is not None:
            spec.save(tmp)
            install_chat_template(tmp, spec)  # for llama.cpp / vLLM / Ollama chat modes
        write_json_atomic(tmp / "export_report.json", report.__dict__)
        if (run_dir / "train_report.json").is_file():  # what trained it travels with it (lineage, model card)
            shutil.copyfile(run_dir / "train_report.json", tmp / "train_report.json")
        write_model_card(tmp, Path(out).name)
    return report


def _apply_run_context(model: Any, run_dir: Path, report: ExportReport) -> None:
    """A run's ``model.rope_scaling`` / ``max_position_embeddings`` live in its settings, not in the adapter: the
    merged model gets them, or a 16K-trained adapter would be served with the base's 4K positions."""
    from zhllama.rope import apply_scaling, describe_scaling

    try:
        settings = json.loads((run_dir / "train_report.json").read_text(encoding="utf-8")).get("settings") or {}
    except (OSError, ValueError):
        return
    scaling, positions = settings.get("model.rope_scaling") or {}, settings.get("model.max_position_embeddings")
    if not scaling and positions is None:
        return
    text = getattr(model.config, "text_config", None) or model.config
    before = text.max_position_embeddings
    apply_scaling(model.config, scaling, positions)
    kind = describe_scaling(scaling) or "the run's positions"
    report.notes.append(f"{kind} from the run's settings: positions {before} -> {text.max_position_embeddings}")


def _merge(model: Any, adapter_dir: Path, report: ExportReport):
    from peft import PeftModel

    base_rows, carried = report.base_rows, report.adapter_embedding_rows
    sizes = set(carried.values())
    if len(sizes) > 1:
        raise UserError(f"{adapter_dir}: the adapter's embed_tokens and lm_head disagree on rows: {carried}")
    if sizes and sizes != {base_rows}:
        (adapter_rows,) = sizes
        if adapter_rows != report.tokenizer_tokens:
            raise UserError(_vocab_message(base_rows, carried, report.tokenizer_tokens))
        # Every row comes from the adapter's trained matrices; resizing only makes the shapes agree.
        if "lm_head" not in carried and model.get_output_embeddings() is not None and not model.config.tie_word_embeddings:
            raise UserError(_vocab_message(base_rows, carried, report.tokenizer_tokens)
                            + " (the adapter has embed_tokens but no lm_head, so new output rows would be untrained)")
        model.resize_token_embeddings(adapter_rows, mean_resizing=False)
        report.resized_base_to = adapter_rows
        report.notes.append(f"base resized {base_rows} -> {adapter_rows} rows to match the adapter's trained matrices")
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    except RuntimeError as exc:  # e.g. a base of another hidden size: the adapter's matrices do not fit
        first = str(exc).strip().splitlines()
        raise UserError(f"--adapter {adapter_dir} does not fit --base {report.base}: "
                        f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    return peft_model.merge_and_unload()


def summary(report: ExportReport) -> str:
    return json.dumps(report.__dict__, ensure_ascii=False, indent=2)
