"""What training on a benchmark's passages does to its scores: CMRC 2018 before and after, clean vs seen.

    python benchmarks/reading_contamination.py [--work DIR] [--steps 600] [--questions 800]

1. A pretraining manifest of CMRC 2018 dev's paragraphs (../shared/data) with 10% held out, as the
   shipped corpora_manifests/shared_zh_pretrain.yaml does; `python -m evaluation contamination
   --reading cmrc=cmrc2018_dev.json` finds the passages it trains on.
2. A SentencePiece tokenizer (vocab 8000, trained on the training paragraphs) and a random LLaMA (hidden
   128, 4 layers), trained --steps with `python -m pretrain train` on the manifest's training part.
3. `python -m evaluation reading --shots 0 --contamination` before and after training on a seeded sample
   of --questions questions: EM/F1 and the reference answers' bits per character, per group.
Prints the table of both runs. A model this small does not answer (EM stays near 0); what the reference
answers cost shows whether training on the passages taught it their text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from context_extension import _run, _train  # noqa: E402  (the same single-process `pretrain train`)
from quality_training import _model as quality_model  # noqa: E402  (the same tokenizer and small LLaMA)

DATA = REPO.parent / "shared" / "data"
CMRC = DATA / "pretrain" / "cmrc2018_dev.json"


def _manifest(path: Path) -> Path:
    from zhllama.files import sha256_file

    contexts = DATA / "pretrain" / "cmrc2018_dev_contexts.txt"
    spec = {"name": "cmrc_paragraphs", "holdout": {"fraction": 0.1, "salt": "reading-contamination"},
            "sources": [{"name": "cmrc2018", "path": str(contexts), "format": "txt", "language": "zh",
                         "license": "CC BY-SA 4.0", "sha256": sha256_file(contexts), "weight": 1.0}]}
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def _model(work: Path, manifest: Path) -> Path:
    from corpora.manifest import iter_documents, load_manifest

    texts = [d.text for s in load_manifest(manifest).sources for d in iter_documents(s, split="train")]
    return quality_model(work, texts, positions=1024)  # prompts of a whole paragraph: up to ~900 tokens


def prepared(work: Path) -> tuple[Path, Path, Path]:
    """The manifest, its contamination report on CMRC 2018 dev, and the random model; shards in WORK/shards."""
    manifest = _manifest(work / "cmrc_paragraphs.json")
    keys = work / "cmrc.keys"
    _run("-m", "evaluation", "contamination", str(manifest), "--reading", f"cmrc={CMRC}", "--out", str(keys),
         log=work / "contamination.log")
    init = _model(work, manifest)
    if not (work / "shards" / "prepare_report.json").is_file():
        _run("-m", "pretrain", "prepare", "--manifest", str(manifest), "--tokenizer", str(init), "--block-size", "256",
             "--out", str(work / "shards"), "--no-progress", log=work / "prepare.log")
    return manifest, keys.with_name(keys.name + ".json"), init


def _reading(work: Path, name: str, model: Path, report: Path, questions: int) -> dict:
    out = work / f"reading_{name}.json"
    _run("-m", "evaluation", "reading", "--model", str(model), "--set", f"cmrc={CMRC}", "--shots", "0",
         "--max-questions", str(questions), "--max-new-tokens", "12", "--batch-size", "16", "--contamination",
         str(report), "--no-progress", "--out", str(out), log=work / f"reading_{name}.log")
    return json.loads(out.read_text(encoding="utf-8"))["sets"]["cmrc"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/reading_contamination"))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--questions", type=int, default=800)
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifest, report, init = prepared(work)
    final = _train(work, "trained", init, work / "shards", args.steps, 3e-3, 8, "data.eval_split=null")
    rows = {"random init": _reading(work, "init", init, report, args.questions),
            f"after {args.steps} steps on the training part": _reading(work, "trained", final, report, args.questions)}
    checked = json.loads(report.read_text(encoding="utf-8"))["results"]["cmrc"]["all"]
    print(f"CMRC 2018 dev: {checked['items']} passages, {checked['contaminated']} in the training part "
          f"(contaminated), {checked['partial']} partial, {checked['clean']} clean; {args.questions} questions\n")
    print("| model | passages | questions | EM | F1 | reference bits/char | reference greedy % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model, s in rows.items():
        for status, v in s["contamination"].items():
            print(f"| {model} | {status} | {v['questions']} | {v['em']:.2f} | {v['f1']:.2f} | "
                  f"{v['answer_bits_per_char']:.3f} | {v['greedy_answer']:.2f} |")


if __name__ == "__main__":
    main()
