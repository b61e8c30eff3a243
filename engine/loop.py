"""The training run in four parts: ``preflight`` (checks, resume choice) → ``build`` (model, optimizer,
DeepSpeed) → ``fit`` (the loop: steps, eval, checkpoints, logs) → ``finish`` (export, report).

Why deepspeed.initialize directly and not the HF Trainer: the loop below is ~150 lines and owns
exactly what this project must guarantee — a data order keyed by (seed, step) so a resume replays
the same batches, checkpoints whose completion marker is written last (the Trainer's
``checkpoint-N`` folders look complete when half-written), a gradient mask for "new rows only",
and collective-safe evaluation under ZeRO-3 — without the Trainer's CPU workarounds
(ENV-NOTES). DeepSpeed still does all the distributed work: partitioning, reduction, clipping,
mixed precision, sharded checkpoint files, consolidation.
"""
from __future__ import annotations

import json
import random
import warnings
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zhllama.errors import Stopped, UserError
from zhllama.files import check_writable_dir, write_json_atomic
from zhllama.model_card import lineage_of
from zhllama.model_folder import first_layer_numel

from . import checkpoint, settings as run_settings
from .schedule import decay_start, lr_factor, only_schedule_changed
from .context import describe as describe_context
from .config import TrainConfig
from .data import StepPlan, default_collate, fetch
from .dist import build_ds_config, device, init_distributed, offloads, single_rank_zero3_hint
from .evaluate import forward_loss
from .guards import LossGuard, check_grad_norm, check_weights
from .export import save_final
from .kernels import apply_liger, resolve_attention
from .loss import install_fused_head
from . import moe
from .noise import install_embedding_noise
from .reshape import Reshape, as_reshaped, reshape_of
from .sequence_parallel import (WHOLE_ROWS, Groups, SequenceSplit, check_model as check_sequence_model,
                                install_attention, make_groups)
from .stop_signals import StopSignals
from .tiled_mlp import install_tiled_mlp
from .model import (DTYPES, apply_mode, check_model_folder, check_sequence_length, count_parameters,
                    load_model, param_groups, tokenizer_dir, zero3_fetch_units)
from .model import model_config as run_model_config
from .fit_state import Evaluation, FitState, Window
from .tracking import Tracker
from .watch import Watch, write_forgetting_report

def check_data_tokenizer(cfg: TrainConfig, data_tokenizer_fingerprint: str | None) -> None:
    """Refuse data made with another tokenizer: its ids would index the wrong embedding rows."""
    if data_tokenizer_fingerprint is None:
        return
    from zhllama.tokenizer_files import tokenizer_fingerprint

    mine = tokenizer_fingerprint(tokenizer_dir(cfg))
    if mine != data_tokenizer_fingerprint:
        raise UserError(
            f"the training data was prepared with another tokenizer (fingerprint {data_tokenizer_fingerprint[:12]}) "
            f"than the model's {tokenizer_dir(cfg)} ({mine[:12]}); re-run `python -m pretrain prepare` with this "
            f"tokenizer, or point model.tokenizer / model.path at the matching one"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(cfg: TrainConfig, module, ds_config: dict):
    groups = param_groups(cfg, module)
    kwargs = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    if offloads(ds_config, "optimizer"):  # ZeRO-Offload steps on the CPU with DeepSpeed's vectorised Adam
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    # A client torch optimizer: no op compilation (FusedAdam takes a minute to build on CPU).
    return torch.optim.AdamW(groups, fused=torch.cuda.is_available(), **kwargs)


def _partition_numel(module) -> list[int]:
    """Elements of parameters this rank holds, gathered from every rank (ZeRO-3: ds_tensor partitions)."""
    mine = sum((p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) for p in module.parameters())
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


@dataclass
class Plan:
    """What pre-flight decided: ranks, data order, length, and where to resume (or that all is done)."""

    rank: int
    world: int
    steps: StepPlan
    total_steps: int
    resume_from: Path | None = None
    marker: dict[str, Any] | None = None
    reshape: Reshape | None = None  # set when resuming on another number of ranks (engine/reshape.py)
    finished_report: dict[str, Any] | None = None  # set when output_dir already holds this finished run
    superseded: list[Path] = field(default_factory=list)  # a changed schedule's outdated checkpoints, set aside
    settings: dict[str, Any] = field(default_factory=dict)  # what decides the result (engine.settings)
    attention: str = ""  # the attention kernel in words (model.attn_implementation=auto resolved here)
    groups: Groups | None = None  # the ranks sharing each sequence, and the data ranks (engine/sequence_parallel.py)


@dataclass
class Built:
    engine: Any
    scheduler: Any
    trainable: int
    total_params: int
    partition: list[int]
    split: SequenceSplit = WHOLE_ROWS  # splits each micro batch over its sequence group (sequence parallelism)
    routers: Any = moe.NO_ROUTERS  # a mixture-of-experts model's load balance (engine/moe.py)


@dataclass
class TrainRun:
    """The result of ``run_training``: final metrics + report fields, and the live DeepSpeed engine
    (None when the run was already finished) for callers that inspect the trained state."""

    metrics: dict[str, Any]
    engine: Any = None


def _finished_report(cfg: TrainConfig, total_steps: int, data_fingerprint: str | None,
                     settings: dict[str, Any]) -> dict[str, Any] | None:
    finished = Path(cfg.output_dir) / "train_report.json"
    if cfg.checkpoint.resume != "auto" or not finished.is_file() or not (Path(cfg.output_dir) / "final").is_dir():
        return None
    try:
        report = json.loads(finished.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # not a report this engine wrote whole: decide from the checkpoints
    # Returning the old model for new settings would be a silently wrong answer.
    what, stored = f"the finished run in {cfg.output_dir}", report.get("settings")
    if stored is not None and reshape_of(what, stored, settings) is not None:  # same run, other ranks
        stored = as_reshaped(stored, settings)
    if stored is not None and only_schedule_changed(stored, settings):
        if not checkpoint.list_complete(cfg.output_dir):  # nothing to go on from; never overwrite the result
            raise UserError(f"{what} has another schedule and no checkpoint to continue from; use a new output_dir. "
                            f"Changed:", run_settings.changes(stored, settings))
        return None  # a longer schedule: its checkpoints decide whether the run can go on (engine/schedule.py)
    run_settings.check_same(what, stored, settings)
    if report.get("step") == total_steps and report.get("data_fingerprint") == data_fingerprint:
        return report
    return None


def preflight(cfg: TrainConfig, train_ds, eval_ds, data_fingerprint: str | None,
              tokenizer_fingerprint: str | None, repeat: int = 1) -> Plan:
    """Every check is deterministic, so all ranks fail together before any collective. ``repeat``: optimizer
    steps per global batch of data (GRPO's iterations)."""
    rank, world, _ = init_distributed()
    groups = make_groups(cfg.deepspeed.sequence_parallel)
    cfg.batch.resolve(groups.data_ranks)  # impossible batch settings fail here, before anything is built
    attention = resolve_attention(cfg.model)
    check_model_folder(cfg)
    moe.check_config(cfg, run_model_config(cfg))
    check_sequence_model(cfg.model.path, groups.size)
    check_sequence_length(cfg, getattr(train_ds, "block_size", None)
                          or getattr(getattr(cfg, "data", None), "max_seq_length", None))
    check_data_tokenizer(cfg, tokenizer_fingerprint)
    steps = StepPlan(len(train_ds), cfg.batch.micro_batch_size, cfg.batch.gradient_accumulation_steps,
                     groups.data_ranks, cfg.seed, repeat)
    steps.check()
    total_steps = steps.total_steps(cfg.schedule.max_steps, cfg.schedule.epochs)
    plan = Plan(rank, world, steps, total_steps, attention=attention, groups=groups)
    # world_size in the settings counts data ranks: with sequence parallelism a group reads one micro batch
    plan.settings = run_settings.result_settings(cfg, groups.data_ranks, data_fingerprint, tokenizer_fingerprint)
    plan.finished_report = _finished_report(cfg, total_steps, data_fingerprint, plan.settings)
    if plan.finished_report is not None:
        return plan
    plan.resume_from, plan.marker, plan.reshape, plan.superseded = checkpoint.choose_resume(
        cfg.output_dir, cfg.checkpoint.resume, world, data_fingerprint, plan.settings, cfg.schedule, total_steps)
    if plan.reshape is not None:
        checkpoint.check_reshape_at_group_start(plan.resume_from, plan.marker, repeat, world)
    if plan.resume_from is None and checkpoint.list_complete(cfg.output_dir):
        raise UserError(f"output_dir {cfg.output_dir} already holds checkpoints; use checkpoint.resume=auto "
                        f"to continue them or choose a new output_dir")
    if cfg.eval.every_steps and eval_ds is None and not (cfg.eval.sets or cfg.eval.benchmarks or cfg.eval.reading
                                                           or cfg.eval.math):
        raise UserError("eval.every_steps is set but there is no validation set (set eval.every_steps=0)")
    check_writable_dir(cfg.output_dir, "output_dir", f".write-probe-{rank}")
    return plan


def build(cfg: TrainConfig, plan: Plan) -> Built:
    """Model (partitioned at construction under ZeRO-3), training mode, optimizer, DeepSpeed engine."""
    import deepspeed
    from transformers import AutoConfig

    _seed_everything(cfg.seed)
    model_config = AutoConfig.from_pretrained(cfg.model.path)
    kernels = apply_liger(cfg.model.liger, model_config.model_type)  # patches transformers: before the build
    widest = max(model_config.hidden_size, getattr(model_config, "intermediate_size", 0) or 0)
    ds_config = build_ds_config(cfg, plan.world, model_config.hidden_size, widest, first_layer_numel(cfg.model.path))
    if plan.reshape is not None:  # the ZeRO slices are re-cut from the universal conversion
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
    model, keepalive = load_model(cfg, ds_config)
    module = apply_mode(cfg, model)
    routers, experts = moe.install(cfg, model, module)  # before the optimizer: frozen routers are left out
    fetching = (zero3_fetch_units(module, model, cfg.deepspeed.zero3_fetch)
                if ds_config["zero_optimization"].get("stage") == 3 else "")
    if cfg.model.fused_loss:
        install_fused_head(module, cfg.model.loss_chunk_tokens)
    split = WHOLE_ROWS
    if plan.groups.size > 1:
        install_attention(cfg.model.attn_implementation)
        split = SequenceSplit(plan.groups, model.config, DTYPES[cfg.model.dtype])
    install_embedding_noise(module, cfg.model.neftune_alpha)
    tiled = install_tiled_mlp(module, cfg.model.mlp_chunk_tokens)
    context = describe_context(cfg.model.path, cfg.model.rope_scaling, cfg.model.max_position_embeddings)
    if plan.rank == 0:
        print(f"[zhllama] {kernels}; loss: {'fused, chunked' if cfg.model.fused_loss else 'plain logits'}; "
              f"{plan.attention}" + (f"; NEFTune noise, alpha {cfg.model.neftune_alpha:g}"
                                     if cfg.model.neftune_alpha else ""), flush=True)
        if fetching:
            print(f"[zhllama] {fetching}", flush=True)
        if experts:
            print(f"[zhllama] {experts}", flush=True)
        if context:
            print(f"[zhllama] {context}", flush=True)
        if tiled:
            print(f"[zhllama] MLPs of {tiled} layers in tiles of {cfg.model.mlp_chunk_tokens:,} positions", flush=True)
        if split.active:
            print(f"[zhllama] sequence parallel: {plan.groups.size} ranks share each sequence, "
                  f"{plan.groups.data_ranks} read different data", flush=True)
        hint = single_rank_zero3_hint(ds_config, plan.world)
        if hint:
            print(f"[zhllama] hint: {hint}", flush=True)
    trainable, total_params = count_parameters(module)
    optimizer = _make_optimizer(cfg, module, ds_config)
    if plan.rank == 0:
        print(f"[zhllama] optimizer: {type(optimizer).__name__}"
              + (" on the CPU (ZeRO-Offload)" if offloads(ds_config, "optimizer") else ""), flush=True)
    factor = lr_factor(cfg.schedule, plan.total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
    )
    del keepalive  # partitioned construction is over
    return Built(engine, scheduler, trainable, total_params, _partition_numel(engine.module), split, routers)


def _resume(cfg: TrainConfig, plan: Plan, built: Built) -> int:
    step = 0
    if plan.resume_from is not None:
        step = int(plan.marker["step"])
        if plan.reshape is not None and plan.rank == 0:
            shared = (f", counting data ranks: {plan.groups.size} ranks share each sequence" if plan.groups.size > 1
                      else "")
            print(f"[zhllama] resuming {plan.resume_from.name} on another number of ranks: {plan.reshape.describe()} "
                  f"(the same samples each step; float sums in another order{shared})", flush=True)
        checkpoint.load(built.engine, plan.resume_from, plan.reshape, cfg.seed, step)
        check_weights(built.engine.module, f"checkpoint {plan.resume_from} (resume from an earlier one: "
                                           f"checkpoint.resume=PATH)")
    if plan.rank == 0:  # leftovers of a crash mid-save; nobody writes checkpoints before the first save's barrier
        checkpoint.remove_incomplete(cfg.output_dir)
        _set_aside_old_schedule(cfg, plan, step)
        (Path(cfg.output_dir) / STOPPED).unlink(missing_ok=True)  # resumed: no longer waiting
    return step


def _set_aside_old_schedule(cfg: TrainConfig, plan: Plan, step: int) -> None:
    """A run continued into a changed schedule: the old schedule's later checkpoints and its final model
    would be mistaken for this run's (resumed, rotated, reported as finished), so they move, never deleted."""
    stored = (plan.marker or {}).get("settings")
    if stored is None or not only_schedule_changed(as_reshaped(stored, plan.settings) if plan.reshape else stored,
                                                   plan.settings):
        return
    output = Path(cfg.output_dir)
    old = plan.superseded + [p for p in (output / "final", output / "train_report.json") if p.exists()]
    moved = checkpoint.set_aside(cfg.output_dir, old, step) if old else None
    print(f"[zhllama] the schedule changed ({plan.marker.get('total_steps')} -> {plan.total_steps} steps); "
          f"{plan.resume_from.name} was trained with this run's learning rates, so the run goes on from it"
          + (f"; moved to {moved}: {', '.join(p.name for p in old)}" if moved else ""), flush=True)


def fit(cfg: TrainConfig, plan: Plan, built: Built, train_ds, eval_ds, collate_fn, eval_characters: int | None,
        data_fingerprint: str | None, watch: Watch | None = None, objective: Any | None = None,
        provenance: dict | None = None) -> FitState:
    """The loop: micro batches → backward → step; logs, evaluation and checkpoints on their cadence."""
    engine, rank, world, dev = built.engine, plan.rank, plan.world, device()
    split = built.split
    if watch is not None:
        watch.split = split
    state = FitState(step=_resume(cfg, plan, built))
    total_steps = plan.total_steps
    stable_end = decay_start(cfg.schedule, total_steps)  # wsd: always kept, a longer run continues from it
    tracker = Tracker(cfg, enabled=rank == 0, resumed_step=state.step)
    meta = {"data_fingerprint": data_fingerprint, "mode": cfg.mode, "total_steps": total_steps,
            "settings": plan.settings, "settings_fingerprint": run_settings.fingerprint(plan.settings),
            "data": provenance}  # export-checkpoint's model card names the data too
    guard = LossGuard()
    if rank == 0:
        print(f"[zhllama] mode={cfg.mode} trainable={built.trainable:,}/{built.total_params:,} params, ranks={world}, "
              f"global batch={plan.steps.global_batch}, steps={total_steps}"
              + (f", resuming from {plan.resume_from.name}" if plan.resume_from else ""), flush=True)
    from tqdm.auto import tqdm

    if objective is not None:  # e.g. DPO's reference log-probabilities, from the model as it starts
        datasets = {"train": train_ds, **({"eval": eval_ds} if eval_ds is not None else {})}
        objective.prepare(engine, datasets, collate_fn, cfg.eval.micro_batch_size or cfg.batch.micro_batch_size,
                          cfg.output_dir, state.step > 0, data_fingerprint, dev, progress=cfg.logging.progress)
        if plan.resume_from is not None and hasattr(objective, "restore"):  # GRPO's answers kept between steps
            objective.restore(checkpoint.load_objective_state(plan.resume_from, rank), state.step,
                              f"checkpoint {plan.resume_from}")
    loss_of = objective.loss if objective is not None else forward_loss
    evaluation = Evaluation(cfg, engine, eval_ds, collate_fn, eval_characters, watch, tracker, dev, total_steps,
                            objective, split)
    evaluation.ensure_base(state)
    if evaluation.active and cfg.eval.at_start and state.step == 0:
        evaluation.run(state)
    engine.train()
    window = Window(objective, built.routers)
    last_eval_step = state.step if state.metrics else -1
    # closed on errors too, so a stop message never lands on the bar's line
    with tqdm(total=total_steps, initial=state.step, disable=rank != 0 or not cfg.logging.progress, desc="train",
              unit="step", dynamic_ncols=True) as bar, StopSignals(cfg.checkpoint.stop_signals).installed() as stop:
        while state.step < total_steps:
            lr_used = built.scheduler.get_last_lr()[0]  # the rate this step applies (the scheduler then moves on)
            if hasattr(objective, "begin_step"):  # GRPO seeds each step's answers by the step (engine/grpo.py)
                objective.begin_step(state.step)
            for indices in plan.steps.micro_batches(state.step, plan.groups.data_rank):
                batch = fetch(train_ds, indices, collate_fn)
                with split.micro(batch, dev) as (part, per_token):  # whole rows unless sequence-parallel
                    with built.routers.collecting():  # an MoE model's routers: their choices in this forward
                        loss_sum, count = loss_of(engine, part, dev)
                    guard.observe(loss_sum, state.step + 1)
                    mean = loss_sum * per_token if per_token else loss_sum / count.clamp(min=1)
                    engine.backward(built.routers.added_to(mean))
                engine.step()
                # tokens trained on: GRPO's loss puts the rows it wrote (prompt + answer) in batch["input_ids"]
                window.add(loss_sum, count, part["input_ids"].numel() * world)
            state.step += 1
            bar.update(1)
            if state.step % cfg.logging.every_steps == 0 or state.step == total_steps:
                logged = _log_window(cfg, engine, window, guard, state, tracker, dev, lr_used)
                bar.set_postfix(loss=f"{logged['train/loss']:.4f}", tok_s=f"{logged['train/tokens_per_s']:.0f}")
            if evaluation.active and cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0:
                evaluation.run(state)
                last_eval_step = state.step
            kept = "the last step before the wsd decay" if state.step == stable_end else ""
            due = bool(kept) or (cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0)
            if state.step < total_steps and (due or state.stopped_by_guard):  # a guard stop stays resumable
                _save_checkpoint(cfg, engine, guard, state.step, meta, kept, objective)
            if state.stopped_by_guard:  # a clean stop: export and report as usual
                break
            signalled = stop.any_rank_received()  # collective, every step (engine/stop_signals.py)
            if signalled and state.step < total_steps:
                _stop(cfg, engine, guard, state.step, meta, signalled, saved=due, rank=rank, objective=objective)
                tracker.close(plot=cfg.logging.plot)
                raise Stopped(f"{signalled} at step {state.step}: checkpoint {checkpoint.tag_for(state.step)} saved; "
                              f"run the same command to resume")
    guard.check()
    if evaluation.active and last_eval_step != state.step:
        evaluation.run(state)
    tracker.close(plot=cfg.logging.plot)
    return state


STOPPED = "stopped.json"  # in output_dir while a run stopped by a signal waits to be resumed


def _stop(cfg: TrainConfig, engine, guard: LossGuard, step: int, meta: dict[str, Any], signalled: str, *,
          saved: bool, rank: int, objective: Any = None) -> None:
    """Save (unless this step's checkpoint was just saved) and leave a note a job script can test: torchrun
    exits 1 whatever its ranks' status (75 here), so `[ -f OUT/stopped.json ] && scontrol requeue ...`."""
    if not saved:
        _save_checkpoint(cfg, engine, guard, step, meta, objective=objective)
    if rank == 0:
        write_json_atomic(Path(cfg.output_dir) / STOPPED, {"signal": signalled, "step": step,
                                                          "checkpoint": checkpoint.tag_for(step)})


def _log_window(cfg: TrainConfig, engine, window: Window, guard: LossGuard, state: FitState, tracker: Tracker,
                dev, lr_used: float) -> dict[str, float]:
    guard.check()
    logged = window.flush(engine, dev, lr_used)
    if cfg.model.dtype != "float16":  # fp16 loss scaling skips overflowed steps by design
        check_grad_norm(logged.get("train/grad_norm"), state.step)
    state.metrics.update(logged)
    tracker.log(state.step, logged)
    return logged


def _save_checkpoint(cfg: TrainConfig, engine, guard: LossGuard, step: int, meta: dict[str, Any],
                     kept: str = "", objective: Any = None) -> None:
    guard.check()  # never keep a checkpoint written after a non-finite step
    check_weights(engine.module, f"checkpoint at step {step}")
    extra = objective.checkpoint_state(step) if hasattr(objective, "checkpoint_state") else None
    with _writing(cfg, f"checkpoint step {step}"):
        checkpoint.save(engine, cfg.output_dir, step, meta, cfg.checkpoint.keep_last, kept, extra)


def finish(cfg: TrainConfig, plan: Plan, built: Built, state: FitState, data_fingerprint: str | None,
           tokenizer_fingerprint: str | None, watch: Watch | None = None,
           provenance: dict | None = None) -> dict[str, Any]:
    """Collective: the final model folder and train_report.json; returns metrics + report fields."""
    report = {
        "step": state.step, "mode": cfg.mode, "world_size": plan.world, "global_batch": plan.steps.global_batch,
        "trainable_params": built.trainable, "total_params": built.total_params,
        "zero3_partition_numel": built.partition,
        "base_model": str(cfg.model.path), "data_fingerprint": data_fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "settings": plan.settings, "settings_fingerprint": run_settings.fingerprint(plan.settings),
        "metrics": dict(state.metrics), "data": provenance, "lineage": lineage_of(cfg.model.path),
    }
    if watch is not None and watch.reporting:  # base numbers, guard trips, forgetting table (evaluation/forgetting.py)
        report.update(watch.report_fields(), stopped_by_guard=bool(state.stopped_by_guard))
        if plan.rank == 0:
            report["forgetting"] = write_forgetting_report(cfg.output_dir, watch.base, watch.trips)
    if cfg.mode == "lora" and plan.rank == 0:  # `sft export` refuses to merge the adapter into another base
        from zhllama.model_fingerprint import model_fingerprint

        report["base_model_fingerprint"] = model_fingerprint(cfg.model.path)
    with _writing(cfg, "the final model"):
        final = save_final(built.engine, built.engine.module, cfg, tokenizer_dir(cfg), report)
    report["final_dir"] = str(final)
    if plan.rank == 0:
        write_json_atomic(Path(cfg.output_dir) / "train_report.json", report)
    dist.barrier()
    return {**report["metrics"], **{k: v for k, v in report.items() if k != "metrics"}}


@contextmanager
def _writing(cfg: TrainConfig, what: str):
    """A full disk or a read-only output_dir: one line naming the folder, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"output_dir {cfg.output_dir}: cannot write {what}: {exc.strerror or exc}"
                        + (f" ({exc.filename})" if exc.filename else "")) from None


def run_training(cfg: TrainConfig, train_ds, eval_ds, collate_fn, *, eval_characters: int | None,
                 data_fingerprint: str | None, tokenizer_fingerprint: str | None,
                 eval_sets: dict[str, tuple[Any, int | None]] | None = None, objective: Any | None = None,
                 provenance: dict | None = None) -> TrainRun:
    # DeepSpeed calls torch.distributed functions torch has renamed; one warning per step is noise.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    plan = preflight(cfg, train_ds, eval_ds, data_fingerprint, tokenizer_fingerprint,
                     getattr(objective, "iterations", 1))
    if plan.finished_report is not None:
        report = plan.finished_report
        if plan.rank == 0:  # a scheduler re-ran a finished job: nothing to do
            print(f"[zhllama] {cfg.output_dir} already finished {plan.total_steps} steps; final model: "
                  f"{report.get('final_dir')}", flush=True)
        return TrainRun({**report.pop("metrics", {}), **report})
    watch = Watch(cfg, eval_sets)  # reads and checks named sets and benchmark files before the model
    built = build(cfg, plan)
    state = fit(cfg, plan, built, train_ds, eval_ds, collate_fn or default_collate, eval_characters, data_fingerprint,
                watch, objective, provenance)
    return TrainRun(finish(cfg, plan, built, state, data_fingerprint, tokenizer_fingerprint, watch, provenance),
                    built.engine)
