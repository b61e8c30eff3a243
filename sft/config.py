"""SFT configuration: the engine's ``TrainConfig`` plus a ``data:`` section (the only difference).

    cfg = load_config(SFTConfig, "sft/configs/tiny_cpu.yaml", ["data.packing=true"])
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine import TrainConfig
from engine.config import GRPO_IMPORTANCE, GRPO_LOSSES, KTO_LOSSES, PREFERENCE_LOSSES

from .templates import TEMPLATE_NAMES


@dataclass
class SFTFile:
    path: str = ""  # an Alpaca / conversations file (JSON array or JSON Lines)
    weight: float = 1.0  # copies per epoch: floor(w) always, plus one with probability w - floor(w)


@dataclass
class SFTData:
    manifest: str | None = None  # corpora manifest (corpora_manifests/sft_*.yaml): files, sha256, weights, holdout
    files: list[SFTFile] = field(default_factory=list)  # or list files here (no checksums, no manifest)
    eval_fraction: float = 0.0  # share of records held out for eval with `files` (a manifest uses its holdout)
    template: str = "alpaca"  # alpaca | chinese-alpaca | chinese-alpaca-2 | tokenizer (its chat_template)
    system_prompt: str | None = None  # replaces the template's default system prompt / Alpaca preamble
    max_seq_length: int = 512  # longer samples are cut; one left with no response token is dropped
    packing: bool = False  # concatenate samples into max_seq_length rows (position_ids restart per sample)
    pad_to_multiple_of: int | None = None  # round padded batch width up (e.g. 8 for tensor cores)
    cache_dir: str = "outputs/sft_cache"  # tokenized samples, keyed by file content + tokenizer + template
    mix_seed: int = 0  # seeds which records a fractional weight repeats (the engine's seed orders batches)

    def validate(self) -> list[str]:
        problems = []
        if (self.manifest is None) == (not self.files):
            problems.append("manifest / files: give exactly one (a manifest path, or a list of {path, weight})")
        for i, f in enumerate(self.files):
            if not f.path:
                problems.append(f"files[{i}].path: required")
            if f.weight < 0:
                problems.append(f"files[{i}].weight: must be >= 0, got {f.weight}")
        if not 0 <= self.eval_fraction < 1:
            problems.append(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.manifest is not None and self.eval_fraction:
            problems.append("eval_fraction: only with `files`; a manifest's `holdout` decides the eval split")
        if self.template not in TEMPLATE_NAMES:
            problems.append(f"template: expected one of {list(TEMPLATE_NAMES)}, got {self.template!r}")
        if self.max_seq_length < 8:
            problems.append(f"max_seq_length: must be >= 8, got {self.max_seq_length}")
        return problems


@dataclass
class DPOSettings:
    """Used when ``objective: dpo`` (engine/preference.py); the data are then preference pairs."""

    loss: str = "sigmoid"  # sigmoid (DPO) | ipo (squared, per-token means) | simpo, orpo (no reference, per-token means)
    beta: float = 0.1  # how far the policy may move from the starting model (0.1 for DPO; SimPO's paper: 2 to 10; ORPO's lambda)
    label_smoothing: float = 0.0  # assumed share of pairs whose preference is wrong (cDPO); 0 = plain DPO
    nll_weight: float = 0.0  # adds the chosen answer's per-token NLL times this (RPO); 0 = off
    simpo_gamma: float = 0.5  # loss=simpo: the reward margin the chosen answer must win by

    def validate(self) -> list[str]:
        problems = []
        if self.loss not in PREFERENCE_LOSSES:
            problems.append(f"loss: expected one of {list(PREFERENCE_LOSSES)}, got {self.loss!r}")
        if not 0 < self.beta <= 10:
            problems.append(f"beta: expected a value in (0, 10] (0.1 is usual), got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing: expected [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss in ("ipo", "orpo"):
            problems.append(f"label_smoothing: only with loss sigmoid or simpo ({self.loss}'s loss has no flipped-label form)")
        if self.simpo_gamma < 0:
            problems.append(f"simpo_gamma: must be >= 0, got {self.simpo_gamma}")
        if self.nll_weight < 0:
            problems.append(f"nll_weight: must be >= 0, got {self.nll_weight}")
        return problems


@dataclass
class KTOSettings:
    """Used when ``objective: kto`` (engine/kto.py); the data are then answers judged one by one (sft/kto.py)."""

    loss: str = "kto"  # kto | apo_zero_unpaired (no KL baseline: desirable answers beat what the model writes now)
    beta: float = 0.1  # how far the policy may move from the starting model, as DPO's
    desirable_weight: float = 1.0  # loss weight of desirable answers; keep weight x count of the two
    undesirable_weight: float = 1.0  # verdicts within 1 : 1 to 4 : 3 (the KTO paper), e.g. fewer desirable: raise it

    def validate(self) -> list[str]:
        problems = []
        if self.loss not in KTO_LOSSES:
            problems.append(f"loss: expected one of {list(KTO_LOSSES)}, got {self.loss!r}")
        if not 0 < self.beta <= 10:
            problems.append(f"beta: expected a value in (0, 10] (0.1 is usual), got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0, got {getattr(self, name)}")
        return problems


@dataclass
class JudgeSettings:
    """GRPO's ``judge`` reward (sft/reward_judge.py): an OpenAI-compatible server's chat model grades each answer."""

    url: str | None = None  # the API base, e.g. http://judge-node:8000/v1 (vllm serve Qwen/Qwen2.5-72B-Instruct)
    model: str | None = None  # the model name the server knows
    api_key_env: str | None = None  # the environment variable holding the key (never the key itself)
    workers: int = 32  # requests in flight per rank
    max_tokens: int = 256  # a reason or two, then the 评分 line

    def problems(self, used: bool) -> list[str]:
        from zhllama.openai_client import check_api_key_env, check_url

        if not used:
            return ["judge.url: set, but grpo.rewards has no judge"] if self.url else []
        problems = [] if self.url else ["judge.url: the judge reward needs the server's API base (…/v1)"]
        problems += check_url("judge.url", self.url) if self.url else []
        problems += [] if self.model else ["judge.model: the judge reward needs the model's name on the server"]
        if check_api_key_env(self.api_key_env):  # its message names the CLI flag; this is a config key
            problems.append(f"judge.api_key_env: the environment variable {self.api_key_env} is not set")
        if self.workers < 1:
            problems.append(f"judge.workers: must be >= 1, got {self.workers}")
        if self.max_tokens < 16:
            problems.append(f"judge.max_tokens: must be >= 16 (a grade line at least), got {self.max_tokens}")
        return problems


@dataclass
class GRPOSettings:
    """Used when ``objective: grpo`` (engine/grpo.py); the data are then prompts with references (sft/grpo_data.py)."""

    rewards: dict[str, float] = field(default_factory=lambda: {"math": 1.0})  # name (or module.path:function) -> weight (sft/rewards.py)
    generations: int = 8  # answers sampled per prompt; each is scored against its group's mean
    max_new_tokens: int = 256  # longest answer; data.max_seq_length - this is the longest prompt kept
    temperature: float = 1.0  # sampling temperature of the answers (1.0: the policy itself)
    top_p: float = 1.0  # nucleus sampling of the answers (1.0: off)
    scale_rewards: bool = True  # divide by the group's std (GRPO); false: Dr. GRPO's mean-centred rewards
    loss: str = "token"  # token (DAPO: mean over the micro batch's answer tokens) | sequence (GRPO: per-answer means) | dr_grpo (sum / (answers x max_new_tokens))
    mask_truncated: bool = False  # answers cut at max_new_tokens add no loss (DAPO's overlong filtering)
    beta: float = 0.0  # KL penalty per answer token to the starting model (GRPO's paper: 0.04); 0: no reference model
    kl_correction: bool = True  # the KL term's gradient is that of KL(pi || ref) (DeepSeek-V3.2, TRL's default); false: GRPO's paper's k3
    iterations: int = 1  # optimizer steps on each batch of answers (GRPO's mu, TRL's num_iterations); > 1: PPO's clipped ratio
    epsilon: float = 0.2  # iterations > 1: the ratio to the policy that wrote the answers is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float | None = None  # None: epsilon; DAPO's clip-higher: 0.28
    delta: float | None = None  # cap on the unclipped ratio (INTELLECT-2's two-sided clip, e.g. 4); None: none
    importance_sampling: str = "token"  # the ratio per token (GRPO) | sequence: per answer (GSPO; clip it at epsilon 3e-4, epsilon_high 4e-4)
    dynamic_sampling: int = 0  # up to this many rounds of more prompts replacing groups whose answers all scored the same (DAPO); 0: off
    overlong_buffer: int = 0  # answers longer than max_new_tokens - this lose reward linearly (DAPO's overlong shaping); 0: off
    overlong_penalty: float = 1.0  # the reward lost at max_new_tokens (a cut answer)
    top_entropy_quantile: float = 1.0  # < 1: only this share of answer tokens, the highest-entropy ones, train the policy ("Beyond the 80/20 rule": 0.2)
    ref_sync_steps: int = 0  # beta > 0, mode full: every N steps the reference moves to the policy (TRL's sync_ref_model: 512); 0: never
    ref_sync_alpha: float = 0.6  # ref <- alpha x policy + (1 - alpha) x ref (TRL: 0.6; 1: reset to the policy, as ProRL)
    judge: JudgeSettings = field(default_factory=JudgeSettings)  # the server of the judge reward
    gather_for_generation: bool = True  # ZeRO-3: gather the whole model on each rank once per generate call (TRL's ds3_gather_for_generation); false: per token, where it does not fit

    def validate(self) -> list[str]:
        from .rewards import reward_problems

        problems = reward_problems(self.rewards)
        if self.generations < 2:
            problems.append(f"generations: must be >= 2 (an answer is judged against its group), got {self.generations}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.temperature <= 10:
            problems.append(f"temperature: expected a value in (0, 10], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: expected a value in (0, 1], got {self.top_p}")
        if self.loss not in GRPO_LOSSES:
            problems.append(f"loss: expected one of {list(GRPO_LOSSES)}, got {self.loss!r}")
        if not 0 <= self.beta <= 10:
            problems.append(f"beta: expected a value in [0, 10] (0: no KL penalty; GRPO's paper: 0.04), got {self.beta}")
        return problems + self._clip_problems() + self._dapo_problems() + self.judge.problems("judge" in self.rewards)

    def _dapo_problems(self) -> list[str]:
        problems = []
        if not 0 <= self.dynamic_sampling <= 16:
            problems.append(f"dynamic_sampling: expected 0 (off) to 16 rounds, got {self.dynamic_sampling}")
        if not 0 <= self.overlong_buffer < self.max_new_tokens:
            problems.append(f"overlong_buffer: expected 0 (off) to max_new_tokens - 1 = {self.max_new_tokens - 1} "
                            f"tokens (DAPO: a quarter of it), got {self.overlong_buffer}")
        if self.ref_sync_steps < 0 or not 0 < self.ref_sync_alpha <= 1:
            problems.append(f"ref_sync_steps / ref_sync_alpha: expected steps >= 0 (0: never) and alpha in (0, 1], got "
                            f"{self.ref_sync_steps} / {self.ref_sync_alpha}")
        if self.ref_sync_steps and not self.beta:
            problems.append("ref_sync_steps: the reference only exists with a KL penalty (grpo.beta > 0)")
        if not 0 < self.top_entropy_quantile <= 1:
            problems.append(f"top_entropy_quantile: expected a share in (0, 1] (1: every token; 0.2: the top "
                            f"fifth), got {self.top_entropy_quantile}")
        if not 0 < self.overlong_penalty <= 10:
            problems.append(f"overlong_penalty: expected a value in (0, 10] (DAPO: 1), got {self.overlong_penalty}")
        return problems

    def _clip_problems(self) -> list[str]:
        problems = []
        if not 1 <= self.iterations <= 64:
            problems.append(f"iterations: expected 1 to 64 optimizer steps per batch of answers, got {self.iterations}")
        if not 0 < self.epsilon < 1:
            problems.append(f"epsilon: expected a value in (0, 1) (PPO, GRPO: 0.2; GSPO: 3e-4), got {self.epsilon}")
        high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        if self.epsilon_high is not None and not 0 < self.epsilon_high <= 10:
            problems.append(f"epsilon_high: expected a value in (0, 10] (DAPO: 0.28) or null, got {self.epsilon_high}")
        if self.delta is not None and not self.delta > 1 + high:
            problems.append(f"delta: must exceed 1 + epsilon_high = {1 + high:g} (it caps the ratio the clip lets "
                            f"through; INTELLECT-2: 4) or be null, got {self.delta}")
        if self.importance_sampling not in GRPO_IMPORTANCE:
            problems.append(f"importance_sampling: expected one of {list(GRPO_IMPORTANCE)}, "
                            f"got {self.importance_sampling!r}")
        return problems


@dataclass
class DistillSettings:
    """Used when ``objective: distill`` (engine/distill.py); the data are then SFT records, whose prompts the student
    answers (``lmbda``) and whose answers it is taught on otherwise."""

    teacher: str | None = None  # the teacher's HF folder: same vocabulary as the student (ids and size), any size
    beta: float = 0.5  # 0: forward KL (word-level KD) | 1: reverse KL (on-policy distillation) | between: GKD's generalized JSD
    lmbda: float = 0.5  # share of micro batches on the student's own answers (GKD's lambda); 0: the data's answers only
    temperature: float = 1.0  # of both distributions in the divergence and of the student's sampled answers
    max_new_tokens: int = 256  # longest answer the student writes
    top_p: float = 1.0  # nucleus sampling of the student's answers (1.0: off)
    gather_for_generation: bool = True  # ZeRO-3: gather the student once per generate call (as grpo.gather_for_generation)

    def validate(self) -> list[str]:
        problems = []
        if not 0 <= self.beta <= 1:
            problems.append(f"beta: expected a value in [0, 1] (0: forward KL, 1: reverse KL, GKD: 0.5), got {self.beta}")
        if not 0 <= self.lmbda <= 1:
            problems.append(f"lmbda: expected a share in [0, 1] (0: the data's answers only; GKD: 0.5), got {self.lmbda}")
        if not 0 < self.temperature <= 10:
            problems.append(f"temperature: expected a value in (0, 10], got {self.temperature}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p: expected a value in (0, 1], got {self.top_p}")
        return problems


OBJECTIVES = ("sft", "dpo", "kto", "grpo", "distill")


@dataclass
class SFTConfig(TrainConfig):
    data: SFTData = field(default_factory=SFTData)
    objective: str = "sft"  # sft (answers' next-token loss) | dpo (preference pairs) | kto (answers judged one by one) | grpo (rewarded answers the model writes) | distill (a teacher's distributions)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    kto: KTOSettings = field(default_factory=KTOSettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.objective not in OBJECTIVES:
            problems.append(f"objective: expected one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "distill" and not self.distill.teacher:
            problems.append("distill.teacher: required, the teacher model's folder (it must share the student's "
                            "vocabulary)")
        if self.objective == "distill" and self.distill.lmbda and self.distill.max_new_tokens >= self.data.max_seq_length:
            problems.append(f"distill.max_new_tokens: {self.distill.max_new_tokens} leaves no room for a prompt in "
                            f"data.max_seq_length={self.data.max_seq_length}")
        if self.objective == "distill" and self.data.packing and self.distill.lmbda:
            problems.append("data.packing: not with distill.lmbda > 0 (the student answers each row's prompt; "
                            "packing works with lmbda=0, the data's answers only)")
        elif self.objective not in ("sft", "distill") and self.data.packing:
            problems.append(f"data.packing: not with objective={self.objective} (a batch holds whole rows of "
                            "pairs or examples)")
        if self.objective != "sft" and self.mode == "embeddings":
            problems.append(f"mode: embeddings is for new vocabulary rows; {self.objective} trains with mode=full or lora")
        if self.objective == "grpo" and self.model.neftune_alpha:
            problems.append("model.neftune_alpha: not with objective=grpo (the answers are sampled without noise; "
                            "their log-probabilities, and the reference's, must be too)")
        if self.objective == "grpo" and self.grpo.ref_sync_steps and self.mode != "full":
            problems.append("grpo.ref_sync_steps: with mode=full only (a LoRA run's reference is the base without "
                            "its adapters, which cannot move to the policy; TRL refuses it with PEFT too)")
        if self.objective == "grpo" and self.grpo.max_new_tokens >= self.data.max_seq_length:
            problems.append(f"grpo.max_new_tokens: {self.grpo.max_new_tokens} leaves no room for a prompt in "
                            f"data.max_seq_length={self.data.max_seq_length}")
        if self.objective != "sft" and self.deepspeed.sequence_parallel > 1:
            problems.append(f"deepspeed.sequence_parallel: objective={self.objective} scores whole rows (or writes "
                            f"them); sequence parallelism splits the rows of objective=sft only")
        return problems
