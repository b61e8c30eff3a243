"""Sequence parallelism on 2 CPU ranks: ours beside DeepSpeed's own Ulysses attention, on the same rows.

    OMP_NUM_THREADS=1 python benchmarks/sequence_parallel.py [--length 16384 --hidden 256 --layers 4]

Two tables, each row a fresh torchrun launch of this file (2 ranks, gloo) with a random LLaMA:

1. Correctness, at 2,048 tokens: the loss of one micro batch computed by 2 ranks sharing each row, against
   the same rows computed whole on one rank (the reference every test of the engine trusts). Rows packed with
   documents (positions restart, as `pretrain prepare` writes them) and rows of one document each. Columns:
   engine/sequence_parallel.py, and DeepSpeed 0.19's ``UlyssesSPAttentionHF.register_with_transformers``
   (what HF Trainer/Accelerate use for ALST) fed the same slices of the same rows.
2. Memory and time of one forward + backward of a ``--length``-token row per rank pair, one document per row,
   fused loss: each rank holding whole rows (plain data parallelism: 2 rows, one per rank) against the 2 ranks
   sharing 1 row (ours, DeepSpeed's), and ours with the MLPs in tiles (model.mlp_chunk_tokens: engine/tiled_mlp.py).
   Memory: the rank's peak resident set during the step above its resident set before it (activations, gradients,
   the exchanged heads); tokens/s over both ranks.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 4096


def _model(spec: dict, kernel: str = "sdpa"):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=spec["hidden"], intermediate_size=spec["hidden"] * 8 // 3,
                         num_hidden_layers=spec["layers"], num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=spec["length"], initializer_range=0.1, attn_implementation=kernel)
    return LlamaForCausalLM(config).train()


def _rows(rows: int, length: int, packed: bool, seed: int = 0) -> dict:
    """Random ids; packed rows hold documents of 100-700 tokens whose positions restart at 0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=gen)
    positions = torch.arange(length).repeat(rows, 1)
    if packed:
        for row in positions:
            start = 0
            while start < length:
                size = int(torch.randint(100, 700, (1,), generator=gen))
                row[start:start + size] = torch.arange(min(size, length - start))
                start += size
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def _deepspeed_part(model, batch: dict, rank: int, size: int) -> dict:
    """DeepSpeed's Ulysses registered on ``model``; this rank's slice (targets shifted on the whole row)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    from engine.loss import shift_labels

    UlyssesSPAttentionHF.register_with_transformers(model, "sdpa", size, batch["input_ids"].shape[0],
                                                    seq_length_is_variable=True)
    local = batch["input_ids"].shape[1] // size
    part = slice(rank * local, (rank + 1) * local)
    return {"input_ids": batch["input_ids"][:, part], "position_ids": batch["position_ids"][:, part],
            "targets": shift_labels(batch["labels"])[:, part]}


def _step(model, part: dict, per_token: float | None, backward: bool):
    """(summed loss, labelled tokens) of ``part``; backward as the engine does it."""
    from engine.evaluate import forward_loss

    loss_sum, count = forward_loss(model, part, "cpu")
    if backward:
        (loss_sum * per_token if per_token else loss_sum / count.clamp(min=1)).backward()
    return loss_sum.detach(), count


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rank_main(spec: dict) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from engine.loss import install_fused_head
    from engine.sequence_parallel import SequenceSplit, install_attention, make_groups
    from engine.tiled_mlp import install_tiled_mlp

    deepspeed.init_distributed("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    model = _model(spec)
    install_fused_head(model, 4096)
    install_tiled_mlp(model, spec.get("mlp_tiles", 0))
    whole_rows = spec["how"] == "whole"
    batch = _rows(size if whole_rows and spec["table"] == "memory" else 1, spec["length"], spec["packed"])
    if whole_rows and spec["table"] == "memory":  # each rank its own row: data parallelism
        batch = {k: v[rank:rank + 1] for k, v in batch.items()}
    reference = None
    if spec["table"] == "loss":  # the whole rows on this rank, before any attention is replaced
        with torch.no_grad():
            loss_sum, count = _step(model, batch, None, False)
        reference = (loss_sum / count).item()
    split, per_token, part = None, None, batch
    if spec["how"] == "ours":
        install_attention("sdpa")
        split = SequenceSplit(make_groups(size), model.config)
    elif spec["how"] == "deepspeed":
        part = _deepspeed_part(model, batch, rank, size)
        per_token = size / _labelled(batch)
    before, start = _rss(), time.perf_counter()
    if split is not None:
        with split.micro(batch, "cpu") as (part, per_token):
            loss_sum, count = _step(model, part, per_token, spec["table"] == "memory")
    else:
        loss_sum, count = _step(model, part, per_token, spec["table"] == "memory")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    totals = torch.stack([loss_sum.double(), count.double()])
    dist.all_reduce(totals)
    if whole_rows and spec["table"] == "loss":
        totals /= size  # every rank computed the same whole rows
    mine = {"loss": (totals[0] / totals[1]).item(), "reference": reference, "added_gib": (peak - before) / 2**30,
            "seconds": seconds, "tokens": spec["length"] * (size if whole_rows else 1)}
    everyone = [None] * size
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        Path(spec["result"]).write_text(json.dumps(everyone))
    dist.barrier()


def _labelled(batch: dict) -> int:
    from engine.loss import shift_labels

    return int((shift_labels(batch["labels"]) != -100).sum())


def _launch(spec: dict, work: Path) -> list[dict]:
    spec = dict(spec, result=str(work / "result.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", __file__, "--rank-spec", json.dumps(spec)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        sys.exit(f"{spec['how']} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    return json.loads(Path(spec["result"]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=16384, help="tokens per row in the memory table")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_spec:
        rank_main(json.loads(args.rank_spec))
        return
    base = {"hidden": args.hidden, "layers": args.layers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("1. loss of one micro batch, 2 ranks sharing each row, against the whole rows (2,048 tokens)\n")
        print("| rows | whole rows | engine/sequence_parallel.py | DeepSpeed UlyssesSPAttentionHF |")
        print("|---|---:|---:|---:|")
        for packed in (True, False):
            spec = {**base, "table": "loss", "length": 2048, "packed": packed}
            ours = _launch({**spec, "how": "ours"}, work)[0]
            theirs = _launch({**spec, "how": "deepspeed"}, work)[0]
            ref = ours["reference"]
            print(f"| {'packed documents' if packed else 'one document each'} | {ref:.6f} | {ours['loss']:.6f} "
                  f"(Δ {abs(ours['loss'] - ref):.1e}) | {theirs['loss']:.6f} (Δ {abs(theirs['loss'] - ref):.1e}) |")
        print(f"\n2. one forward + backward, {args.length:,} tokens per row, {args.layers} x {args.hidden} LLaMA, fp32, "
              f"per rank\n")
        print("| how | rows per 2 ranks | added memory, rank 0 / rank 1 | seconds | tokens/s (both ranks) |")
        print("|---|---:|---:|---:|---:|")
        tiles = args.length // 8
        for how, label, mlp_tiles in (("whole", "whole rows (data parallel)", 0), ("ours", "shared rows, ours", 0),
                                      ("deepspeed", "shared rows, DeepSpeed's", 0),
                                      ("ours", f"shared rows, ours, MLPs in tiles of {tiles:,} positions", tiles)):
            got = _launch({**base, "table": "memory", "length": args.length, "packed": False, "how": how,
                           "mlp_tiles": mlp_tiles}, work)
            seconds = max(r["seconds"] for r in got)
            print(f"| {label} | {2 if how == 'whole' else 1} | {got[0]['added_gib']:.2f} / {got[1]['added_gib']:.2f} GiB "
                  f"| {seconds:.1f} | {got[0]['tokens'] / seconds:,.0f} |")


if __name__ == "__main__":
    main()
