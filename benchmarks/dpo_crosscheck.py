"""Cross-check the DPO objective (engine/preference.py) against TRL's DPOTrainer (sigmoid, IPO), CPOTrainer (SimPO) and
ORPOTrainer (ORPO), pair by pair and gradient by gradient.

    PYTHONPATH=. /tmp/trl/bin/python benchmarks/dpo_crosscheck.py --work runs/dpo_crosscheck

Needs ``trl`` (tested: 1.16.0 with torch 2.13 CPU, transformers 5.23), not a project dependency: a separate venv
that sees this project's venv (torch, transformers, accelerate, datasets stay the project's; pip only adds trl and
a newer setuptools inside /tmp/trl). From the repository root:

    python3 -m venv /tmp/trl
    echo $PWD/.venv/lib/python3.11/site-packages > /tmp/trl/lib/python3.11/site-packages/zhllama.pth
    /tmp/trl/bin/pip install --dry-run trl==1.16.0   # must list nothing but trl-1.16.0 (and setuptools)
    /tmp/trl/bin/pip install trl==1.16.0

Offline, CPU, fp32: a tiny tokenizer; a random tiny LLaMA as reference and, as policy, that model after a few SFT
steps on some chosen answers. Chinese pairs are tokenized once our way (chinese-alpaca-2, final answer + EOS
labelled); TRL gets the same ids as ``prompt_ids``/``chosen_ids``/``rejected_ids`` through its own collator, and
``DPOTrainer.compute_loss`` does the rest (its reference forward, fused LM head, metrics); for SimPO (ORPO) the same
ids go as CPO features (prompt + answer, labels -100 on the prompt) to ``CPOTrainer`` (``ORPOTrainer``)
``.compute_loss``. Compared per setting: ids and labelled positions; per-pair log-probs, rewards, loss (TRL fed one
pair at a time); reward accuracy and margin; the gradient of the mean loss w.r.t. every policy parameter; loss and
gradient of one padded batch. Exit 1 on a difference beyond float tolerance.

Definitions, ours vs TRL 1.16 (sigmoid: both sum answer log-probs; ipo, simpo: both average them over the answer's
labelled tokens; both average losses over pairs):
* cDPO: TRL's ``sigmoid`` takes no ``label_smoothing`` (only ``robust``, ``exo_pair`` do). With L(x) = -log sigmoid(x),
  our (1-eps) L(m) + eps L(-m) = (2-2eps) * TRL sigmoid - (1-2eps) * TRL robust(eps), exactly: that is compared.
* RPO: no ``rpo_alpha``; TRL's NLL term is ``loss_type="sft"`` (weighted): the mean NLL over all chosen tokens of the
  batch. Ours: each chosen answer's mean per-token NLL, averaged over pairs. Equal pair by pair (checked); in a batch
  of unequal answer lengths they differ (printed, marked *, not a failure).
* IPO: DPOTrainer ``loss_type="ipo"`` length-normalises too ((mean log-ratio_c - mean log-ratio_r - 1/(2 beta))^2,
  the IPO authors' form, says its comment), as ours. But it logs rewards beta * SUMMED log-ratio (and accuracy, margin
  from those), we beta * the per-token mean the loss compares: TRL's rewards / labelled tokens are compared (marked †).
* SimPO: ``trl.experimental.cpo.CPOTrainer(loss_type="simpo")``, no reference: -(1-eps) log sigmoid(beta l) - eps log
  sigmoid(-beta l), l = mean logp_c - mean logp_r - gamma/beta: ours; rewards beta * mean logp, as ours; it logs mean
  log-probs (times labelled tokens: marked †). ``cpo_alpha`` (default 1, kept by loss_type="simpo") adds the NLL of
  "sft" above: we pass our nll_weight (0 for SimPO; simpo+nll is CPO-SimPO, * as RPO).
* ORPO: ``trl.experimental.orpo.ORPOTrainer``, no reference, beta = the paper's lambda, as ours. Both: per-token mean
  log-probs m of the answers, log odds = (m_c - m_r) - (log(1 - e^m_c) - log(1 - e^m_r)) (TRL's log1mexp: log1p(-exp)
  below -ln 2, log(-expm1) above; ours log(-expm1) throughout), loss NLL - beta log sigmoid(log odds), rewards beta * m
  (it logs m: †). The NLL differs (‡): TRL's is the cross-entropy of every chosen token after the first, PROMPT
  included, pooled over the batch's chosen rows (deliberately: TRL PRs #1516, #2527, after the ORPO authors' code);
  ours the chosen answer's per-token mean NLL, -m_c. So TRL's loss is compared with its NLL swapped for -m_c from its
  own forward (``concatenated_forward``'s chosen logps): equal pair by pair and in a batch; TRL's loss as is minus
  ours is printed (information, not a check).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

RECORDS = [  # (instruction, input, answer): chosen = the answer, rejected = a refusal or another record's answer
    ("把这句话翻译成英文。", "春眠不觉晓", "Spring sleep knows no dawn."),
    ("床前明月光的下一句是什么？", "", "疑是地上霜。"),
    ("续写诗句", "白日依山尽", "黄河入海流。欲穷千里目，更上一层楼。"),
    ("大语言模型是什么？", "", "大语言模型在大量语料上预训练，可以理解和生成中文。"),
    ("夜来风雨声的下一句？", "", "花落知多少。"),
    ("中国的首都是哪里？", "", "北京。"),
    ("一年有几个季节？", "", "四个：春、夏、秋、冬。"),
    ("用一句话介绍长江。", "", "长江是中国最长的河流，全长约六千三百公里。"),
]
REFUSAL = "不知道。"
SETTINGS = [  # (name, kind, beta, label_smoothing, nll_weight, simpo_gamma)
    ("sigmoid", "sigmoid", 0.1, 0, 0, 0), ("sigmoid", "sigmoid", 0.5, 0, 0, 0), ("cdpo", "sigmoid", 0.1, 0.1, 0, 0),
    ("cdpo", "sigmoid", 0.5, 0.1, 0, 0), ("rpo", "sigmoid", 0.1, 0, 0.5, 0), ("rpo", "sigmoid", 0.5, 0, 0.5, 0),
    ("cdpo+rpo", "sigmoid", 0.5, 0.1, 1.0, 0), ("ipo", "ipo", 0.1, 0, 0, 0), ("ipo", "ipo", 0.5, 0, 0, 0),
    ("simpo", "simpo", 2.0, 0, 0, 0.5), ("simpo", "simpo", 2.5, 0, 0, 1.25), ("simpo+ls", "simpo", 2.0, 0.1, 0, 0.5),
    ("simpo+nll", "simpo", 2.0, 0, 1.0, 0.5), ("orpo", "orpo", 0.1, 0, 0, 0), ("orpo", "orpo", 0.5, 0, 0, 0),
]  # simpo+nll: CPO-SimPO (cpo_alpha 1)
ABS_TOL, REL_TOL = 1e-4, 1e-4


def encode_pairs(tok):
    """Our tokenization: a PairDataset whose pair i is samples (2i, 2i+1)."""
    from sft.cache import encode_all
    from sft.pairs import PairDataset, parse_pair
    from sft.templates import make_spec

    others = [RECORDS[(i + 3) % len(RECORDS)][2] for i in range(len(RECORDS))]
    records = [{"instruction": q, "input": extra, "chosen": answer, "rejected": rejected}
               for (q, extra, answer), other in zip(RECORDS, others) for rejected in (REFUSAL, other)]
    convs = [conv for record in records for conv in parse_pair(record)]
    samples, stats = encode_all(convs, tok, make_spec("chinese-alpaca-2", tok), 512, pairs=True)
    assert stats.kept == len(convs), stats
    return PairDataset(samples, [(2 * i, 2 * i + 1) for i in range(len(records))])


def trl_examples(ds) -> tuple[list[dict], bool]:
    """Our ids cut where the labels start, in TRL's pre-tokenized form; and whether the cut is clean (one shared
    prompt, every token after it labelled): else TRL's completion mask could not equal our labels."""
    import numpy as np

    out, clean = [], True
    for c, r in ds.pairs:
        (cid, clab), (rid, rlab) = ds.samples.get(c), ds.samples.get(r)
        cs, rs = int(np.argmax(clab != -100)), int(np.argmax(rlab != -100))
        clean &= cs == rs and np.array_equal(cid[:cs], rid[:rs]) and bool((clab[cs:] != -100).all()
                                                                         and (rlab[rs:] != -100).all())
        out.append({"prompt_ids": cid[:cs].tolist(), "chosen_ids": cid[cs:].tolist(),
                    "rejected_ids": rid[rs:].tolist()})
    return out, clean


def same_ids(ours: dict, theirs: dict) -> bool:
    """Row for row (we interleave chosen/rejected, TRL puts all chosen first): the same unpadded ids, and TRL's
    completion mask marks exactly the positions we label."""
    import torch

    n = ours["input_ids"].shape[0]
    for t, o in enumerate(list(range(0, n, 2)) + list(range(1, n, 2))):
        k = int(ours["attention_mask"][o].sum())
        ids_ok = int(theirs["attention_mask"][t].sum()) == k and torch.equal(ours["input_ids"][o, :k],
                                                                             theirs["input_ids"][t, :k])
        if not ids_ok or not torch.equal((ours["labels"][o, :k] != -100).long(), theirs["completion_mask"][t, :k]):
            return False
    return True


def as_text(tok, example: dict) -> dict:
    """Rendered prompt and answers. An answer keeps the space the template puts after [/INST] (decoded alone it
    would lose it), so prompt + answer is our rendered conversation."""
    prompt = tok.decode(example["prompt_ids"], skip_special_tokens=True)
    full = lambda k: tok.decode(example["prompt_ids"] + example[f"{k}_ids"], skip_special_tokens=True)
    return {"prompt": prompt, "chosen": full("chosen")[len(prompt):], "rejected": full("rejected")[len(prompt):]}


def load(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def make_models(work: Path, ds, steps: int = 12) -> tuple[Path, Path]:
    """Reference: a random tiny LLaMA. Policy: the reference after a few SFT steps on the chosen answers of every
    other record (its log-probs differ from the reference's, and not every pair is ranked right already)."""
    import torch

    from engine.tiny import make_tiny_model
    from sft.pairs import PairCollator

    ref_dir = make_tiny_model(work / "reference", work / "tok", hidden=64, layers=2, heads=4, seed=0)
    model = load(ref_dir).train()
    rows = {k: v[0::2] for k, v in PairCollator(0)([ds[i] for i in range(0, len(ds), 4)]).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        model(**rows).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(work / "policy")
    return ref_dir, work / "policy"


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def rel_grad_diff(a: dict, b: dict) -> float:
    """Largest |difference| over all parameters, relative to the largest |gradient|."""
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[n] - b[n]).abs().max()) for n in a) / max(float(g.abs().max()) for g in a.values())


def run_ours(policy_dir, batch, kind, beta, eps, nll, gamma) -> dict:
    import torch

    from engine.loss import install_fused_head
    from engine.preference import DPOObjective

    model, cpu, objective = load(policy_dir), torch.device("cpu"), DPOObjective(beta, eps, nll, kind, gamma)
    install_fused_head(model, chunk_tokens=7)  # the engine's default path (model.fused_loss), in several chunks
    if not objective.needs_reference:  # SimPO: prepare() adds no reference log-probs; the loss must need none
        batch = {k: v for k, v in batch.items() if k != "reference_logps"}
    total, pairs = objective.loss(model, batch, cpu)  # the engine's contract: summed loss, pair count
    mean = total / pairs
    mean.backward()
    with torch.no_grad():
        stats = objective.pair_stats(model, batch, cpu)
    margin = stats.chosen_reward - stats.rejected_reward
    return {"logps": torch.stack([stats.chosen_logp, stats.rejected_logp], 1), "loss": stats.loss,
            "rewards": torch.stack([stats.chosen_reward, stats.rejected_reward], 1), "mean": mean.item(),
            "acc": float((margin > 0).float().mean()), "margin": float(margin.mean()), "grads": grads(model)}


def trl_losses(kind: str, eps: float, nll: float) -> tuple[list[str], list[float]]:
    """Our setting as TRL 1.16 DPOTrainer loss types and weights (the cDPO identity: module docstring)."""
    types, weights = (["sigmoid", "robust"], [2 - 2 * eps, -(1 - 2 * eps)]) if eps else ([kind], [1.0])
    return (types + ["sft"], weights + [nll]) if nll else (types, weights)


def dpo_trainer(ref_dir, policy_dir, tok, examples, text, kind, beta, eps, nll, gamma, work: Path):
    """(trainer, the features it gets, its last call's metrics, its padded batch as same_ids' rows)."""
    from trl import DPOConfig, DPOTrainer

    types, weights = trl_losses(kind, eps, nll)
    cfg = DPOConfig(output_dir=str(work / "trl"), beta=beta, loss_type=types, loss_weights=weights,
                    label_smoothing=eps, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                    max_length=None, report_to="none", per_device_train_batch_size=len(examples))
    trainer = DPOTrainer(load(policy_dir), load(ref_dir), args=cfg, train_dataset=text, processing_class=tok)
    metrics = lambda: trainer._metrics["train" if trainer.model.training else "eval"]
    return trainer, examples, metrics, lambda b: b, None


def cpo_feature(example: dict) -> dict:
    """Our ids as a CPO feature: prompt + answer, labels -100 on the prompt (what its tokenize_row makes)."""
    prompt = example["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for k, answer in ((k, example[f"{k}_ids"]) for k in ("chosen", "rejected")):
        out.update({f"{k}_input_ids": prompt + answer, f"{k}_attention_mask": [1] * len(prompt + answer),
                    f"{k}_labels": [-100] * len(prompt) + answer})
    return out


def cpo_trainer(ref_dir, policy_dir, tok, examples, text, kind, beta, eps, nll, gamma, work: Path):
    """As dpo_trainer, for SimPO: CPOTrainer, no reference model; cpo_alpha is our nll_weight (its default is 1)."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    cfg = CPOConfig(output_dir=str(work / "trl"), beta=beta, loss_type="simpo", simpo_gamma=gamma, cpo_alpha=nll,
                    label_smoothing=eps, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                    max_length=512, report_to="none", per_device_train_batch_size=len(examples))
    trainer = CPOTrainer(load(policy_dir), args=cfg, train_dataset=text, processing_class=tok)

    return (trainer, [cpo_feature(ex) for ex in examples], lambda: trainer._stored_metrics["train"],
            concat_rows(trainer, trainer.pad_token_id), None)


def concat_rows(trainer, pad: int):
    def rows(batch):  # what a CPO/ORPO forward sees: all chosen rows, then all rejected, padded alike
        cat = trainer.concatenated_inputs(batch, padding_value=pad)
        return {"input_ids": cat["concatenated_input_ids"], "attention_mask": cat["concatenated_attention_mask"],
                "completion_mask": (cat["concatenated_labels"] != -100).long()}
    return rows


def orpo_trainer(ref_dir, policy_dir, tok, examples, text, kind, beta, eps, nll, gamma, work: Path):
    """As cpo_trainer, for ORPO; the fifth item swaps its NLL for the chosen answers' mean NLL (‡, docstring)."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    assert not eps and not nll, "TRL's ORPO has neither label smoothing nor an extra NLL weight"
    cfg = ORPOConfig(output_dir=str(work / "trl"), beta=beta, use_cpu=True, bf16=False, fp16=False, max_length=512,
                     gradient_checkpointing=False, report_to="none", per_device_train_batch_size=len(examples))
    tok.pad_token = tok.pad_token or tok.eos_token  # as CPOTrainer does; ORPOTrainer leaves it unset
    trainer = ORPOTrainer(load(policy_dir), args=cfg, train_dataset=text, processing_class=tok)

    def swap(model, batch):  # its own forward's answer mean log-probs and prompt + answer NLL, with the graph
        chosen_logps, *_, nll_loss = trainer.concatenated_forward(model, batch)[:5]
        return -chosen_logps.mean() - nll_loss
    return (trainer, [cpo_feature(ex) for ex in examples], lambda: trainer._stored_metrics["train"],
            concat_rows(trainer, trainer.padding_value), swap)


def run_trl(make, *args) -> dict:
    import torch

    trainer, feats, metrics, rows, swap = make(*args)
    model = trainer.model
    pick = lambda *keys: [metrics()[k][-1] for k in keys]  # TRL's own logps / rewards of the last call

    def loss_of(batch):  # (the loss compared, TRL's loss as is)
        raw = trainer.compute_loss(model, batch)
        return (raw if swap is None else raw + swap(model, batch)), raw.item()
    logps, rewards, losses, raws = [], [], [], []
    for feat in feats:  # one pair per call; gradients accumulated as the mean over pairs
        loss, raw = loss_of(trainer.data_collator([feat]))
        (loss / len(feats)).backward()
        logps.append(pick("logps/chosen", "logps/rejected"))
        rewards.append(pick("rewards/chosen", "rewards/rejected"))
        losses.append(loss.item())
        raws.append(raw)
    out = {"logps": torch.tensor(logps), "rewards": torch.tensor(rewards), "loss": torch.tensor(losses),
           "raw_loss": torch.tensor(raws), "grads": grads(model)}
    model.zero_grad()
    loss, raw = loss_of(batch := trainer.data_collator(feats))  # all pairs in one padded batch
    loss.backward()
    acc, margin = pick("rewards/accuracies", "rewards/margins")
    own = sum(all(row[k] == f[k] for k in f) for row, f in zip(trainer.train_dataset, feats))
    return {**out, "mean": loss.item(), "raw_mean": raw, "acc": acc, "margin": margin, "batch_grads": grads(model),
            "own": own, "batch": rows(batch)}


def align(theirs: dict, kind: str, tokens) -> dict:
    """TRL's numbers in our terms where it logs another quantity (†, docstring): CPO/ORPOTrainer's mean log-probs
    times labelled tokens; DPOTrainer's IPO rewards per labelled token, accuracy and margin from those (own kept)."""
    if kind in ("simpo", "orpo"):
        theirs["logps"] = theirs["logps"] * tokens
    elif kind == "ipo":
        rewards = theirs["rewards"] / tokens
        margin = rewards[:, 0] - rewards[:, 1]
        theirs.update(rewards=rewards, trl_acc_margin=(theirs["acc"], theirs["margin"]),
                      acc=float((margin > 0).float().mean()), margin=float(margin.mean()))
    return theirs


def compare(ours: dict, theirs: dict, ids_ok: bool, kind: str, nll: float) -> tuple[str, bool]:
    """The table row (after setting, beta, gamma, pairs) and whether it passes. With an NLL term the batch loss and
    gradient differ by definition (docstring): printed with *, not checked. ORPO's loss and batch are checked, TRL's
    NLL swapped (‡)."""
    diff = lambda k: float((ours[k] - theirs[k]).abs().max())
    logp, reward, loss, margin = diff("logps"), diff("rewards"), diff("loss"), abs(ours["margin"] - theirs["margin"])
    grad, batch_grad = (rel_grad_diff(ours["grads"], theirs[k]) for k in ("grads", "batch_grads"))
    batch_loss, mark = abs(ours["mean"] - theirs["mean"]), "*" if nll else "‡" if kind == "orpo" else " "
    lmark, rmark = "†" if kind in ("simpo", "orpo") else " ", "†" if kind == "ipo" else " "
    ok = (ids_ok and max(logp, reward, loss, margin) <= ABS_TOL and ours["acc"] == theirs["acc"] and grad <= REL_TOL
          and (nll or (batch_loss <= ABS_TOL and batch_grad <= REL_TOL)))
    return (f"{'yes' if ids_ok else 'NO':>4} {logp:9.1e}{lmark} {reward:9.1e}{rmark} {loss:9.1e}"
            f"{mark if kind == 'orpo' else ' '}{ours['acc']:5.2f}/{theirs['acc']:4.2f} {ours['margin']:7.3f} "
            f"{margin:9.1e} {grad:9.1e} {batch_loss:9.1e}{mark} {batch_grad:9.1e}{mark} "
            f"{'ok' if ok else 'DIFFERS'}"), bool(ok)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/dpo_crosscheck", help="folder for the tiny tokenizer and models")
    work = Path(p.parse_args().work)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TQDM_DISABLE="1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renaming TrainingArguments fields
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
    ds = encode_pairs(tok)
    ref_dir, policy_dir = make_models(work, ds)
    with torch.no_grad():  # our reference pass (what DPOObjective.prepare keeps): the reference's summed log-probs
        table, _ = sequence_logps(load(ref_dir), PairCollator(0)([ds[i] for i in range(len(ds))]), torch.device("cpu"))
    ds.set_reference(table.double().view(-1, 2))
    batch = PairCollator(0)([ds[i] for i in range(len(ds))])
    examples, clean = trl_examples(ds)
    tokens = (batch["labels"][:, 1:] != -100).sum(1).view(-1, 2)  # labelled tokens per answer, as (chosen, rejected)
    # TRL insists on a text dataset, which it tokenizes itself; the loss gets our ids, the text only shows whether
    # TRL's own tokenization of the rendered prompt and answers gives them too (information, not a check)
    text = Dataset.from_list([as_text(tok, ex) for ex in examples])
    print(f"TRL {trl.__version__}, torch {torch.__version__}; tolerances {ABS_TOL} abs, {REL_TOL} rel\nsetting   beta "
          f"gamma pairs  ids    |dlogp|  |dreward|   |dloss|    acc o/t  margin |dmargin|  grad rel  batchloss  "
          f"batchgrad")
    failed, own, ipo_own, orpo_raw = 0, {}, [], []
    trainers = {"simpo": (cpo_trainer, "CPO"), "orpo": (orpo_trainer, "ORPO")}
    for name, kind, beta, eps, nll, gamma in SETTINGS:
        ours = run_ours(policy_dir, batch, kind, beta, eps, nll, gamma)
        make, tname = trainers.get(kind, (dpo_trainer, "DPO"))
        theirs = align(run_trl(make, ref_dir, policy_dir, tok, examples, text, kind, beta, eps, nll, gamma, work),
                       kind, tokens)
        row, ok = compare(ours, theirs, clean and same_ids(batch, theirs["batch"]), kind, nll)
        print(f"{name:<9} {beta:<4} {gamma if kind == 'simpo' else '-':>5} {len(ds):>5} {row}", flush=True)
        failed += not ok
        own[make] = f"{tname}Trainer {theirs['own']}/{len(ds)}"
        if kind == "ipo":
            ipo_own.append("beta {}: {:.2f} / {:.3f}".format(beta, *theirs["trl_acc_margin"]))
        if kind == "orpo":
            d = theirs["raw_loss"] - ours["loss"]
            orpo_raw.append(f"beta {beta}: per pair {float(d.min()):+.3f}..{float(d.max()):+.3f}, batch "
                            f"{theirs['raw_mean'] - ours['mean']:+.3f}")
    print(f"* NLL term in one batch (RPO; CPO-SimPO's cpo_alpha): TRL averages it over all chosen tokens, we average "
          f"each answer's per-token mean over pairs (equal per pair, checked).\n† TRL logs another quantity, compared "
          f"after converting with labelled tokens: SimPO, ORPO per-token mean log-probs; IPO rewards beta * SUMMED "
          f"log-ratio.\n  TRL's own IPO batch accuracy / margin, from those summed rewards: {'; '.join(ipo_own)}.\n"
          f"‡ ORPO: TRL's NLL (chosen prompt + answer tokens, pooled) swapped for the answers' mean NLL from its own "
          f"forward; its loss as is minus ours: {'; '.join(orpo_raw)}.\n"
          f"TRL tokenizing the rendered text itself ({', '.join(own.values())}): pairs giving our prompt/chosen/"
          f"rejected ids (information only).\n{failed} of {len(SETTINGS)} settings differ; {time.time() - start:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
