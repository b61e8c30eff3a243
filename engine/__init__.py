"""The one training engine (DeepSpeed ZeRO-3) shared by continued pretraining and SFT.

    from engine import TrainConfig, train

    @dataclass
    class SFTConfig(TrainConfig):          # the engine config + the phase's own data section
        data: SFTData = field(default_factory=SFTData)

    cfg = zhllama.config.load_config(SFTConfig, "sft/configs/x.yaml", overrides)
    metrics = train(cfg, train_ds, eval_ds, collate_fn,
                    eval_characters=None, data_fingerprint="...", tokenizer_fingerprint="...")

Datasets are map-style (``len`` and ``ds[i]``); ``collate_fn(list_of_items) -> dict`` of
LongTensors with ``input_ids`` and ``labels`` (-100 = not trained) and either ``position_ids``
(packed blocks: positions restart at 0 at each document, attention stays inside a document) or
``attention_mask`` (padded batches); ``collate_fn=None`` stacks equal-length items.
Launch with ``torchrun``/``deepspeed`` or plain ``python`` (one rank). Importing this package
does not import torch; ``train`` does.
"""
from __future__ import annotations

from typing import Any, Callable

from .config import (
    BatchConfig,
    CheckpointConfig,
    DeepSpeedConfig,
    EmbeddingsConfig,
    EvalConfig,
    LoggingConfig,
    LoraConfig,
    ModelConfig,
    MoeConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "BatchConfig", "CheckpointConfig", "DeepSpeedConfig", "EmbeddingsConfig", "EvalConfig",
    "LoggingConfig", "LoraConfig", "ModelConfig", "MoeConfig", "OptimConfig", "ScheduleConfig", "TrainConfig", "train",
]


def train(
    cfg: TrainConfig,
    train_dataset: Any,
    eval_dataset: Any | None,
    collate_fn: Callable[[list[dict]], dict] | None,
    *,
    eval_characters: int | None = None,
    data_fingerprint: str | None = None,
    tokenizer_fingerprint: str | None = None,
    eval_sets: dict[str, tuple[Any, int | None]] | None = None,
    objective: Any | None = None,
    provenance: dict | None = None,
) -> dict:
    """Train ``cfg.model.path`` on ``train_dataset`` under DeepSpeed; return the final metrics (every rank).

    - ``eval_characters``: characters of the eval split's text, for bits per character (None: not reported).
    - ``data_fingerprint``: content key of the data (recorded in checkpoints and refused on a resume
      that would silently continue on other data). Checkpoints and train_report.json also record
      every setting that decides the weights (``engine.settings``): a resume or re-run of a finished
      output_dir with other settings is refused, listing what changed.
    - ``tokenizer_fingerprint``: the tokenizer the data was made with; compared to the model's
      tokenizer before training (``zhllama.tokenizer_files.tokenizer_fingerprint``), mismatch = UserError.
    - ``eval_sets``: None reads the named held-out sets of ``cfg.eval.sets`` from their prepared
      folders (engine/packed.py); a dict ``{name: (dataset, characters)}`` of packed-block datasets
      supplies them instead (engine/watch.py). Benchmarks and the guard come from ``cfg.eval`` alone.
    - ``objective``: None trains on the next-token loss of the labelled tokens. Another objective
      (``engine.preference.DPOObjective``) supplies ``loss(engine, batch, device) -> (sum, count)``,
      ``evaluate(...)`` for the eval split, and ``prepare(...)``, run once before step 1 or on resume.
    - ``provenance``: what the data is (stage, manifests, sources with licenses), recorded as ``data`` in
      train_report.json; with the lineage of ``cfg.model.path`` it makes the model card (zhllama/model_card.py).

    Writes under ``cfg.output_dir``: ``checkpoints/step-N`` (resumable, ``complete.json`` last),
    ``metrics.jsonl``, ``tensorboard/``, ``wandb/``, ``loss_curve.png``, ``train_report.json``
    and ``final/`` — a Hugging Face model folder (safetensors + tokenizer); for ``mode=lora`` the
    PEFT adapter with the fully trained ``embed_tokens``/``lm_head`` (merge with ``sft export``).
    Returned dict: ``step``, ``train_loss``, ``eval_loss``, ``eval_perplexity``,
    ``eval_bits_per_char`` (when known), ``final_dir``, ``zero3_partition_numel`` (per rank) ...
    ``engine.loop.run_training`` takes the same arguments and also returns the live DeepSpeed engine.
    """
    from .loop import run_training

    return run_training(
        cfg, train_dataset, eval_dataset, collate_fn,
        eval_characters=eval_characters, data_fingerprint=data_fingerprint,
        tokenizer_fingerprint=tokenizer_fingerprint, eval_sets=eval_sets, objective=objective, provenance=provenance,
    ).metrics
