"""`python -m evaluation membership`: loss-based membership scores (loss, zlib, Min-K%, Min-K%++, a
reference model), equal to their definitions; AUC and TPR at 5% FPR; the CLI on a small model trained on
one half of a manifest, which must tell that half from the held-out one."""
from __future__ import annotations

import argparse
import json
import math
import random
import zlib

import numpy as np
import pytest
import torch
from helpers_bench import write_ceval
from helpers_prepare import write_lines, write_manifest
from helpers_reading import article, squad_file

from evaluation import membership_cli
from evaluation.membership import auc, score_texts, separation
from zhllama.errors import UserError
from zhllama.token_losses import token_log_prob_stats


def _direct(model, tokenizer, text: str, k: float) -> dict[str, float]:
    """The scores from the papers' definitions: one text alone, its whole logits at once."""
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    target = ids[0, 1:]
    logp = log_probs[torch.arange(len(target)), target]
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    sigma = ((probs * log_probs**2).sum(-1) - mu**2).sqrt()
    lowest = max(1, int(len(logp) * k))
    return {"loss": logp.mean().item(), "zlib": logp.mean().item() / len(zlib.compress(text.encode())),
            "min_k": logp.sort().values[:lowest].mean().item(),
            "min_k_plus_plus": ((logp - mu) / sigma).sort().values[:lowest].mean().item(),
            "bits_per_char": -logp.sum().item() / math.log(2) / len(text)}


def test_scores_equal_their_definitions_batched_and_chunked(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import make_tiny_model
    from evaluation import membership

    folder = make_tiny_model(tmp_path / "m", hidden=32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():  # wider weights: peaked distributions, so the normalisers matter
        for w in model.parameters():
            w.mul_(8) if w.dim() == 2 else None
    texts = ["春眠不觉晓，处处闻啼鸟。", "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", "The quick brown fox.",
             "床前明月光" * 30]
    monkeypatch.setattr(membership, "STATS_ELEMENTS", {"cpu": 3 * 8 * len(tokenizer)})  # chunks of 8: several a row
    got = score_texts(model, tokenizer, texts, k=0.3, batch_size=3, device="cpu", max_length=512)
    for text, score in zip(texts, got):
        want = _direct(model, tokenizer, text, 0.3)
        assert score.bits_per_char == pytest.approx(want.pop("bits_per_char"), rel=1e-5)
        assert score.scores == pytest.approx(want, rel=1e-5, abs=1e-6)
    too_long = score_texts(model, tokenizer, texts, k=0.3, batch_size=2, device="cpu", max_length=40)
    assert too_long[3] is None and too_long[0].scores == pytest.approx(got[0].scores, rel=1e-5)
    ids = torch.tensor([[1, 5, 9, 4], [1, 7, 0, 0]])
    stats = token_log_prob_stats(model, ids, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), chunk=2)
    assert stats[0][1, 1:].abs().sum() == 0 and stats[2][1, 1:].abs().sum() == 0  # padded targets: 0


def test_auc_and_true_positives_at_five_percent_false_positives():
    rng = random.Random(0)
    members = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) for _ in range(57)]  # many ties
    nonmembers = [rng.choice([-0.5, 0.0, 0.5, 1.0]) for _ in range(43)]
    pairs = [(m > n) + 0.5 * (m == n) for m in members for n in nonmembers]
    assert auc(members, nonmembers) == pytest.approx(sum(pairs) / len(pairs))
    assert auc([2, 3], [0, 1]) == 1.0 and auc([0, 1], [2, 3]) == 0.0 and auc([1, 1], [1, 1]) == 0.5
    for fpr in (0.0, 0.05, 0.3):
        best = 0.0  # every threshold "flag when score > t" whose false positive share is at most fpr
        for t in sorted(set(members + nonmembers)) + [-math.inf]:
            if sum(n > t for n in nonmembers) <= fpr * len(nonmembers):
                best = max(best, sum(m > t for m in members) / len(members))
        got = separation(members, nonmembers, fpr)
        assert got[f"tpr_at_{round(fpr * 100)}_fpr"] == pytest.approx(best)
    assert separation([1.0], [0.0] * 10, 0.1)["threshold"] == 0.0
    assert separation([1.0], [0.0] * 10, 1.0)["threshold"] is None  # every text flagged


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cmrc_lines):
    """A small LLaMA trained on the training part of a manifest of 120 CMRC paragraphs (half held out), its
    random start, the manifest, and a reading set of 12 of its paragraphs from each part."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpora.manifest import iter_documents, load_manifest
    from engine.tiny import make_tiny_model, make_tiny_tokenizer

    root = tmp_path_factory.mktemp("membership")
    lines = [line[:150] for line in cmrc_lines[:120]]
    manifest = write_manifest(root / "m.yaml", [{"name": "cmrc", "file": write_lines(root / "c.txt", lines)}],
                              holdout=0.5)
    base = make_tiny_model(root / "base", make_tiny_tokenizer(root / "tok", lines, vocab_size=3500), hidden=64)
    parts = {split: [d.text for d in iter_documents(load_manifest(manifest).sources[0], split=split)]
             for split in ("train", "holdout")}
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    rows = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids for t in parts["train"]]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    torch.manual_seed(0)
    for _ in range(100):  # about 13 passes over the training part
        batch = rng.sample(rows, 8)
        ids = torch.zeros((8, max(map(len, batch))), dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, r in enumerate(batch):
            ids[i, : len(r)] = labels[i, : len(r)] = torch.tensor(r)
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "trained")
    tokenizer.save_pretrained(root / "trained")
    chosen = parts["train"][:12] + parts["holdout"][:12]
    reading = squad_file(root / "r.json", [article(f"t{i}", c, [(f"q{i}", "什么？", c[:4])]) for i, c in enumerate(chosen)])
    return root, base, root / "trained", manifest, reading


def _args(root, model, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    membership_cli.add_arguments(parser)
    return parser.parse_args(["--model", str(model), "--out", str(root / "out.json"), "--max-chars", "150",
                              "--no-progress", *extra])


def test_the_cli_tells_trained_documents_and_contaminated_passages_from_held_out_ones(trained):
    from evaluation import contamination_cli

    root, base, model, manifest, reading = trained
    parser = argparse.ArgumentParser()
    contamination_cli.add_arguments(parser)
    contamination_cli.run(parser.parse_args([str(manifest), "--reading", f"cmrc={reading}",
                                             "--out", str(root / "c.keys")]))
    labelled = write_lines(root / "own.jsonl", [json.dumps({"text": t, "label": i % 2}, ensure_ascii=False)
                                                for i, t in enumerate(["今天天气很好。", "明天会下雨吗？"] * 6)])
    args = _args(root, model, "--reference", str(base), "--calibrate", str(manifest), "--calibrate-docs", "40",
                 "--reading", f"cmrc={reading}", "--contamination", str(root / "c.keys.json"),
                 "--labelled", f"own={labelled}")
    assert membership_cli.run(args) == 0
    result = json.loads((root / "out.json").read_text(encoding="utf-8"))
    calibration, cmrc, groups = result["groups"]["calibration"], result["groups"]["cmrc"], result["groups"]
    dropped = result["calibration"]["held_out_sharing_training_text"]  # CMRC paragraphs that repeat each other
    assert calibration["members"] == 40 and calibration["nonmembers"] + dropped == 40 and dropped < 10
    for method in ("loss", "min_k", "min_k_plus_plus", "reference"):
        assert calibration["separation"][method]["auc"] > 0.9, method
        # the 12 passages from the training part are the contaminated ones; the held-out 12 clean
        assert cmrc["separation"][method]["auc"] > 0.9, method
        assert cmrc["flagged"][method] > 0.3
        means = cmrc["by_status"]
        assert means["contaminated"]["mean"][method] > means["clean"]["mean"][method]
    assert cmrc["members"] == 12 and cmrc["nonmembers"] == 12
    assert [it["status"] for it in cmrc["items"]] == ["contaminated"] * 12 + ["clean"] * 12
    assert groups["own"]["members"] == 6 and "flagged" in groups["own"]
    assert set(cmrc["items"][0]["scores"]) == {"loss", "zlib", "min_k", "min_k_plus_plus", "reference"}
    assert cmrc["highest"]["method"] == "reference" and len(cmrc["highest"]["texts"]) == 10


def test_the_reference_score_is_the_drop_in_bits_per_character(trained):
    root, base, model, _, reading = trained
    out = root / "ref.json"
    for folder, name in ((model, "mine"), (base, "theirs")):
        args = _args(root, folder, "--reading", f"cmrc={reading}")
        args.out = str(root / f"{name}.json")
        membership_cli.run(args)
    args = _args(root, model, "--reading", f"cmrc={reading}", "--reference", str(base))
    args.out = str(out)
    membership_cli.run(args)
    items = [json.loads((root / f"{n}.json").read_text())["groups"]["cmrc"]["items"] for n in ("mine", "theirs")]
    both = json.loads(out.read_text())["groups"]["cmrc"]["items"]
    for mine, theirs, got in zip(*items, both):
        assert got["scores"]["reference"] == pytest.approx(theirs["bits_per_char"] - mine["bits_per_char"], abs=2e-6)


def test_benchmark_items_are_scored_per_split_as_lettered_text_sampled_by_seed(trained, tmp_path):
    from corpora.manifest import iter_documents, load_manifest

    root, _, model, manifest, _ = trained
    source = load_manifest(manifest).sources[0]  # calibrated by labelled texts: the trained ones 1, held out 0
    calibration = write_lines(tmp_path / "cal.jsonl", [
        json.dumps({"text": d.text, "label": int(split == "train")}, ensure_ascii=False)
        for split in ("train", "holdout") for d in iter_documents(source, split=split)])
    ceval = write_ceval(tmp_path / "ceval", {
        "dev": {"law": [("宪法是什么？", "甲", "乙", "丙", "丁", "A")]},
        "val": {"law": [(f"第{i}个问题是什么？", "甲", "乙", "丙", "丁", "B") for i in range(6)]}})
    picked = []
    for seed in ("0", "0", "1"):
        membership_cli.run(_args(tmp_path, model, "--benchmark", f"ceval={ceval}", "--max-items", "4", "--seed", seed,
                                 "--calibrate", str(calibration)))
        groups = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))["groups"]
        assert {g: v["texts"] for g, v in groups.items() if g != "calibration"} == {"ceval dev": 1, "ceval val": 4}
        assert groups["calibration"]["separation"]["min_k_plus_plus"]["auc"] > 0.9
        assert set(groups["ceval val"]["flagged"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
        picked.append([it["where"] for it in groups["ceval val"]["items"]])
    assert picked[0] == picked[1] != picked[2]
    assert groups["ceval dev"]["highest"]["texts"][0]["text"] == "宪法是什么？\nA. 甲\nB. 乙\nC. 丙\nD. 丁"


def test_bad_settings_and_files_are_refused_before_the_model_loads(trained, tmp_path):
    root, base, model, manifest, reading = trained
    bad = write_lines(tmp_path / "bad.jsonl", ['{"text": "a", "label": 2}', "not json", '{"input": "", "label": 0}'])
    args = _args(tmp_path, model, "--labelled", f"own={bad}", "--k", "0", "--reading", "x", "--labelled",
                 "own=missing.jsonl")
    with pytest.raises(UserError) as e:
        membership_cli.run(args)
    for problem in ("--k must be in (0, 1]", "--reading 'x': expected NAME=PATH", "missing.jsonl: not a file",
                    "the name own is given twice"):
        assert problem in str(e.value)
    with pytest.raises(UserError) as e:
        membership_cli.run(_args(tmp_path, model, "--labelled", f"own={bad}"))
    for problem in ("line 1: expected \"label\": 1 (in the training data) or 0, got 2", "line 2: not JSON",
                    "line 3: expected \"text\""):
        assert problem in str(e.value)
    one_label = write_lines(tmp_path / "one.jsonl", ['{"text": "a", "label": 1}'])
    with pytest.raises(UserError, match="both 1 and 0 are needed"):
        membership_cli.run(_args(tmp_path, model, "--labelled", f"own={one_label}"))
    report = tmp_path / "c.json"
    report.write_text(json.dumps({"data": {"other": {}}, "results": {}, "items": []}))
    with pytest.raises(UserError, match="cmrc was not checked"):
        membership_cli.run(_args(tmp_path, model, "--reading", f"cmrc={reading}", "--contamination", str(report)))
    assert not (tmp_path / "out.json").exists()


def test_held_out_documents_that_share_text_with_the_training_part_do_not_calibrate(tmp_path):
    from corpora.manifest import load_manifest
    from evaluation.membership_data import MembershipText, without_training_overlap

    trained = ["李白字太白，号青莲居士，又号谪仙人，是唐代伟大的浪漫主义诗人，被后人誉为诗仙。",
               "杜甫字子美，自号少陵野老，唐代伟大的现实主义诗人，与李白合称李杜，被后人称为诗圣。"]
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", [{"name": "poets", "file": write_lines(
        tmp_path / "t.txt", trained)}]))  # no holdout: every document is trained on
    held_out = ["转载：" + trained[0][:24] + "。以上内容来自网络。",  # a reposted piece of a trained document
                "王维字摩诘，号摩诘居士，唐朝诗人，有诗佛之称，苏轼评价其诗中有画，画中有诗。"]
    kept, dropped = without_training_overlap(manifest, [MembershipText("calibration", f"h{i}", f"h{i}", t, False)
                                                        for i, t in enumerate(held_out)])
    assert dropped == 1 and [t.text for t in kept] == held_out[1:]
