"""Per-rank bytes of model + optimizer state under the engine's ZeRO-3, with 1 and with 2 ranks.

    OMP_NUM_THREADS=1 python benchmarks/zero3_memory.py [--hidden 128 --layers 4]

Runs the real engine (engine.train, full mode, fp32, AdamW) for 2 steps on a tiny random
LLaMA under torchrun with 1 rank, then 2 ranks, and counts on each rank: parameter partitions
(``ds_tensor``), the optimizer's fp32 partitions and its Adam moments. Prints the 2-rank/1-rank
ratio (ZeRO-3 target: <= 0.55, i.e. each of 2 ranks holds about half).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(engine) -> dict[str, int]:
    import torch

    params = _bytes(p.ds_tensor for p in engine.module.parameters() if hasattr(p, "ds_tensor"))
    zero = engine.optimizer  # DeepSpeedZeroOptimizer_Stage3
    master = _bytes(getattr(zero, "fp32_partitioned_groups_flat", []))
    moments = _bytes(v for state in zero.optimizer.state.values() for v in state.values()
                     if isinstance(v, torch.Tensor) and v.dim() > 0)
    return {"param_partitions": params, "fp32_master": master, "adam_moments": moments,
            "total": params + master + moments}


def rank_main(spec: dict) -> None:
    import torch.distributed as dist

    from engine import loop
    from engine.tiny import TinyPacked
    from pretrain.train_cli import PretrainConfig
    from zhllama.config import load_config

    cfg = load_config(PretrainConfig, REPO / "pretrain" / "configs" / "tiny_cpu.yaml", [
        f"model.path={spec['model']}", f"output_dir={spec['out']}", "schedule.max_steps=2", "schedule.warmup_steps=0",
        "batch.micro_batch_size=1", "batch.gradient_accumulation_steps=1", "checkpoint.every_steps=0",
        "eval.every_steps=0", "eval.at_start=false", "logging.wandb=disabled", "logging.tensorboard=false",
        "logging.plot=false", "logging.progress=false"])
    run = loop.run_training(cfg, TinyPacked(cfg.model.path, 0, 24), None, None, eval_characters=None,
                            data_fingerprint=None, tokenizer_fingerprint=None)
    mine = measure(run.engine)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(everyone))


def launch(ranks: int, model: Path, work: Path) -> list[dict]:
    result = work / f"ranks{ranks}.json"
    spec = json.dumps({"model": str(model), "out": str(work / f"run{ranks}"), "result": str(result)})
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([torchrun, "--nproc_per_node", str(ranks), "--master_port", str(29500 + 17 * ranks),
                           __file__, "--rank-spec", spec], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"{ranks}-rank run failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_spec:
        return rank_main(json.loads(args.rank_spec))
    sys.path.insert(0, str(REPO))
    from engine.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_tiny_model(work / "model", hidden=args.hidden, layers=args.layers)
        one, two = launch(1, model, work), launch(2, model, work)
    print(f"model: tiny LLaMA hidden={args.hidden} layers={args.layers}, fp32, AdamW, ZeRO-3 (persistence threshold 0)")
    print(f"{'':>8} {'params':>12} {'fp32 master':>12} {'adam m+v':>12} {'total':>12}")
    for label, rows in (("1 rank", one), ("2 ranks", two)):
        for r, row in enumerate(rows):
            print(f"{label + f' r{r}':>8} {row['param_partitions']:>12,} {row['fp32_master']:>12,} "
                  f"{row['adam_moments']:>12,} {row['total']:>12,}")
    ratio = max(row["total"] for row in two) / one[0]["total"]
    print(f"per-rank bytes, 2 ranks / 1 rank (largest rank): {ratio:.3f}  (target <= 0.55: "
          f"{'OK' if ratio <= 0.55 else 'NOT MET'})")


if __name__ == "__main__":
    main()
