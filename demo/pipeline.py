"""The demo's stages, each a few commands of the phase CLIs, in order.

01_split → 02_vocab → 03_base_pretrain → 04_resize → 05_cpt → 06_sft → 07_eval → 08_dpo → 09_kto → 10_grpo
(the last three in demo/preference_stages.py). Every stage
reads only files written by earlier stages (or the fetched inputs) and writes under
WORK/NN_name/. Only the train split of the reviews reaches any training command.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from .budget import Budget
from .manifests import write_eval_manifest, write_manifest
from .stages import Command, Stage

PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run", "--standalone"]
PT_PRESET = "pretrain/configs/tiny_cpu.yaml"
SFT_PRESET = "sft/configs/tiny_cpu.yaml"
# Short Chinese preamble instead of the English Alpaca one: the prompt is most of every SFT
# sample's compute on this tiny budget.
SFT_SYSTEM_PROMPT = "下面是一条指令和一段输入，请写出恰当的回答。"
# What a training command imports besides its phase: a stage is reused only while all of it is unchanged
# (tests/test_demo_units.py checks every stage's list against the imports of its commands).
TRAINING_CODE = ("engine", "corpora", "evaluation")
ENGLISH_TEXT = "LICENSE"  # fetched member (demo/sources.yaml) scored as held-out English


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _metrics_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def torchrun(budget: Budget, module: str, preset: str, overrides: list[str]) -> Command:
    return Command([*TORCHRUN, "--nproc_per_node", str(budget.ranks), "-m", module, "train", "--config", preset,
                    *overrides], env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"})


def engine_overrides(out_dir: Path, model: Path, lr: float, micro_batch: int, steps: int | None) -> list[str]:
    out = [f"model.path={model}", f"output_dir={out_dir}", f"optim.lr={lr}",
           f"batch.micro_batch_size={micro_batch}", "batch.gradient_accumulation_steps=1",
           "checkpoint.every_steps=0", "logging.every_steps=5", "logging.wandb=disabled",
           "logging.tensorboard=false", "logging.progress=true", "logging.plot=true",
           "eval.at_start=true", "seed=0"]
    if steps is not None:
        out += [f"schedule.max_steps={steps}", f"schedule.warmup_steps={max(1, steps // 20)}",
                f"eval.every_steps={max(1, steps // 2)}"]
    return out


def collect_training(stage: Stage) -> dict[str, Any]:
    report = _read_json(stage.path("run", "train_report.json"))
    curve = _metrics_jsonl(stage.path("run", "metrics.jsonl"))
    train_points = [[r["step"], r["train/loss"]] for r in curve if "train/loss" in r]
    eval_points = [[r["step"], r["eval/loss"]] for r in curve if "eval/loss" in r]
    m = report.get("metrics", {})
    return {"steps": report.get("step"), "world_size": report.get("world_size"),
            "global_batch": report.get("global_batch"), "total_params": report.get("total_params"),
            "final_train_loss": m.get("train/loss"), "final_eval_loss": m.get("eval/loss"),
            "final_eval_bpc": m.get("eval/bits_per_char", m.get("eval/bpc")),
            "tokens_per_s": m.get("train/tokens_per_s"), "final_dir": report.get("final_dir"),
            "train_curve": train_points, "eval_curve": eval_points}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every stage writes and the files that pass between stages."""
    work: Path
    inputs: dict[str, Path]  # fetched files, keyed by their save_as name (demo/sources.yaml)

    def stage(self, name: str) -> Path:
        return self.work / name

    @property
    def data(self) -> Path:
        return self.stage("01_split") / "data"

    @property
    def train_txt(self) -> Path:
        return self.data / "train.txt"

    @property
    def test_txt(self) -> Path:
        return self.data / "test.txt"

    @property
    def english_txt(self) -> Path:
        # mistral-common's Apache-2.0 licence: English prose no stage trains on (held out by construction).
        return self.inputs[ENGLISH_TEXT]

    @property
    def base_tokenizer(self) -> Path:
        return self.inputs["tokenizer.model"]

    @property
    def merged(self) -> Path:
        return self.stage("02_vocab") / "merged"

    @property
    def base_final(self) -> Path:
        return self.stage("03_base_pretrain") / "run" / "final"

    @property
    def resized(self) -> Path:  # the initialisation trained further
        return self.stage("04_resize") / "subtoken-mean"

    @property
    def cpt_final(self) -> Path:
        return self.stage("05_cpt") / "run" / "final"

    @property
    def sft_final(self) -> Path:
        return self.stage("06_sft") / "run" / "final"

    @property
    def kto_final(self) -> Path:
        return self.stage("09_kto") / "run" / "final"

    @property
    def grpo_final(self) -> Path:
        return self.stage("10_grpo") / "run" / "final"

    @property
    def dpo_final(self) -> Path:
        return self.stage("08_dpo") / "run" / "final"


def _manifest(stage: Stage) -> Path:
    return stage.path("inputs", "train_reviews.yaml")


def _write_train_manifest(train_txt: Path):
    return lambda s: write_manifest(_manifest(s), train_txt, "demo_reviews_train")


def bpc_command(text: Path, out: Path, models: list[str], limit: int | None) -> Command:
    """Bits/char of ``models`` (LABEL=DIR) on ``text`` with demo/bpc.py (vocab/bpc.py's scoring)."""
    return Command([PY, "-m", "demo.bpc", "--text", str(text), *(["--limit", str(limit)] if limit else []),
                    "--out", str(out), *[a for m in models for a in ("--model", m)]])


def split_stage(lay: Layout, b: Budget) -> Stage:
    neg, pos = lay.inputs["neg.txt"], lay.inputs["pos.txt"]
    return Stage(
        "01_split", "split the labelled reviews into train/test by a hash of the text", lay.stage("01_split"),
        settings={k: getattr(b, k) for k in ("test_percent", "max_train_docs", "sft_examples", "eval_examples",
                                             "review_chars")},
        inputs={"neg": neg, "pos": pos},
        commands=[Command([PY, "-m", "demo.split", "--neg", str(neg), "--pos", str(pos),
                           "--out", str(lay.data), "--test-percent", str(b.test_percent),
                           "--max-train-docs", str(b.max_train_docs), "--sft-examples", str(b.sft_examples),
                           "--eval-examples", str(b.eval_examples), "--review-chars", str(b.review_chars)])],
        code=["demo/split.py"],
        collect=lambda s: _read_json(lay.data / "split_report.json"),
    )


def vocab_stage(lay: Layout, b: Budget) -> Stage:
    vocab_dir, base = lay.stage("02_vocab"), lay.base_tokenizer
    return Stage(
        "02_vocab", "train a Chinese vocabulary on the train reviews and merge it into Mistral's", vocab_dir,
        settings={"zh_vocab_size": b.zh_vocab_size, "character_coverage": b.character_coverage},
        inputs={"train": lay.train_txt, "test": lay.test_txt, "base": base},
        commands=[
            Command([PY, "-m", "vocab", "train", "--manifest", str(vocab_dir / "inputs" / "train_reviews.yaml"),
                     "--vocab-size", str(b.zh_vocab_size), "--character-coverage", str(b.character_coverage),
                     "--out", str(vocab_dir / "zh")]),
            Command([PY, "-m", "vocab", "merge", "--base", str(base), "--add",
                     str(vocab_dir / "zh" / "zh.model"), "--out", str(lay.merged)]),
            Command([PY, "-m", "vocab", "stats", "--tokenizer", str(lay.merged), "--base", str(base),
                     str(lay.test_txt), "--json"], stdout_to=vocab_dir / "stats_test.json"),
        ],
        code=["vocab", "corpora"],
        prepare=_write_train_manifest(lay.train_txt),
        collect=collect_vocab,
    )


def base_stage(lay: Layout, b: Budget) -> Stage:
    base_dir = lay.stage("03_base_pretrain")
    return Stage(
        "03_base_pretrain", "build a tiny LLaMA over the BASE tokenizer and pretrain it briefly (ZeRO-3, 2 ranks)",
        base_dir,
        settings={k: getattr(b, k) for k in ("hidden", "layers", "heads", "block_size", "base_steps", "base_lr",
                                             "pt_micro_batch", "ranks")},
        inputs={"train": lay.train_txt, "base": lay.base_tokenizer},
        commands=[
            Command([PY, "-m", "demo.base_model", "--tokenizer", str(lay.base_tokenizer), "--out",
                     str(base_dir / "init"), "--hidden", str(b.hidden), "--layers", str(b.layers),
                     "--heads", str(b.heads), "--seed", "0"]),
            Command([PY, "-m", "pretrain", "prepare", "--manifest", str(base_dir / "inputs" / "train_reviews.yaml"),
                     "--tokenizer", str(base_dir / "init"), "--block-size", str(b.block_size),
                     "--out", str(base_dir / "shards"), "--num-proc", "1"]),
            torchrun(b, "pretrain", PT_PRESET,
                     engine_overrides(base_dir / "run", base_dir / "init", b.base_lr,
                                      b.pt_micro_batch, b.base_steps) + [f"data.dir={base_dir / 'shards'}"]),
        ],
        code=["pretrain", *TRAINING_CODE, "vocab", "demo/base_model.py"],
        prepare=_write_train_manifest(lay.train_txt),
        collect=collect_training,
    )


def resize_stage(lay: Layout, b: Budget) -> Stage:
    resize_dir = lay.stage("04_resize")
    models = [f"base model, base tokenizer={lay.base_final}",
              *[f"{init}={resize_dir / init}" for init in ("random", "mean", "subtoken-mean") if init in b.inits]]
    return Stage(
        "04_resize", "grow the embeddings to the merged vocabulary; bits/char at step 0 per init", resize_dir,
        settings={"inits": list(b.inits), "bpc_texts": b.bpc_texts},
        inputs={"base_model": lay.base_final, "merged": lay.merged, "test": lay.test_txt,
                "english": lay.english_txt},
        commands=[
            *[Command([PY, "-m", "vocab", "resize", "--model", str(lay.base_final), "--tokenizer", str(lay.merged),
                       "--out", str(resize_dir / init), "--init", init, "--seed", "0"])
              for init in b.inits],
            bpc_command(lay.test_txt, resize_dir / "bpc.json", models, b.bpc_texts),
            bpc_command(lay.english_txt, resize_dir / "bpc_en.json", models, None),
        ],
        code=["vocab", "corpora", "demo/bpc.py"],
        collect=lambda s: {"bpc": _read_json(resize_dir / "bpc.json"), "bpc_en": _read_json(resize_dir / "bpc_en.json"),
                           "resize_report": _read_json(resize_dir / "subtoken-mean" / "resize_report.json")},
    )


def cpt_stage(lay: Layout, b: Budget) -> Stage:
    cpt_dir = lay.stage("05_cpt")
    models = [f"after continued pretraining={lay.cpt_final}"]
    return Stage(
        "05_cpt", "continued pretraining with the merged tokenizer on the train reviews (ZeRO-3, 2 ranks)", cpt_dir,
        settings={k: getattr(b, k) for k in ("block_size", "cpt_steps", "cpt_lr", "pt_micro_batch", "ranks",
                                             "bpc_texts")},
        inputs={"model": lay.resized, "train": lay.train_txt, "test": lay.test_txt, "english": lay.english_txt},
        commands=[
            Command([PY, "-m", "pretrain", "prepare", "--manifest", str(cpt_dir / "inputs" / "train_reviews.yaml"),
                     "--tokenizer", str(lay.resized), "--block-size", str(b.block_size),
                     "--out", str(cpt_dir / "shards"), "--num-proc", "1"]),
            torchrun(b, "pretrain", PT_PRESET,
                     engine_overrides(cpt_dir / "run", lay.resized,
                                      b.cpt_lr, b.pt_micro_batch, b.cpt_steps) + [f"data.dir={cpt_dir / 'shards'}"]),
            bpc_command(lay.test_txt, cpt_dir / "bpc.json", models, b.bpc_texts),
            bpc_command(lay.english_txt, cpt_dir / "bpc_en.json", models, None),
        ],
        code=["pretrain", *TRAINING_CODE, "vocab", "demo/bpc.py"],
        prepare=_write_train_manifest(lay.train_txt),
        collect=lambda s: {**collect_training(s), "bpc": _read_json(cpt_dir / "bpc.json"),
                           "bpc_en": _read_json(cpt_dir / "bpc_en.json")},
    )


def sft_stage(lay: Layout, b: Budget) -> Stage:
    sft_dir = lay.stage("06_sft")
    sft_files = "data.files=[{path: %s, weight: 1.0}]" % json.dumps(str(lay.data / "sft_train.json"))
    return Stage(
        "06_sft", "Alpaca-style SFT on the labelled train reviews (正面/负面), ZeRO-3, 2 ranks", sft_dir,
        settings={k: getattr(b, k) for k in ("sft_epochs", "sft_lr", "sft_micro_batch", "sft_max_seq_length",
                                             "ranks")} | {"system_prompt": SFT_SYSTEM_PROMPT},
        inputs={"model": lay.cpt_final, "sft_train": lay.data / "sft_train.json"},
        commands=[torchrun(b, "sft", SFT_PRESET,
                           engine_overrides(sft_dir / "run", lay.cpt_final,
                                            b.sft_lr, b.sft_micro_batch, None)
                           + ["mode=full", "schedule.max_steps=0", f"schedule.epochs={b.sft_epochs}",
                              "schedule.warmup_steps=5", "eval.every_steps=50", sft_files,
                              "data.eval_fraction=0.02", "data.template=alpaca",
                              f"data.system_prompt={SFT_SYSTEM_PROMPT}", f"data.max_seq_length={b.sft_max_seq_length}",
                              "data.packing=false", f"data.cache_dir={sft_dir / 'cache'}"])],
        code=["sft", *TRAINING_CODE],
        collect=collect_training,
    )


def _write_eval_manifests(train_txt: Path, eval_file: Path):
    def prepare(stage: Stage) -> None:
        write_manifest(_manifest(stage), train_txt, "demo_reviews_train")
        write_eval_manifest(stage.path("inputs", "test_reviews.yaml"), eval_file)
    return prepare


def eval_stage(lay: Layout, b: Budget) -> Stage:
    eval_dir, eval_file = lay.stage("07_eval"), lay.data / "sft_eval.jsonl"
    contamination = eval_dir / "contamination.keys"
    return Stage(
        "07_eval", "test reviews already in the train reviews; accuracy vs the majority class; sample generations",
        eval_dir,
        settings={"samples": b.samples},
        inputs={"model": lay.sft_final, "eval": eval_file, "train": lay.train_txt},
        commands=[
            Command([PY, "-m", "evaluation", "contamination", str(eval_dir / "inputs" / "train_reviews.yaml"),
                     "--eval-manifest", str(eval_dir / "inputs" / "test_reviews.yaml"), "--out", str(contamination)]),
            Command([PY, "-m", "demo.evaluate", "--model", str(lay.sft_final), "--eval", str(eval_file),
                     "--train-labels", str(lay.data / "split_report.json"),
                     "--contamination", f"{contamination}.json", "--out", str(eval_dir / "eval.json")]),
            Command([PY, "-m", "sft", "generate", "--model", str(lay.sft_final), "--input", str(eval_file),
                     "--out", str(eval_dir / "generations.jsonl"), "--limit", str(b.samples),
                     "--max-new-tokens", "8", "--batch-size", str(b.samples)]),
        ],
        prepare=_write_eval_manifests(lay.train_txt, eval_file),
        code=["sft", *TRAINING_CODE, "demo/evaluate.py", "demo/split.py"],
        collect=collect_eval,
    )


def build_stages(work: Path, budget: Budget, inputs: dict[str, Path]) -> list[Stage]:
    from .preference_stages import dpo_stage, grpo_stage, kto_stage  # they build on this module's helpers

    lay = Layout(work, inputs)
    builders = (split_stage, vocab_stage, base_stage, resize_stage, cpt_stage, sft_stage, eval_stage, dpo_stage,
                kto_stage, grpo_stage)
    return [build(lay, budget) for build in builders]


def collect_vocab(stage: Stage) -> dict[str, Any]:
    stats = _read_json(stage.path("stats_test.json"))
    merge = _read_json(stage.path("merged", "merge_report.json"))
    train = _read_json(stage.path("zh", "train_report.json"))
    (file_stats,) = stats["files"].values()
    return {
        "zh_pieces": train.get("model", {}).get("vocab_size"),
        "base_vocab_size": merge.get("base_vocab_size"), "added": merge.get("added"),
        "skipped_duplicate": merge.get("skipped_duplicate"), "merged_vocab_size": merge.get("vocab_size"),
        "test_lines": file_stats.get("lines"), "test_characters": file_stats.get("characters"),
        "tokens_per_char_base": file_stats.get("base_tokens_per_char"),
        "tokens_per_char_merged": file_stats.get("tokens_per_char"),
        "tokens_per_cjk_char_merged": file_stats.get("tokens_per_cjk_char"),
        "byte_fallback_share_merged": file_stats.get("byte_fallback_share"),
        "non_cjk_lines_changed": file_stats.get("non_cjk_lines_changed"),
        "unreachable_added": stats["tokenizer"].get("unreachable_added"),
    }


def collect_eval(stage: Stage) -> dict[str, Any]:
    rows = [json.loads(line) for line in stage.path("generations.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    samples = [{"input": r.get("input") or r.get("question"), "reference": r.get("std_answer"),
                "prediction": r.get("prediction"), "finished": r.get("finished")} for r in rows]
    return {**_read_json(stage.path("eval.json")), "samples": samples}
