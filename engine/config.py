"""Typed configuration of the one training engine (continued pretraining and SFT share it).

The engine config holds no data fields: each phase subclasses ``TrainConfig`` and adds its own
``data:`` section, e.g.::

    @dataclass
    class PretrainConfig(TrainConfig):
        data: PretrainData = field(default_factory=PretrainData)

    cfg = zhllama.config.load_config(PretrainConfig, "pretrain/configs/tiny_cpu.yaml", ["optim.lr=1e-3"])

Every field has a default so subclasses can append fields. Cross-field checks live in
``validate()`` methods (collected by ``load_config``, all problems reported at once); checks
that need the world size run again in ``BatchConfig.resolve`` when ranks are known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .eval_config import (BenchmarkConfig, CodeEvalConfig, EvalConfig, EvalSetConfig, MathEvalConfig,  # noqa: F401
                          ReadingEvalConfig)

DS_PRESET_DIR = Path(__file__).resolve().parent / "ds"
DS_PRESETS = ("zero2", "zero3", "zero3_offload")


@dataclass
class ModelConfig:
    path: str = ""  # Hugging Face model folder to start from (output of `vocab resize` or a previous stage)
    tokenizer: str | None = None  # tokenizer folder; default: the model folder
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # training precision (CPU: float32 only is fast)
    attn_implementation: Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"] = (
        "auto")  # attention kernel, packed documents kept apart by each; auto: flash-attn if installed, else flex on CUDA, else sdpa
    gradient_checkpointing: bool = False  # recompute activations in backward (saves memory, costs ~30% time)
    fused_loss: bool = True  # loss from hidden states chunk by chunk: never B x S x V fp32 logits (engine/loss.py)
    loss_chunk_tokens: int = 4096  # labelled positions per chunk of the fused loss (memory ~ chunk x vocab x 4 bytes)
    mlp_chunk_tokens: int = 0  # long contexts: decoder MLPs over at most this many positions at a time, each tile recomputed in backward (engine/tiled_mlp.py); 0 = whole rows
    liger: Literal["auto", "on", "off"] = "auto"  # Liger Triton kernels (RMSNorm, SwiGLU, RoPE): auto = on CUDA when installed
    rope_scaling: dict[str, Any] = field(default_factory=dict)  # longer context, e.g. {rope_type: linear, factor: 4} (or yarn), or a larger base {rope_theta: 1000000}; saved with the result (engine/context.py)
    max_position_embeddings: int | None = None  # positions the result covers (default: the model's, times rope_scaling.factor; required with a base alone)
    neftune_alpha: float = 0.0  # noise on the input embeddings while training (NEFTune; 5 is the paper's choice for SFT); 0 = off

    def validate(self) -> list[str]:
        from zhllama.rope import validate as validate_context

        problems = [] if self.path else ["model.path: required (a Hugging Face model folder)"]
        if self.loss_chunk_tokens < 1:
            problems.append(f"loss_chunk_tokens: must be >= 1, got {self.loss_chunk_tokens}")
        if self.mlp_chunk_tokens < 0:
            problems.append(f"mlp_chunk_tokens: must be >= 0 (0: whole rows), got {self.mlp_chunk_tokens}")
        if not 0 <= self.neftune_alpha <= 100:
            problems.append(f"neftune_alpha: expected 0 (off) to 100 (the paper uses 5 to 15), got {self.neftune_alpha}")
        return problems + validate_context(self.rope_scaling, self.max_position_embeddings)


@dataclass
class LoraConfig:
    r: int = 64  # LoRA rank
    alpha: int = 128  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.05  # dropout on the LoRA input
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # module names that get LoRA adapters (attention and MLP projections)
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])  # trained in full
    target_parameters: list[str] = field(default_factory=list)  # parameters that get LoRA: an MoE model's experts (3-D, e.g. mlp.experts.gate_up_proj)

    def validate(self) -> list[str]:
        problems = []
        if self.r <= 0:
            problems.append(f"r: must be > 0, got {self.r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.target_parameters and self.dropout:
            problems.append(f"dropout: must be 0 with target_parameters (PEFT cannot apply dropout to a parameter's "
                            f"adapter), got {self.dropout}")
        if not self.targets and not self.target_parameters:
            problems.append("targets: at least one module name is needed (or a parameter in target_parameters)")
        return problems


@dataclass
class MoeConfig:
    """Mixture-of-experts models (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE): the routers. Dense models ignore it."""

    aux_loss_coef: float | None = None  # load-balancing loss weight; null: the model's router_aux_loss_coef; 0: off
    balance: Literal["global_batch", "micro_batch"] = "global_batch"  # experts' shares over every rank's micro batch (as Qwen3 trained) or each rank's own (transformers)
    z_loss_coef: float = 0.0  # router z-loss (ST-MoE): keeps the router logits small; OLMoE trained with 0.001
    train_router: bool = True  # mode=full: false keeps every router as it is (experts, attention, ... still learn)

    def validate(self) -> list[str]:
        problems = []
        if self.aux_loss_coef is not None and self.aux_loss_coef < 0:
            problems.append(f"aux_loss_coef: must be >= 0 (0 = off, null = the model's own), got {self.aux_loss_coef}")
        if self.z_loss_coef < 0:
            problems.append(f"z_loss_coef: must be >= 0 (0 = off), got {self.z_loss_coef}")
        return problems


@dataclass
class EmbeddingsConfig:
    train_new_rows_only: bool = False  # mode=embeddings: rows below base_vocab_size keep their values exactly
    base_vocab_size: int | None = None  # default: read from the model folder's resize_report.json / merge_report.json


@dataclass
class OptimConfig:
    lr: float = 2e-4  # peak learning rate
    weight_decay: float = 0.0  # decoupled weight decay (never applied to norms, biases, or frozen embedding rows)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradient clipping (0 disables); written into the DeepSpeed config

    def validate(self) -> list[str]:
        problems = []
        if self.lr <= 0:
            problems.append(f"lr: must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas: expected two numbers in [0, 1), got {self.betas}")
        if self.max_grad_norm < 0:
            problems.append(f"max_grad_norm: must be >= 0, got {self.max_grad_norm}")
        return problems


@dataclass
class ScheduleConfig:
    max_steps: int = 0  # optimizer steps to run; 0 = derive from epochs
    epochs: float = 1.0  # passes over the training set (used when max_steps is 0)
    warmup_steps: int = 0  # linear warmup from 0 to optim.lr
    kind: Literal["cosine", "linear", "constant", "wsd"] = "cosine"  # decay after warmup; wsd: flat, then decay at the end (a longer run can continue it: engine/schedule.py)
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio * optim.lr (cosine/linear/wsd)
    decay_fraction: float = 0.2  # wsd: the last share of the steps that decays (the checkpoint at its start is kept)
    decay_shape: Literal["1-sqrt", "linear"] = "1-sqrt"  # wsd: how the rate falls to the floor

    def validate(self) -> list[str]:
        problems = []
        if self.max_steps < 0:
            problems.append(f"max_steps: must be >= 0, got {self.max_steps}")
        if self.max_steps == 0 and self.epochs <= 0:
            problems.append("epochs: must be > 0 when max_steps is 0")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.max_steps and self.warmup_steps > self.max_steps:
            problems.append(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            problems.append(f"decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        return problems


def rank_counts(micro_batches: int) -> list[int]:
    """The numbers of ranks that can share ``micro_batches`` micro batches per step evenly."""
    return [w for w in range(1, micro_batches + 1) if micro_batches % w == 0]


@dataclass
class BatchConfig:
    micro_batch_size: int = 1  # sequences per rank per forward pass
    gradient_accumulation_steps: int | None = None  # micro batches per optimizer step (null: global_batch_size / (micro x ranks), or 1)
    global_batch_size: int | None = None  # sequences per optimizer step: gives the accumulation, or checks it

    def validate(self) -> list[str]:
        problems = []
        if self.micro_batch_size < 1:
            problems.append(f"micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        accumulation = self.gradient_accumulation_steps
        if accumulation is not None and accumulation < 1:
            problems.append(f"gradient_accumulation_steps: must be >= 1, got {accumulation}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            problems.append(f"global_batch_size: must be >= 1, got {self.global_batch_size}")
        elif self.global_batch_size is not None and self.micro_batch_size >= 1 and (accumulation or 0) >= 1:
            per_rank = self.micro_batch_size * accumulation
            if self.global_batch_size % per_rank:
                problems.append(
                    f"global_batch_size ({self.global_batch_size}) is not a multiple of micro_batch_size x "
                    f"gradient_accumulation_steps ({per_rank}), so no number of ranks can give it"
                )
        return problems

    def resolve(self, world_size: int) -> int:
        """The global batch (sequences per optimizer step) for ``world_size`` ranks. Sets an unset
        accumulation from ``global_batch_size`` (so one command keeps its global batch on any number of
        ranks that divides it, and a resume on fewer nodes needs no new setting), or checks a set one."""
        from zhllama.errors import UserError

        per_step = self.micro_batch_size * world_size
        if self.gradient_accumulation_steps is None:
            if self.global_batch_size is None:
                self.gradient_accumulation_steps = 1
            elif self.global_batch_size % per_step:
                divisible = self.global_batch_size % self.micro_batch_size == 0
                raise UserError(
                    f"impossible batch settings: batch.global_batch_size={self.global_batch_size} is not a multiple of "
                    f"micro_batch_size ({self.micro_batch_size}) x {world_size} ranks; "
                    + (f"run on one of {rank_counts(self.global_batch_size // self.micro_batch_size)} ranks"
                       if divisible else "change the micro batch"))
            else:
                self.gradient_accumulation_steps = self.global_batch_size // per_step
        total = per_step * self.gradient_accumulation_steps
        if self.global_batch_size is not None and self.global_batch_size != total:
            raise UserError(
                f"impossible batch settings: batch.global_batch_size={self.global_batch_size} but micro_batch_size "
                f"({self.micro_batch_size}) x gradient_accumulation_steps ({self.gradient_accumulation_steps}) x "
                f"{world_size} ranks = {total}; change one of them (or leave gradient_accumulation_steps unset)"
            )
        return total


@dataclass
class DeepSpeedConfig:
    preset: str = "zero3"  # name in engine/ds (zero2, zero3, zero3_offload) or a path to a JSON file
    overrides: dict[str, Any] = field(default_factory=dict)  # nested keys merged into the preset JSON
    zero3_fetch: Literal["layer", "module"] = "layer"  # ZeRO-3 gathers each decoder layer's weights at once, or per submodule (DeepSpeed's default)
    sequence_parallel: int = 1  # ranks sharing each sequence, split along its length (DeepSpeed-Ulysses: long contexts); 1 = off

    def validate(self) -> list[str]:
        problems = []
        if self.sequence_parallel < 1:
            problems.append(f"sequence_parallel: must be >= 1 (1 = off), got {self.sequence_parallel}")
        if self.preset in DS_PRESETS or self.preset.endswith(".json"):
            return problems
        return problems + [f"preset: expected one of {list(DS_PRESETS)} or a path to a .json file, got {self.preset!r}"]


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # save a resumable checkpoint every N optimizer steps (0: only at the end)
    keep_last: int = 2  # complete checkpoints kept; older ones are deleted
    resume: str = "auto"  # "auto" (latest complete checkpoint in output_dir, if any), "never", or a checkpoint path
    # A preemption or time-limit warning (engine/stop_signals.py):
    stop_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # on these, save after the step and exit 75 ([]: die at once)

    def validate(self) -> list[str]:
        problems = _signal_problems(self.stop_signals)
        if self.every_steps < 0:
            problems.append(f"every_steps: must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            problems.append(f"keep_last: must be >= 1, got {self.keep_last}")
        return problems


def _signal_problems(names: list[str]) -> list[str]:
    """Every name a signal this process can catch (SIGKILL and SIGSTOP cannot be)."""
    import signal

    problems = []
    for name in names:
        if not isinstance(getattr(signal, str(name), None), signal.Signals):
            problems.append(f"stop_signals: {name!r} is not a signal name (e.g. SIGTERM, SIGUSR1)")
        elif name in ("SIGKILL", "SIGSTOP"):
            problems.append(f"stop_signals: {name} cannot be caught, so no checkpoint can be saved on it")
    return problems


@dataclass
class LoggingConfig:
    every_steps: int = 10  # log training loss / lr / tokens per second every N steps
    wandb: Literal["offline", "online", "disabled"] = "offline"  # offline runs sync later with `wandb sync`
    wandb_project: str = "zhllama"  # wandb project name
    run_name: str | None = None  # default: the output folder's name
    tensorboard: bool = True  # write TensorBoard event files under output_dir/tensorboard
    plot: bool = True  # write loss_curve.png at the end
    progress: bool = True  # tqdm progress bar on rank 0

    def validate(self) -> list[str]:
        return [] if self.every_steps >= 1 else [f"every_steps: must be >= 1, got {self.every_steps}"]


# engine/preference.py, engine/kto.py and engine/grpo.py; here so configs load without torch
PREFERENCE_LOSSES = ("sigmoid", "ipo", "simpo", "orpo")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
GRPO_LOSSES = ("token", "sequence", "dr_grpo")
GRPO_IMPORTANCE = ("token", "sequence")  # the clipped ratio per answer token (GRPO) or per answer (GSPO)


@dataclass
class TrainConfig:
    """Everything the engine needs except the data (phases add a ``data:`` section)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mode: Literal["full", "lora", "embeddings"] = "full"  # which parameters train
    lora: LoraConfig = field(default_factory=LoraConfig)  # used when mode=lora
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)  # used when mode=embeddings
    moe: MoeConfig = field(default_factory=MoeConfig)  # mixture-of-experts models only
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    seed: int = 42  # seeds weights created here (LoRA) and the data order (keyed by seed and epoch)
    output_dir: str = "outputs/run"  # checkpoints, logs, and the final model folder (output_dir/final)

    def validate(self) -> list[str]:
        problems = []
        if not self.output_dir:
            problems.append("output_dir: required")
        if self.embeddings.train_new_rows_only and self.mode != "embeddings":
            problems.append("embeddings.train_new_rows_only: only meaningful with mode=embeddings")
        if self.deepspeed.sequence_parallel > 1:
            if self.model.attn_implementation == "eager":
                problems.append("deepspeed.sequence_parallel: model.attn_implementation=eager cannot be split over "
                                "ranks (transformers calls it directly); use sdpa, flex_attention or flash-attention")
            if self.model.neftune_alpha:
                problems.append("deepspeed.sequence_parallel: model.neftune_alpha scales its noise by the whole row's "
                                "length, which a rank holding part of it does not see; set one of them off")
        return problems
