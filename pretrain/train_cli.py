"""Continued pretraining on DeepSpeed ZeRO-3 of a (resized) LLaMA-family model on prepared shards.

    python -m pretrain train --config pretrain/configs/tiny_cpu.yaml [key=value ...]
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m pretrain train --config pretrain/configs/tiny_cpu.yaml
    deepspeed --hostfile HOSTS --module pretrain train --config pretrain/configs/llama2_7b_8xA100.yaml

Settings: the engine's (engine/config.py) plus ``data.dir`` (the folder written by
``python -m pretrain prepare``). Named held-out sets (``eval.sets``: name, dir, split) are
other ``prepare`` folders, e.g. one per language, each logged with its bits per character
(``sft train`` reads them too). Overrides are dotted keys: ``mode=lora optim.lr=1e-4``.
Kill it at any time; the same command continues from the latest complete checkpoint.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from engine import TrainConfig


@dataclass
class PretrainData:
    dir: str = ""  # output folder of `python -m pretrain prepare`
    train_split: str = "train"  # split to train on
    eval_split: str | None = "validation"  # split for validation loss / bits per char; null: none

    def validate(self) -> list[str]:
        return [] if self.dir else ["dir: required (the folder written by `python -m pretrain prepare`)"]


@dataclass
class PretrainConfig(TrainConfig):
    data: PretrainData = field(default_factory=PretrainData)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zhllama.config_help import config_help

    parser.epilog = config_help(PretrainConfig)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. pretrain/configs/tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=1e-4")


def provenance(data_dir: str) -> dict:
    """The data for the model card: the prepared folder's manifest and its sources with their licenses."""
    from engine.packed import read_prepare_report

    report = read_prepare_report(data_dir)
    info = report.get("source_info") or {}
    return {"stage": "pretrain", "dir": str(data_dir), "manifests": [{
        "name": report["manifest"]["name"], "fingerprint": report["manifest"]["fingerprint"],
        "sources": [{"name": name, **info.get(name, {"license": None, "language": None})}
                    for name in report["sources"]]}]}


def run(args: argparse.Namespace) -> int:
    from zhllama.config import load_config

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    from engine import train
    from engine.packed import PackedDataset

    train_ds = PackedDataset(cfg.data.dir, cfg.data.train_split)
    eval_ds = PackedDataset(cfg.data.dir, cfg.data.eval_split) if cfg.data.eval_split else None
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None
    result = train(
        cfg, train_ds, eval_ds, None,
        eval_characters=eval_ds.characters if eval_ds is not None else None,
        data_fingerprint=train_ds.cache_key, tokenizer_fingerprint=train_ds.tokenizer_fingerprint,
        provenance=provenance(cfg.data.dir),
    )
    if result.get("world_size") is not None:
        import torch.distributed as dist

        if dist.get_rank() == 0:
            from zhllama.model_card import write_model_card

            write_model_card(result["final_dir"])
            shown = {k: result[k] for k in sorted(result) if k.startswith(("eval/", "train/loss"))}
            print(f"done: {result['final_dir']}  " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    return 0
