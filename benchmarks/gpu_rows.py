"""The rows of benchmarks/gpu_throughput.py that are not our engine, each run in a fresh process.

    python benchmarks/gpu_rows.py '{"row": "peer", "model": DIR, "data": DIR, ...}'

- ``peer``: the HF Trainer + DeepSpeed ZeRO-3 path of Chinese-LLaMA-Alpaca-2 / LLaMA-Factory (bf16,
  no document mask: blocks attend causally across documents, as those projects train).
- ``plain``: a plain-torch reference — fp32 master weights, bf16 autocast, fused AdamW, sdpa causal.
- ``plain_liger``: the same with Liger kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy).
- ``plain_doc_flex_liger``: Liger and the document mask (packed position_ids, flex_attention): the
  fastest document-masked plain-torch loop the issue measured, the ceiling the engine is held to.
Each prints one JSON line ``{"tokens_per_s", "peak_memory_gib", "steps"}`` on its last line.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _blocks(spec: dict):
    from engine.packed import PackedDataset

    return PackedDataset(spec["data"], "train")


def _batch(ds, step: int, micro: int, device) -> dict:
    import torch

    n = len(ds)
    items = [ds[(step * micro + i) % n] for i in range(micro)]
    return {key: torch.stack([it[key] for it in items]).to(device) for key in ("input_ids", "position_ids", "labels")}


def _report(times: list[float], tokens_per_step: int, warmup: int) -> None:
    import torch

    timed = times[warmup:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    print(json.dumps({"tokens_per_s": tokens_per_step * len(timed) / sum(timed), "peak_memory_gib": peak,
                      "steps": len(timed)}), flush=True)


def run_plain(spec: dict, liger: bool, document_mask: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, swiglu=True, rms_norm=True, cross_entropy=False,
                                    fused_linear_cross_entropy=True)
    attention = ("flex_attention" if device.type == "cuda" else "sdpa") if document_mask else "sdpa"
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation=attention)
    model.to(device).train()
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ds, micro = _blocks(spec), spec["micro_batch"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bfloat16")
    times = []
    for step in range(spec["warmup"] + spec["steps"]):
        batch = _batch(ds, step, micro, device)
        if not document_mask:  # attend causally across documents, as the peer projects train
            batch.pop("position_ids")
        start = time.perf_counter()
        with autocast:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    _report(times, micro * batch["input_ids"].shape[1], spec["warmup"])


def run_peer(spec: dict) -> None:
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(spec.get("port", 29611)))):
        os.environ.setdefault(key, value)
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)  # see ENV-NOTES (CPU)
    ds_json = json.loads((REPO / "engine" / "ds" / "zero3.json").read_text())
    bf16 = spec["dtype"] == "bfloat16"
    args = TrainingArguments(
        output_dir=str(Path(spec["work"]) / "peer"), per_device_train_batch_size=spec["micro_batch"],
        max_steps=spec["warmup"] + spec["steps"], learning_rate=1e-4, logging_steps=1000, save_strategy="no",
        report_to=[], bf16=bf16, deepspeed=ds_json, use_cpu=not cuda, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if bf16 else torch.float32)
    model.config.use_cache = False
    blocks = _blocks(spec)
    train = [{"input_ids": blocks[i]["input_ids"], "labels": blocks[i]["labels"]} for i in range(len(blocks))]

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    clock = Clock()
    Trainer(model=model, args=args, train_dataset=train, callbacks=[clock]).train()
    _report(clock.times, spec["micro_batch"] * len(train[0]["input_ids"]), spec["warmup"])


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    if spec["row"] == "peer":
        run_peer(spec)
    else:
        run_plain(spec, liger="liger" in spec["row"], document_mask="doc" in spec["row"])
