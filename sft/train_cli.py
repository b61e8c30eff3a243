"""Instruction tuning (Alpaca / multi-turn) on the pretraining engine: same modes, ZeRO-3, resume, logs.

    python -m sft train --config sft/configs/tiny_cpu.yaml [key=value ...]
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m sft train --config sft/configs/tiny_cpu.yaml
    deepspeed --hostfile HOSTS --module sft train --config sft/configs/chinese_alpaca2_7b_lora.yaml

Settings: the engine's (engine/config.py) plus ``data:`` (sft/config.py): a manifest (or
a list of files with weights), the template, max_seq_length, packing. ``objective: dpo`` trains on
preference pairs (``chosen``/``rejected``, sft/pairs.py) with DPO (engine/preference.py) instead,
``objective: kto`` on answers judged one by one (``label`` true/false, sft/kto.py) with KTO (engine/kto.py),
``objective: grpo`` on answers the model writes to prompts, scored by verifiable rewards
(sft/grpo_data.py, sft/rewards.py) with GRPO (engine/grpo.py), and ``objective: distill`` on a teacher's
next-token distributions over SFT records' answers and the model's own (sft/distill.py, engine/distill.py):

    python -m sft train --config sft/configs/dpo_tiny_cpu.yaml model.path=outputs/zh_sft_merged
    python -m sft train --config sft/configs/kto_tiny_cpu.yaml model.path=outputs/zh_sft_merged
    python -m sft train --config sft/configs/grpo_tiny_cpu.yaml model.path=outputs/zh_sft_merged
    python -m sft train --config sft/configs/distill_tiny_cpu.yaml model.path=STUDENT distill.teacher=TEACHER

Every record of every file is
validated before anything is tokenized or trained; files are tokenized once into a content-keyed
cache. Loss is on response tokens only. The template is saved with the model
(``output_dir/final/sft_template.json``) so ``sft export``/``generate``/``chat`` format prompts the
same way. A LoRA run's ``final/`` is an adapter: merge it with ``python -m sft export``.
``eval.sets`` (held-out ``pretrain prepare`` folders, e.g. zh and en text) and ``eval.benchmarks``
measure what instruction tuning costs, as in pretraining (README section 7).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from zhllama.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zhllama.config_help import config_help

    from .config import SFTConfig

    parser.epilog = config_help(SFTConfig)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. sft/configs/tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.packing=true")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def prepare(cfg):
    """Everything before the engine: tokenizer, template, validated + tokenized datasets, collator."""
    if cfg.objective == "grpo":
        return prepare_grpo(cfg)[:6]
    from .kto import ROWS, kto_units, read_examples
    from .mixture import build_datasets, read_and_validate, resolve_sources
    from .pairs import build_pair_datasets, read_pairs

    rows_in_pairs = cfg.objective not in ("sft", "distill")  # dpo: chosen/rejected; kto: an example and its mismatched answer
    sources = resolve_sources(cfg.data)
    read = {"sft": read_and_validate, "distill": read_and_validate, "dpo": read_pairs, "kto": read_examples}[cfg.objective]
    validated = sources, read(sources)  # every record checked first

    from .collate import SFTCollator
    from .pairs import PairCollator
    from .templates import pad_token_id

    tokenizer, spec, fingerprint = _tokenizer_and_template(cfg)
    if cfg.objective == "kto":
        train_ds, eval_ds, report = build_pair_datasets(cfg.data, tokenizer, spec, fingerprint, cfg.seed, validated,
                                                        units_of=kto_units, objective="kto", rows=ROWS)
        _balance_note(cfg, train_ds)
    else:
        build = build_pair_datasets if rows_in_pairs else build_datasets
        train_ds, eval_ds, report = build(cfg.data, tokenizer, spec, fingerprint, cfg.seed, validated)
    pad = pad_token_id(tokenizer)
    # Any id works as padding: padded positions are masked (attention_mask) and labelled -100, so
    # no <pad> token is added (adding one is what made Chinese-Alpaca 49,954 rows vs 49,953).
    collator = (PairCollator if rows_in_pairs else SFTCollator)(pad_token_id=pad,
                                                                pad_to_multiple_of=cfg.data.pad_to_multiple_of)
    return spec, fingerprint, train_ds, eval_ds, report, collator


def _tokenizer_and_template(cfg):
    """(tokenizer, template spec, tokenizer fingerprint) of the run's tokenizer folder."""
    from transformers import AutoTokenizer

    from engine.model import tokenizer_dir
    from zhllama.tokenizer_files import tokenizer_fingerprint

    from .templates import make_spec

    tok_dir = tokenizer_dir(cfg)
    if not tok_dir.is_dir():
        raise UserError(f"model.path / model.tokenizer: folder {tok_dir} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    return tokenizer, make_spec(cfg.data.template, tokenizer, cfg.data.system_prompt), tokenizer_fingerprint(tok_dir)


def prepare_grpo(cfg):
    """``objective: grpo``: validated prompts, their datasets and collator, and the objective that writes,
    scores and trains on the answers (engine/grpo.py)."""
    from engine.grpo import GRPOObjective
    from engine.grpo_clip import Clip
    from engine.grpo_reference import reference_for

    from .grpo_data import PromptCollator, build_prompt_datasets, read_prompts
    from .mixture import resolve_sources
    from .rewards import NEEDS_REFERENCE, RewardModel
    from .templates import pad_token_id, stop_ids

    settings = cfg.grpo
    sources = resolve_sources(cfg.data)
    validated = sources, read_prompts(sources, any(name in NEEDS_REFERENCE for name in settings.rewards))
    tokenizer, spec, fingerprint = _tokenizer_and_template(cfg)
    data = build_prompt_datasets(cfg.data, tokenizer, spec, fingerprint, cfg.seed, validated, settings.max_new_tokens)
    pad = pad_token_id(tokenizer)
    objective = GRPOObjective(
        reward=RewardModel(settings.rewards, data.references, data.records, judge_of(cfg, data)),
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop_ids=stop_ids(tokenizer, spec),
        pad_id=pad, generations=settings.generations, max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature, top_p=settings.top_p, scale_rewards=settings.scale_rewards,
        loss_kind=settings.loss, mask_truncated=settings.mask_truncated, seed=cfg.seed, beta=settings.beta,
        kl_correction=settings.kl_correction, reference=reference_for(cfg) if settings.beta else None,
        iterations=settings.iterations, clip=Clip(settings.epsilon, settings.epsilon_high, settings.delta,
                                                  settings.importance_sampling),
        dynamic_sampling=settings.dynamic_sampling, overlong_buffer=settings.overlong_buffer,
        overlong_penalty=settings.overlong_penalty, gather_for_generation=settings.gather_for_generation,
        top_entropy_quantile=settings.top_entropy_quantile, ref_sync_steps=settings.ref_sync_steps,
        ref_sync_alpha=settings.ref_sync_alpha)
    return spec, fingerprint, data.train, data.eval, data.report, PromptCollator(pad), objective


def judge_of(cfg, data):
    """GRPO's judge reward where ``grpo.rewards`` names it (sft/reward_judge.py); its replies are kept per rank in
    output_dir."""
    if "judge" not in cfg.grpo.rewards:
        return None
    from zhllama.openai_client import Endpoint, api_key

    from .reward_judge import JudgeReward

    judge = cfg.grpo.judge
    endpoint = Endpoint(judge.url, judge.model, api_key(judge.api_key_env))
    return JudgeReward(endpoint, data.conversations, data.references, data.records,
                       Path(cfg.output_dir) / f"judge_calls-rank{_rank()}.jsonl", judge.workers, judge.max_tokens)


def _balance_note(cfg, train_ds) -> None:
    """KTO's paper keeps (desirable weight x desirable count) : (undesirable weight x count) in [1, 4/3]."""
    good = sum(train_ds.flags)
    bad = len(train_ds.flags) - good
    ratio = cfg.kto.desirable_weight * good / max(cfg.kto.undesirable_weight * bad, 1e-9)
    if _rank() == 0:
        print(f"[sft] KTO: {good:,} desirable and {bad:,} undesirable training examples; weighted ratio {ratio:.3g}"
              + ("" if 1 <= ratio <= 4 / 3 else " (the KTO paper keeps it within 1 to 4/3: set kto.desirable_weight "
                 "or kto.undesirable_weight)"), flush=True)


def objective_of(cfg):
    """None (the engine's next-token loss on answers), DPO's, KTO's or distillation's objective."""
    if cfg.objective == "distill":
        from .distill import distill_objective

        return distill_objective(cfg, *_tokenizer_and_template(cfg)[:2])
    if cfg.objective == "kto":
        from engine.kto import KTOObjective

        return KTOObjective(beta=cfg.kto.beta, desirable_weight=cfg.kto.desirable_weight,
                            undesirable_weight=cfg.kto.undesirable_weight, kind=cfg.kto.loss)
    if cfg.objective != "dpo":
        return None
    from engine.preference import DPOObjective

    return DPOObjective(beta=cfg.dpo.beta, label_smoothing=cfg.dpo.label_smoothing, nll_weight=cfg.dpo.nll_weight,
                        kind=cfg.dpo.loss, simpo_gamma=cfg.dpo.simpo_gamma)


def provenance(cfg) -> dict:
    """The data for the model card: the manifest's sources with their licenses, or the files as listed."""
    out: dict = {"stage": cfg.objective}
    if cfg.objective == "grpo":  # the model card tells a step's prompts and the answers written to each
        out["answers_per_prompt"] = cfg.grpo.generations
        out["steps_per_answers"] = cfg.grpo.iterations
    if cfg.objective == "distill":
        from engine.distill import divergence_name

        out["teacher"], out["divergence"] = cfg.distill.teacher, divergence_name(cfg.distill.beta)
    if cfg.data.manifest:
        from corpora.manifest import load_manifest

        manifest = load_manifest(cfg.data.manifest)
        out["manifests"] = [{"name": manifest.name, "fingerprint": manifest.fingerprint(),
                             "sources": [{"name": s.name, "license": s.license, "language": s.language,
                                          "weight": s.weight} for s in manifest.sources]}]
    else:
        out["files"] = [{"path": str(f.path), "weight": f.weight} for f in cfg.data.files]
    return out


def run(args: argparse.Namespace) -> int:
    from zhllama.config import dump_config, load_config
    from zhllama.files import write_json_atomic

    from .config import SFTConfig

    cfg = load_config(SFTConfig, args.config, args.overrides)
    if cfg.objective == "grpo":
        spec, fingerprint, train_ds, eval_ds, report, collator, objective = prepare_grpo(cfg)
    else:
        spec, fingerprint, train_ds, eval_ds, report, collator = prepare(cfg)
        objective = objective_of(cfg)
    if _rank() == 0:
        print("[sft] data: " + json.dumps({"files": report.files, "train_samples": report.train_samples,
                                          "train_rows": report.train_rows, "eval_samples": report.eval_samples,
                                          "train_trainable_tokens": report.train_trainable_tokens},
                                         ensure_ascii=False), flush=True)
    if eval_ds is None and cfg.eval.every_steps and not (cfg.eval.sets or cfg.eval.benchmarks or cfg.eval.reading):
        cfg.eval.every_steps = 0
    from engine import train

    result = train(cfg, train_ds, eval_ds, collator, data_fingerprint=report.fingerprint,
                   tokenizer_fingerprint=fingerprint, objective=objective, provenance=provenance(cfg))
    if _rank() == 0:
        out = Path(cfg.output_dir)
        final = Path(result["final_dir"])
        spec.save(final)  # generation must format prompts exactly as training did
        from .chat_templates import install_chat_template
        from .export import SFT_DATA_REPORT

        install_chat_template(final, spec)  # other runtimes' chat modes format prompts the same way
        from zhllama.model_card import write_model_card

        write_model_card(final)  # after the template: the card shows chat usage
        spec.save(out)
        write_json_atomic(out / SFT_DATA_REPORT, asdict(report))  # also tells `sft export` it is an SFT run
        dump_config(cfg, out / "sft_config.yaml")
        shown = {k: result[k] for k in sorted(result) if k.startswith(("eval/", "train/loss"))}
        print(f"done: {final}  " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    return 0
