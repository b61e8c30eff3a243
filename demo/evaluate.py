"""Sentiment accuracy of an SFT model on the test reviews, against the majority-class baseline.

    python -m demo.evaluate --model SFT_DIR --eval sft_eval.jsonl --train-labels split_report.json --out eval.json \
        [--contamination contamination.keys.json]

Method (likelihood, not free generation): each test record is formatted with the model's saved
SFT template (sft/templates.py, exactly as in training) and the two answers "正面" and "负面" are
scored by the sum of their tokens' log-probabilities after the prompt; the larger wins. Unlike
greedy decoding this always yields one of the two labels, so the accuracy measures what the
model learned about sentiment, not whether it learned to stop after two characters (greedy
generations of a few reviews are shown separately by `python -m sft generate`).

Baseline: always answer the class that is more frequent among the TRAIN reviews; its accuracy is
that class's share of the test records scored here.

Contamination: the split keeps exact duplicates on one side, but a test review can still be mostly
a train review (the same phrases, other punctuation). With the report of `python -m evaluation
contamination` (items: the records' ``input``, one per line) the accuracy is also given on the
clean, partially and fully contaminated test reviews apart.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zhllama.errors import UserError, run_cli
from zhllama.files import write_json_atomic

from .split import NEGATIVE, POSITIVE

LABELS = (POSITIVE, NEGATIVE)


def label_logprobs(model, prompts: list[list[int]], answers: list[list[int]], batch_size: int = 16) -> list[list[float]]:
    """For every prompt, the summed log-probability of each answer's tokens following it."""
    import torch

    pairs = [(i, j, p + a, len(p)) for i, p in enumerate(prompts) for j, a in enumerate(answers)]
    scores = [[0.0] * len(answers) for _ in prompts]
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [pairs[k] for k in order[start:start + batch_size]]
            width = max(len(ids) for _, _, ids, _ in chunk)
            input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, _, ids, _) in enumerate(chunk):  # right padding: positions stay 0..n-1
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
            # Only the few answer positions need the (vocabulary-wide) output layer: run the decoder
            # body on everything, then the LM head on those positions alone.
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
            rows = torch.cat([torch.full((len(ids) - plen,), r) for r, (_, _, ids, plen) in enumerate(chunk)])
            positions = torch.cat([torch.arange(plen - 1, len(ids) - 1) for _, _, ids, plen in chunk])
            targets = torch.cat([torch.tensor(ids[plen:]) for _, _, ids, plen in chunk])
            logp = torch.log_softmax(model.get_output_embeddings()(hidden[rows, positions]).float(), dim=-1)
            picked = logp[torch.arange(len(targets)), targets]
            start_at = 0
            for i, j, ids, plen in chunk:
                n = len(ids) - plen
                scores[i][j] = float(picked[start_at:start_at + n].sum())
                start_at += n
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="SFT model folder (with sft_template.json)")
    p.add_argument("--eval", required=True, type=Path, help="JSON Lines {instruction, input, label}")
    p.add_argument("--train-labels", required=True, type=Path, help="split_report.json (train class counts)")
    p.add_argument("--contamination", type=Path, default=None,
                   help="report of `python -m evaluation contamination` whose items are the --eval records")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--judged-out", type=Path, default=None,
                   help="also write each record with the model's answer as a KTO example: kto_tag true when it is "
                        "the record's label (python -m sft train objective=kto)")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from sft.data import parse_record
    from sft.generate import load_model
    from sft.templates import encode_prompt

    model, tokenizer, spec = load_model(args.model)
    records = [json.loads(line) for line in args.eval.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise UserError(f"{args.eval}: no records")
    prompts = [encode_prompt(parse_record(r, need_answer=False), tokenizer, spec) for r in records]
    # The answer is tokenized on its own, as sft/templates.py does for training targets.
    answers = [list(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in LABELS]
    scores = []
    for start in tqdm(range(0, len(prompts), 64), desc="scoring", unit="x64"):
        scores += label_logprobs(model, prompts[start:start + 64], answers)
    predictions = [LABELS[0] if s[0] > s[1] else LABELS[1] for s in scores]
    gold = [r["label"] for r in records]
    correct = sum(p == g for p, g in zip(predictions, gold))
    split = json.loads(args.train_labels.read_text(encoding="utf-8"))
    majority = POSITIVE if split["train_positive"] > split["train_negative"] else NEGATIVE
    baseline = sum(g == majority for g in gold) / len(gold)
    per_class = {lab: {"n": gold.count(lab),
                       "recall": round(sum(p == g == lab for p, g in zip(predictions, gold)) / max(gold.count(lab), 1), 4),
                       "predicted": predictions.count(lab)} for lab in LABELS}
    result = {
        "method": "likelihood of 正面 vs 负面 after the SFT prompt (sum of answer-token log-probs)",
        "template": spec.name, "answer_token_ids": dict(zip(LABELS, answers)),
        "examples": len(records), "correct": correct, "accuracy": round(correct / len(records), 4),
        "majority_class": majority, "majority_baseline_accuracy": round(baseline, 4),
        "margin": round(correct / len(records) - baseline, 4), "per_class": per_class,
        "model": str(args.model),
    }
    if args.contamination is not None:
        result["contamination"] = by_status(args.contamination, args.eval, [p == g for p, g in zip(predictions, gold)])
    if args.judged_out is not None:
        from zhllama.files import write_text_atomic

        write_text_atomic(args.judged_out, "".join(json.dumps(
            {"instruction": r["instruction"], "input": r["input"], "output": p, "kto_tag": p == g},
            ensure_ascii=False) + "\n" for r, p, g in zip(records, predictions, gold)))
    write_json_atomic(args.out, result)
    print(f"[evaluate] accuracy {result['accuracy']:.4f} on {len(records)} test reviews vs majority baseline "
          f"{result['majority_baseline_accuracy']:.4f} (always {majority}); margin {result['margin']:+.4f}")
    return 0


def by_status(report_path: Path, eval_file: Path, correct: list[bool]) -> dict:
    """Accuracy on the clean / partial / contaminated records apart (evaluation.results.by_contamination);
    the report names the records by their line in ``eval_file`` (one record per line)."""
    from evaluation.results import by_contamination

    report = json.loads(report_path.read_text(encoding="utf-8"))
    status_of_line = {it["where"].rsplit(":", 1)[1]: it["status"] for it in report["items"]}
    lines = [str(n) for n, line in enumerate(eval_file.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    (results,) = report["results"].values()
    rows = [{"key": line, "correct": ok} for line, ok in zip(lines, correct)]
    return {"report": str(report_path), "counts": results["all"], **by_contamination(rows, status_of_line)}


if __name__ == "__main__":
    run_cli(lambda: main())
