"""Cross-check the KTO objective (engine/kto.py) against TRL's KTOTrainer (loss types kto and apo_zero_unpaired),
batch by batch and gradient by gradient.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/kto_crosscheck.py --work runs/kto_crosscheck

Needs ``trl`` in a side venv, set up as benchmarks/dpo_crosscheck.py says (tested: trl 1.16.0, torch 2.13 CPU,
transformers 5.23). Offline, CPU, fp32: a tiny tokenizer; a random tiny LLaMA as reference and, as policy, that model
after a few SFT steps (dpo_crosscheck.make_models). Examples: each record's real answer desirable and a refusal
undesirable (pair records split as sft/kto.py does), each with the mismatched answer kto_units gives it; tokenized
once our way (chinese-alpaca-2, final answer + EOS labelled). TRL gets the same ids (prompt, completion and
KL completion ids) through its own collator and the reference MODEL, computing the reference log-probabilities
itself (we feed ours from a separate pass, as KTOObjective.prepare does). Its ``compute_loss`` does the rest.

Compared per setting and batch (all 16 examples, then the first 6, whose z0 differs): ids and labelled positions;
the loss; z0 (TRL's ``kl`` metric; APO uses none and TRL logs 0, so it is not compared there); the mean reward and log-probability of each verdict; the gradient of the loss
w.r.t. every policy parameter. Exit 1 on a difference beyond float tolerance. One process, so TRL's z0 (mean of
per-process means) and ours (mean over all ranks' examples) are the same number.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_crosscheck import RECORDS, REFUSAL, grads, load, make_models, rel_grad_diff  # noqa: E402

SETTINGS = [("kto", 0.1, 1.0, 1.0), ("kto", 0.5, 1.0, 1.0), ("kto", 0.5, 1.33, 1.0), ("kto", 0.5, 1.0, 0.75),
            ("apo_zero_unpaired", 0.1, 1.0, 1.0), ("apo_zero_unpaired", 0.5, 1.0, 0.75)]
ABS_TOL, REL_TOL = 1e-4, 1e-4


def encode_examples(tok):
    """Our tokenization: a PairDataset whose item i is example i's row and its mismatched row, with its verdict."""
    from sft.cache import encode_all
    from sft.kto import kto_units, parse_example
    from sft.pairs import PairDataset
    from sft.templates import make_spec

    records = [parse_example({"instruction": q, "input": extra, "chosen": answer, "rejected": REFUSAL})
               for q, extra, answer in RECORDS]
    units = kto_units(records)
    samples, stats = encode_all([c for u in units for c in u[1:3]], tok, make_spec("chinese-alpaca-2", tok), 512,
                                pairs=True)
    assert stats.kept == 2 * len(units), stats
    return PairDataset(samples, [(2 * i, 2 * i + 1) for i in range(len(units))], [u[3] for u in units])


def trl_features(ds, indices) -> tuple[list[dict], bool]:
    """Our ids cut where the labels start, as TRL's pre-tokenized unpaired examples; and whether the cut is clean
    (the example and its mismatched row share the prompt, every token after it labelled)."""
    import numpy as np

    out, clean = [], True
    for i in indices:
        (eid, elab), (kid, klab) = (ds.samples.get(s) for s in ds.pairs[i])
        es, ks = int(np.argmax(elab != -100)), int(np.argmax(klab != -100))
        clean &= es == ks and np.array_equal(eid[:es], kid[:ks]) and bool((elab[es:] != -100).all()
                                                                         and (klab[ks:] != -100).all())
        out.append({"prompt_ids": eid[:es].tolist(), "completion_ids": eid[es:].tolist(),
                    "KL_completion_ids": kid[ks:].tolist(), "label": bool(ds.flags[i])})
    return out, clean


def run_ours(policy_dir, batch, kind, beta, good_w, bad_w) -> dict:
    import torch

    from engine.kto import KTOObjective
    from engine.loss import install_fused_head

    model, cpu = load(policy_dir), torch.device("cpu")
    install_fused_head(model, chunk_tokens=7)  # the engine's default path (model.fused_loss), in several chunks
    objective = KTOObjective(beta, good_w, bad_w, kind)
    total, count = objective.loss(model, batch, cpu)
    (total / count).backward()
    with torch.no_grad():
        stats = objective.example_stats(model, batch, cpu)
        from engine.preference import sequence_logps
        logps, _ = sequence_logps(model, batch, cpu)
    good = stats.desirable
    return {"loss": (total / count).item(), "kl": float(stats.kl), "reward_good": float(stats.reward[good].mean()),
            "reward_bad": float(stats.reward[~good].mean()), "logp_good": float(logps[0::2][good].mean()),
            "logp_bad": float(logps[0::2][~good].mean()), "grads": grads(model)}


def run_trl(ref_dir, policy_dir, tok, feats, text, kind, beta, good_w, bad_w, work: Path) -> dict:
    from trl import KTOConfig, KTOTrainer

    cfg = KTOConfig(output_dir=str(work / "trl"), beta=beta, loss_type=kind, desirable_weight=good_w,
                    undesirable_weight=bad_w, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                    max_length=None, report_to="none", per_device_train_batch_size=len(feats),
                    train_sampling_strategy="sequential")
    trainer = KTOTrainer(load(policy_dir), load(ref_dir), args=cfg, train_dataset=text, processing_class=tok)
    model = trainer.model.train()
    batch = trainer.data_collator(feats)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return {"loss": loss.item(), "kl": metrics.get("kl", 0.0), "reward_good": metrics["rewards/chosen"],
            "reward_bad": metrics["rewards/rejected"], "logp_good": metrics["logps/chosen"],
            "logp_bad": metrics["logps/rejected"], "grads": grads(model), "batch": batch}


def same_ids(ours: dict, theirs: dict) -> bool:
    """Example rows (ours: 0::2) equal TRL's input_ids, mismatched rows (1::2) its KL_input_ids; its completion
    masks mark exactly the positions we label."""
    import torch

    for prefix, start in (("", 0), ("KL_", 1)):
        for t, o in enumerate(range(start, ours["input_ids"].shape[0], 2)):
            k = int(ours["attention_mask"][o].sum())
            if int(theirs[f"{prefix}attention_mask"][t].sum()) != k or not torch.equal(
                    ours["input_ids"][o, :k], theirs[f"{prefix}input_ids"][t, :k]) or not torch.equal(
                    (ours["labels"][o, :k] != -100).long(), theirs[f"{prefix}completion_mask"][t, :k]):
                return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/kto_crosscheck", help="folder for the tiny tokenizer and models")
    work = Path(p.parse_args().work)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    from engine.preference import sequence_logps
    from engine.tiny import DEFAULT_TEXT, make_tiny_tokenizer
    from sft.pairs import PairCollator

    start = time.time()
    tok_dir = make_tiny_tokenizer(work / "tok", DEFAULT_TEXT + [q + i + a for q, i, a in RECORDS] * 5)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ds = encode_examples(tok)
    ref_dir, policy_dir = make_models(work, ds)
    with torch.no_grad():  # our reference pass (what KTOObjective.prepare keeps), both rows of every example
        table, _ = sequence_logps(load(ref_dir), PairCollator(0)([ds[i] for i in range(len(ds))]), torch.device("cpu"))
    ds.set_reference(table.double().view(-1, 2))
    # TRL insists on a text dataset; the loss gets our ids (the collator's features), not its tokenization of this
    text = Dataset.from_list([{"prompt": "问", "completion": "答", "label": bool(f)} for f in ds.flags])
    print(f"TRL {trl.__version__}, torch {torch.__version__}; tolerances {ABS_TOL} abs, {REL_TOL} rel\n"
          f"loss               beta  w+/w-     batch ids   |dloss|    z0 ours  |dz0|  |dreward+| |dreward-|  "
          f"|dlogp+|   |dlogp-|  grad rel")
    failed, rows = 0, 0
    for indices in (list(range(len(ds))), list(range(6))):
        batch = PairCollator(0)([ds[i] for i in indices])
        feats, clean = trl_features(ds, indices)
        for kind, beta, good_w, bad_w in SETTINGS:
            ours = run_ours(policy_dir, batch, kind, beta, good_w, bad_w)
            theirs = run_trl(ref_dir, policy_dir, tok, feats, text, kind, beta, good_w, bad_w, work)
            ids_ok = clean and same_ids(batch, theirs["batch"])
            diff = {k: abs(ours[k] - theirs[k]) for k in ("loss", "kl", "reward_good", "reward_bad", "logp_good",
                                                          "logp_bad")}
            if kind != "kto":  # no z0 in APO's loss: TRL does not estimate it (logs 0), we still log the estimate
                diff["kl"] = 0.0
            grad = rel_grad_diff(ours["grads"], theirs["grads"])
            ok = ids_ok and max(diff.values()) <= ABS_TOL and grad <= REL_TOL
            failed += not ok
            rows += 1
            print(f"{kind:<18} {beta:<4} {good_w:>4}/{bad_w:<4} {len(indices):>5} {'yes' if ids_ok else 'NO':>4} "
                  f"{diff['loss']:9.1e} {ours['kl']:9.4f} {diff['kl']:7.1e} {diff['reward_good']:9.1e} "
                  f"{diff['reward_bad']:9.1e} {diff['logp_good']:9.1e} {diff['logp_bad']:9.1e} {grad:9.1e} "
                  f"{'ok' if ok else 'DIFFERS'}", flush=True)
    print(f"{failed} of {rows} settings x batches differ; {time.time() - start:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
