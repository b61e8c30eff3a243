"""The end-of-run folder: a Hugging Face model (or LoRA adapter) + tokenizer, written atomically.

``full``/``embeddings``: consolidated safetensors loadable by AutoModelForCausalLM — the input of
the next stage. ``lora``: PEFT adapter whose file also holds the fully trained embed_tokens and
lm_head (PEFT's save_embedding_layers); ``python -m sft export`` merges it into a full model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from zhllama.files import atomic_output_dir, write_json_atomic
from zhllama.tokenizer_files import copy_tokenizer_files, copy_vocab_reports


def consolidated_state_dict(engine) -> dict | None:
    """Collective. Full state dict on rank 0 (None elsewhere)."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if dist.get_rank() == 0 else None


def save_final(engine, module, cfg, tokenizer_dir: Path, report: dict[str, Any]) -> Path:
    """Collective. Writes ``output_dir/final`` and returns its path."""
    from .guards import check_state_dict

    state_dict = consolidated_state_dict(engine)
    final = Path(cfg.output_dir) / "final"
    check_state_dict(state_dict, str(final))  # collective: a NaN model is never written as the result
    if dist.get_rank() == 0:
        _restore_use_cache(module, cfg.model.path)
        with atomic_output_dir(final, overwrite=True) as tmp:
            extra = {"save_embedding_layers": bool(cfg.lora.modules_to_save)} if cfg.mode == "lora" else {}
            module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, **extra)
            copy_tokenizer_files(tokenizer_dir, tmp)  # byte for byte: never re-saved by transformers
            copy_vocab_reports([cfg.model.path], tmp)  # the vocab provenance travels to the next stage
            write_json_atomic(tmp / "train_report.json", report)
    dist.barrier()
    return final


def _restore_use_cache(module, model_path: str) -> None:
    """Training turns the KV cache off (engine/model.py); the result must generate with it, as its base did."""
    config_file = Path(model_path) / "config.json"
    try:
        use_cache = json.loads(config_file.read_text(encoding="utf-8")).get("use_cache", True)
    except (OSError, ValueError):
        use_cache = True
    config = getattr(module, "config", None)
    if config is not None:
        config.use_cache = use_cache
