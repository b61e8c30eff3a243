"""Metrics sinks on rank 0: metrics.jsonl (always), TensorBoard, wandb (offline by default), the PNG.

Other ranks get a tracker that does nothing, so the loop calls it unconditionally.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from zhllama.files import save_figure_atomic

from .config import TrainConfig


class Tracker:
    def __init__(self, cfg: TrainConfig, enabled: bool, resumed_step: int):
        self.enabled = enabled
        self.out = Path(cfg.output_dir)
        self.tb = self.wandb_run = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = (self.out / "metrics.jsonl").open("a", encoding="utf-8")
        self._truncate_after(resumed_step)
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed run logged after its last checkpoint.
            self.tb = SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None)
        if cfg.logging.wandb != "disabled":
            # Offline unless the user asked otherwise, so a cluster without internet never blocks.
            os.environ.setdefault("WANDB_MODE", cfg.logging.wandb)
            os.environ.setdefault("WANDB_DIR", str(self.out))
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.logging.wandb_project, name=cfg.logging.run_name or self.out.name,
                dir=str(self.out), config=_plain(cfg), resume="allow",
            )

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the crashed run logged after its last checkpoint."""
        path = self.out / "metrics.jsonl"
        self.jsonl.close()
        kept = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except json.JSONDecodeError:  # a line cut by the crash
                    continue
        path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self.jsonl = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self, plot: bool) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        if plot:
            plot_loss_curve(self.out / "metrics.jsonl", self.out / "loss_curve.png")


def plot_loss_curve(jsonl: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals, named = [], [], {}
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "train/loss" in rec:
            train.append((rec["step"], rec["train/loss"]))
        if "eval/loss" in rec:
            evals.append((rec["step"], rec["eval/loss"]))
        for key, value in rec.items():  # named held-out sets (eval.sets): eval/<name>/loss
            if key.startswith("eval/") and key.endswith("/loss") and key.count("/") == 2:
                named.setdefault(key.split("/")[1], []).append((rec["step"], value))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    for name, points in sorted(named.items()):
        ax.plot(*zip(*points), "s--", label=f"{name} loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, png)


def _plain(cfg: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
