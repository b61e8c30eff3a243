"""How well do loss-based membership scores find the passages a model trained on, and how many passes
does it take? `evaluation membership` on CMRC 2018 passages, side by side with the Min-K%++ authors' code.

    python benchmarks/membership_quality.py [--work DIR] [--steps 150,600] [--peer run.py]

1. A pretraining manifest of CMRC 2018 dev's paragraphs with 10% held out (benchmarks/reading_contamination.py's);
   `python -m evaluation contamination --reading cmrc=cmrc2018_dev.json` labels each passage: trained on
   (contaminated) or not (clean).
2. Its tokenizer (SentencePiece 8,000) and random LLaMA (hidden 128, 4 layers), trained with `python -m
   pretrain train` for each of --steps (150 steps of 8 x 256 tokens is about one pass over the training part).
3. `python -m evaluation membership --reading cmrc=... --contamination REPORT --calibrate MANIFEST --reference
   INIT` on each model: per method the AUC and TPR at 5% FPR of contaminated against clean passages (and of
   training against held-out documents), and the share of passages above the calibrated threshold.
4. With ``--peer`` (zjysteven/mink-plus-plus's run.py, last changed in 62281ab; sha256-checked), the same
   passages (label 1 = contaminated, 0 = clean, cut as ours) scored by the authors' script on the same
   models: its AUC and TPR at 5% FPR beside ours. It needs scikit-learn, installed pinned into WORK/peer_site;
   its `datasets.load_dataset` is replaced by a reader of our file (the models and the texts are local).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from context_extension import _run, _train  # noqa: E402  (the same single-process `pretrain train`)
from reading_contamination import CMRC, prepared  # noqa: E402  (the same manifest, tokenizer and LLaMA)
from side_packages import pinned_site  # noqa: E402

PEER_SHA256 = "b72a83cfd8275b0fa858ca0c593348e850c19a0c6ac8c211e2e287ffd771bc77"
PEER_SITE_PINS = ("scikit-learn==1.7.2",)
MAX_CHARS = 1000
PEER_METHODS = {"loss": "loss", "zlib": "zlib", "min_k": "mink_0.2", "min_k_plus_plus": "mink++_0.2"}
STUB = '''"""Stands in for Hugging Face datasets: load_dataset reads the JSON Lines file PEER_TEXTS."""
import json, os


def load_dataset(name, split=None):
    with open(os.environ["PEER_TEXTS"], encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
'''


def _membership(work: Path, name: str, model: Path, init: Path, manifest: Path, report: Path) -> tuple[dict, float]:
    out = work / f"membership_{name}.json"
    reference = [] if model == init else ["--reference", str(init)]
    start = time.perf_counter()
    _run("-m", "evaluation", "membership", "--model", str(model), "--reading", f"cmrc={CMRC}", "--contamination",
         str(report), "--calibrate", str(manifest), "--max-chars", str(MAX_CHARS), "--batch-size", "16",
         "--no-progress", "--out", str(out), *reference, log=work / f"membership_{name}.log")
    return json.loads(out.read_text(encoding="utf-8"))["groups"], time.perf_counter() - start


def _peer_texts(work: Path, cmrc: dict) -> Path:
    """The CMRC passages ours scored and labelled (contaminated 1, clean 0), cut as ours."""
    from evaluation.contamination_cli import reading_items
    from evaluation.membership_data import item_text

    labels = {it["key"]: it["label"] for it in cmrc["items"] if "scores" in it and it["label"] is not None}
    path = work / "peer_texts.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for item in reading_items("cmrc", str(CMRC)):
            if item.key in labels:
                fh.write(json.dumps({"input": item_text(item.fields[:1], MAX_CHARS), "label": int(labels[item.key])},
                                    ensure_ascii=False) + "\n")
    return path


def _peer_site(work: Path) -> Path:
    site = pinned_site(work / "peer_site", PEER_SITE_PINS, drop=("numpy*",))  # numpy: torch's own
    (work / "peer_stub").mkdir(exist_ok=True)
    (work / "peer_stub" / "datasets.py").write_text(STUB, encoding="utf-8")
    return site


def _peer(work: Path, name: str, script: Path, model: Path, texts: Path) -> tuple[dict, float]:
    """{our method: (AUC, TPR at 5% FPR)} from the authors' run.py, and its seconds."""
    cwd = work / f"peer_{name}"
    cwd.mkdir(exist_ok=True)
    site = _peer_site(work)
    env = {**os.environ, "PEER_TEXTS": str(texts), "PYTHONPATH": f"{work / 'peer_stub'}:{site}",
           "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    start = time.perf_counter()
    with open(work / f"peer_{name}.log", "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, str(script), "--model", str(model), "--dataset", "WikiMIA_length32"],
                              cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"the peer failed on {model}: see {work / f'peer_{name}.log'}")
    seconds = time.perf_counter() - start
    rows = list(csv.DictReader(open(cwd / "results" / "WikiMIA_length32" / f"{model.name}.csv", encoding="utf-8")))
    found = {r["method"]: r for r in rows}  # a rerun appends: the last row of each method
    return {ours: (float(found[theirs]["auroc"].rstrip("%")) / 100, float(found[theirs]["tpr05"].rstrip("%")) / 100)
            for ours, theirs in PEER_METHODS.items()}, seconds


def _table(name: str, groups: dict, peer: dict | None) -> list[str]:
    calibration, cmrc = groups["calibration"], groups["cmrc"]
    lines = []
    for method, sep in cmrc["separation"].items():
        theirs = (peer or {}).get(method)
        peer_auc, peer_tpr = (f"{theirs[0]:.3f}", f"{theirs[1]:.1%}") if theirs else ("—", "—")
        flagged = [_flagged_share(cmrc, s, method, calibration) for s in ("contaminated", "clean")]
        lines.append(f"| {name} | {method} | {calibration['separation'][method]['auc']:.3f} | {sep['auc']:.3f} "
                     f"| {peer_auc} | {sep['tpr_at_5_fpr']:.1%} | {peer_tpr} | {flagged[0]:.1%} | {flagged[1]:.1%} |")
    return lines


def _flagged_share(group: dict, status: str, method: str, calibration: dict) -> float:
    threshold = calibration["separation"][method]["threshold"]
    scores = [it["scores"][method] for it in group["items"] if it["status"] == status and "scores" in it]
    return sum(threshold is None or s > threshold for s in scores) / max(len(scores), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/membership_quality"))
    p.add_argument("--steps", default="150,600", help="training lengths, one model each")
    p.add_argument("--peer", type=Path, default=None, help="zjysteven/mink-plus-plus's run.py")
    args = p.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.peer:
        from zhllama.files import sha256_file

        if sha256_file(args.peer) != PEER_SHA256:
            sys.exit(f"--peer {args.peer}: sha256 {sha256_file(args.peer)}, expected {PEER_SHA256} (run.py of 62281ab)")
    manifest, report, init = prepared(work)
    models = {"random init": init}
    for steps in [int(s) for s in args.steps.split(",")]:
        models[f"{steps} steps"] = _train(work, f"steps_{steps}", init, work / "shards", steps, 3e-3, 8,
                                          "data.eval_split=null")
    ours = {name: _membership(work, name.replace(" ", "_"), model, init, manifest, report)
            for name, model in models.items()}
    cmrc = ours["random init"][0]["cmrc"]
    texts = _peer_texts(work, cmrc) if args.peer else None
    lines, timing = [], []
    for name, model in models.items():
        groups, seconds = ours[name]
        peer, theirs = _peer(work, name.replace(" ", "_"), args.peer, model, texts) if args.peer else (None, None)
        lines += _table(name, groups, peer)
        timing.append(f"{name}: ours {seconds:.0f} s for {groups['cmrc']['scored'] + groups['calibration']['scored']} "
                      f"texts{'' if model == init else ' (and the reference model)'}"
                      + (f"; the peer {theirs:.0f} s for {sum(1 for _ in open(texts))} texts" if theirs else ""))
    partial = cmrc["by_status"].get("partial", {}).get("texts", 0)
    print(f"CMRC 2018 dev passages: {cmrc['members']} trained on (contaminated), {cmrc['nonmembers']} clean "
          f"({partial} partial and {cmrc['too_long']} longer than 1,024 tokens left out); calibration: "
          f"{groups['calibration']['members']} training documents against {groups['calibration']['nonmembers']} "
          f"held out; each text cut to {MAX_CHARS} characters; timings include loading and process start\n")
    print("| model | method | calibration AUC | CMRC AUC | peer's CMRC AUC | CMRC TPR at 5% FPR | peer's "
          "| contaminated flagged | clean flagged |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    print("\n" + "\n".join(timing))


if __name__ == "__main__":
    main()
