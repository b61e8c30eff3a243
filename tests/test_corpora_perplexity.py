"""`python -m corpora perplexity`: bits/char per document (batched == one at a time), the worst share of each
source listed, and the manifest's exclude: leaving those out."""
from __future__ import annotations

import argparse
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers_prepare import write_lines, write_manifest

from corpora.manifest import iter_documents, load_manifest
from corpora.perplexity import document_bits
from corpora.perplexity_cli import run
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("ppl") / "model")
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _docs(seed: int, count: int) -> list[str]:
    from engine.tiny import DEFAULT_TEXT

    rng = random.Random(seed)
    return [f"{i}：" + "".join(rng.sample(sorted(set(DEFAULT_TEXT)), 3)) for i in range(count)]


def _gibberish(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)  # rare Han characters: the tiny tokenizer spells them in bytes
    return ["".join(chr(0x8000 + rng.randrange(2000)) for _ in range(60)) for _ in range(count)]


def test_batched_scores_equal_one_at_a_time_and_a_direct_count(tiny):
    _, model, tokenizer = tiny
    texts = _docs(0, 6) + _gibberish(1, 2) + ["短"]
    batched = document_bits(model, tokenizer, texts, max_chars=80, batch_size=4)
    alone = [document_bits(model, tokenizer, [t], max_chars=80, batch_size=1)[0] for t in texts]
    assert batched == pytest.approx(alone, rel=1e-5)
    text = texts[0][:80]
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        nats = F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="sum")
    assert batched[0] == pytest.approx(float(nats) / math.log(2) / len(text), rel=1e-5)
    assert min(batched[6:8]) > max(batched[:6])  # bytes for every character cost more bits


def _args(manifest, model, out, **overrides) -> argparse.Namespace:
    values = dict(drop_worst=0.1, drop_best=0.0, max_bits_per_char=None, max_chars=200, min_chars=10, batch_size=8,
                  device="cpu", dtype="float32", no_progress=True)
    return argparse.Namespace(manifest=str(manifest), model=str(model), out=str(out), **{**values, **overrides})


def test_cli_lists_the_worst_share_of_each_source_and_the_exclude_leaves_it_out(tiny, tmp_path, capsys):
    folder, _, _ = tiny
    web = _docs(2, 27) + _gibberish(3, 3) + ["太短"]
    forum = _docs(4, 20)
    manifest = write_manifest(tmp_path / "m.yaml", [
        {"name": "web", "file": write_lines(tmp_path / "web.txt", web)},
        {"name": "forum", "file": write_lines(tmp_path / "forum.txt", forum)}], holdout=0.2)
    keys = tmp_path / "ppl.keys"
    assert run(_args(manifest, folder, keys)) == 0
    report = json.loads((tmp_path / "ppl.keys.json").read_text())
    scores = [json.loads(line) for line in (tmp_path / "ppl.keys.scores.jsonl").read_text().splitlines()]
    listed = set(keys.read_text().split())
    for name, source in report["sources"].items():
        rows = [s for s in scores if s["source"] == name]
        scored = sorted((s for s in rows if s["bits_per_char"] is not None), key=lambda s: -s["bits_per_char"])
        above = [s for s in scored if s["bits_per_char"] > source["cut_above"]]
        assert 0 < len(above) == source["listed"] <= math.ceil(0.1 * len(scored))
        assert {s["key"] for s in above} <= listed and {s["key"] for s in above} == {s["key"] for s in scored[: len(above)]}
    assert report["sources"]["web"]["scored"] == 30 and report["sources"]["web"]["documents"] == 31  # "太短" unscored
    worst_texts = {e["text"] for e in report["sources"]["web"]["worst"][:3]}
    assert worst_texts == set(_gibberish(3, 3))
    assert "documents listed" in capsys.readouterr().out

    raw = yaml.safe_load(manifest.read_text())
    raw["exclude"] = {"file": str(keys), "sha256": report["sha256"]}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    kept = [d.text for d in iter_documents(load_manifest(manifest).sources[0], split="all")]
    assert not set(_gibberish(3, 3)) & set(kept) and "太短" in kept

    assert run(_args(manifest, folder, keys, drop_worst=0.0, drop_best=0.25, max_bits_per_char=1e6)) == 0
    low = json.loads((tmp_path / "ppl.keys.json").read_text())["sources"]["forum"]
    assert low["cut_above"] == 1e6 and low["listed"] == 5  # the lowest quarter of 20 scores


def test_bad_settings_are_refused_together(tiny, tmp_path):
    folder, _, _ = tiny
    with pytest.raises(UserError, match="3 problems") as info:
        run(_args("m.yaml", folder, tmp_path / "k", drop_worst=1.2, max_bits_per_char=-1, batch_size=0))
    assert "--drop-worst" in str(info.value) and "--batch-size" in str(info.value)


def _cli(*argv: str, ranks: int = 1):
    import os
    import subprocess
    import sys

    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
              if ranks > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([*launch, "-m", "corpora", "perplexity", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.distributed
def test_two_ranks_list_the_same_documents_as_one_process(tiny, tmp_path):
    folder, _, _ = tiny
    manifest = write_manifest(tmp_path / "m.yaml", [
        {"name": "web", "file": write_lines(tmp_path / "web.txt", _docs(5, 37) + _gibberish(6, 4))},
        {"name": "forum", "file": write_lines(tmp_path / "forum.txt", _docs(7, 11))}], holdout=0.1)
    outputs = {}
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}" / "ppl.keys"
        out.parent.mkdir()
        proc = _cli(str(manifest), "--model", str(folder), "--out", str(out), "--max-chars", "120", "--batch-size",
                    "4", "--drop-best", "0.1", "--no-progress", ranks=ranks)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(out.with_name("ppl.keys.json").read_text())
        report.pop("totals")
        outputs[ranks] = (out.read_text(), out.with_name("ppl.keys.scores.jsonl").read_text(), report)
    assert outputs[1][0] == outputs[2][0]  # the same keys listed
    for name, source in outputs[1][2]["sources"].items():  # batches differ across ranks: floats to ~1e-7
        other = outputs[2][2]["sources"][name]
        assert [source[k] for k in ("documents", "scored", "listed")] == [other[k] for k in ("documents", "scored", "listed")]
        assert other["cut_above"] == pytest.approx(source["cut_above"], rel=1e-5)
        assert [e["text"] for e in source["worst"] + source["best"]] == [e["text"] for e in other["worst"] + other["best"]]
    one, two = ([json.loads(line) for line in outputs[r][1].splitlines()] for r in (1, 2))
    assert [(s["key"], s["line"]) for s in one] == [(s["key"], s["line"]) for s in two]  # document order
    assert [s["bits_per_char"] for s in two] == pytest.approx([s["bits_per_char"] for s in one], rel=1e-5)
