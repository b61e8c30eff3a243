"""python -m pretrain prepare: exact token streams, cache keys, no-op reruns, shards, bad input."""
from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path

import numpy as np
import pytest
from helpers_prepare import (corpus_lines, documents_of, make_tokenizer, read_json, split_stream, write_lines,
                                  write_manifest)

from pretrain import prepare_cli
from engine.packed import PackedDataset, part_name, read_prepare_report
from pretrain.prepare import PrepareConfig, parse_shard, prepare
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """Two sources (weights 1 and 2), empty lines, a holdout."""
    lines_a = corpus_lines(60, seed=1)
    lines_a[5:5] = ["", "   "]
    a = write_lines(tmp_path / "a.txt", lines_a)
    b = write_lines(tmp_path / "b.txt", corpus_lines(20, seed=2))
    return write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": a}, {"name": "b", "file": b, "weight": 2}],
                          holdout=0.2)


def _cfg(manifest, tok_dir, out, **kw) -> PrepareConfig:
    return PrepareConfig(manifest=str(manifest), tokenizer=str(tok_dir), block_size=kw.pop("block_size", 16),
                         out=str(out), progress=False, file_tokens=kw.pop("file_tokens", 101), **kw)


def _expected_docs(manifest, hf_tok, split, shard=None):
    """Documents of a split in output order, tokenized by the HF tokenizer: [BOS] + ids + [EOS]."""
    import math

    from corpora.manifest import copies, iter_documents, load_manifest

    m = load_manifest(manifest)
    docs = []
    for source in m.sources:
        passes = math.ceil(source.weight) if split == "train" else 1
        for r in range(passes):
            for doc in iter_documents(source, shard=shard, split="train" if split == "train" else "holdout"):
                if split != "train" or copies(source.weight, doc, 0) > r:
                    ids = hf_tok(doc.text, add_special_tokens=False)["input_ids"]
                    docs.append((doc.text, (hf_tok.bos_token_id, *ids, hf_tok.eos_token_id)))
    return docs


def test_shards_round_trip_to_the_exact_token_stream(corpus, tok_dir, hf_tok, tmp_path):
    result = prepare(_cfg(corpus, tok_dir, tmp_path / "out"))
    assert result.status == "prepared"
    report = result.report
    for split in ("train", "validation"):
        expected = _expected_docs(corpus, hf_tok, split)
        tokens, starts = split_stream(result.part_dir / split, report)
        assert documents_of(tokens, starts) == [ids for _, ids in expected]
        info = report["splits"][split]
        assert info["documents"] == len(expected) > 0
        assert info["characters"] == sum(len(text) for text, _ in expected)
        assert len(info["files"]) > 1  # 101 tokens per file: the stream spans files
        assert all(f["tokens"] == 101 for f in info["files"][:-1])
    # weight 2: every document of source b appears twice in train, a whole pass apart
    assert report["source_stats"]["b"]["written"]["train"] == 2 * report["source_stats"]["b"]["train"]["documents"]
    assert report["source_stats"]["a"]["train"]["empty"] == 2
    totals = read_json(tmp_path / "out" / "prepare_report.json")
    assert totals["cache_key"] == report["cache_key"] and totals["tokens"] == report["tokens"]


def test_validation_is_the_manifest_holdout_by_document(corpus, tok_dir, hf_tok, tmp_path):
    result = prepare(_cfg(corpus, tok_dir, tmp_path / "out"))
    train = {text for text, _ in _expected_docs(corpus, hf_tok, "train")}
    held = [text for text, _ in _expected_docs(corpus, hf_tok, "validation")]
    assert held and not train & set(held)
    assert result.report["splits"]["validation"]["documents"] == len(held)


def test_rerun_is_a_noop_and_changes_are_refused_or_replaced(corpus, tok_dir, tmp_path, capsys):
    out = tmp_path / "out"
    first = prepare(_cfg(corpus, tok_dir, out))
    token_file = first.part_dir / "train" / "tokens-00000.bin"
    stamp = token_file.stat().st_mtime_ns
    again = prepare(_cfg(corpus, tok_dir, out, num_proc=1))
    assert again.status == "up-to-date" and again.report["cache_key"] == first.report["cache_key"]
    assert token_file.stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=r"block_size 16 -> 32.*--overwrite"):
        prepare(_cfg(corpus, tok_dir, out, block_size=32))
    replaced = prepare(_cfg(corpus, tok_dir, out, block_size=32, overwrite=True))
    assert replaced.status == "prepared" and replaced.report["cache_key"] != first.report["cache_key"]
    assert PackedDataset(out).block_size == 32
    # the command line says so too
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    args = parser.parse_args(["--manifest", str(corpus), "--tokenizer", str(tok_dir), "--block-size", "32",
                              "--out", str(out), "--file-tokens", "101", "--no-progress"])
    capsys.readouterr()
    assert prepare_cli.run(args) == 0
    assert "up to date" in capsys.readouterr().out


def _key(cfg: PrepareConfig, out: Path) -> str:
    """Cache key of a configuration: prepare into a fresh folder and read it back."""
    return prepare(PrepareConfig(**{**cfg.__dict__, "out": str(out)})).report["cache_key"]


def test_cache_key_changes_with_every_input_byte_and_setting(tmp_path, tok_dir):
    data = write_lines(tmp_path / "a.txt", corpus_lines(12))
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": data}])
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in tok_dir.iterdir():
        (tok / f.name).write_bytes(f.read_bytes())
    base = _cfg(manifest, tok, tmp_path / "o")
    keys = {"base": _key(base, tmp_path / "o0")}
    # one input byte (the manifest must name the new sha256, so both change together)
    write_lines(data, corpus_lines(12)[:-1] + [corpus_lines(12)[-1] + "x"])
    write_manifest(manifest, [{"name": "a", "file": data}])
    keys["input byte"] = _key(base, tmp_path / "o1")
    # a tokenizer file byte (a setting the ids do not even depend on)
    config = tok / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 77}', 1))
    keys["tokenizer byte"] = _key(base, tmp_path / "o2")
    for i, (field, value) in enumerate([("block_size", 17), ("seed", 1), ("file_tokens", 99),
                                        ("shard", (0, 2)), ("on_decode_error", "skip")]):
        keys[field] = _key(PrepareConfig(**{**base.__dict__, field: value}), tmp_path / f"s{i}")
    assert len(set(keys.values())) == len(keys), keys
    # --num-proc is not a setting of the output: same key
    assert _key(PrepareConfig(**{**base.__dict__, "seed": 1, "num_proc": 3}), tmp_path / "p") == keys["seed"]


def test_shard_parts_partition_the_documents(corpus, tok_dir, tmp_path):
    whole = prepare(_cfg(corpus, tok_dir, tmp_path / "whole"))
    out = tmp_path / "parts"
    reports = [prepare(_cfg(corpus, tok_dir, out, shard=(i, 3))).report for i in range(3)]
    for split in ("train", "validation"):
        union: collections.Counter = collections.Counter()
        for r in reports:
            tokens, starts = split_stream(out / part_name(r["part"]["index"], 3) / split, r)
            union.update(documents_of(tokens, starts))
        expected = collections.Counter(documents_of(*split_stream(whole.part_dir / split, whole.report)))
        assert union == expected  # no loss, no duplicate (weight-2 copies count twice on both sides)
        ds = PackedDataset(out, split=split)
        assert ds.tokens == whole.report["splits"][split]["tokens"]
        assert ds.documents == whole.report["splits"][split]["documents"]
    assert read_prepare_report(out)["parts"] == 3
    # a missing part is refused by the reader
    os.rename(out / part_name(1, 3), out / ".hidden")
    with pytest.raises(UserError, match=r"1 of 3 parts are missing.*1/3"):
        PackedDataset(out)


def test_num_proc_does_not_change_the_output(corpus, tok_dir, tmp_path):
    one = prepare(_cfg(corpus, tok_dir, tmp_path / "one"))
    two = prepare(_cfg(corpus, tok_dir, tmp_path / "two", num_proc=2))
    for split in ("train", "validation"):
        for name in ("doc_starts.bin", "doc_sources.bin", "tokens-00000.bin", "tokens-00003.bin"):
            assert (one.part_dir / split / name).read_bytes() == (two.part_dir / split / name).read_bytes()


# --- bad input -------------------------------------------------------------------------------

def test_undecodable_bytes_fail_naming_the_line_or_are_skipped_and_counted(tmp_path, tok_dir):
    data = tmp_path / "bad.txt"
    data.write_bytes("第一行\n".encode() + b"\xff\xfe broken\n" + "第三行\n".encode())
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": data}])
    with pytest.raises(UserError, match=r"bad\.txt:2: not valid UTF-8"):
        prepare(_cfg(manifest, tok_dir, tmp_path / "out"))
    assert not (tmp_path / "out" / part_name(0, 1)).exists()
    report = prepare(_cfg(manifest, tok_dir, tmp_path / "out", on_decode_error="skip")).report
    assert report["source_stats"]["a"]["train"]["undecodable"] == 1
    assert report["splits"]["train"]["documents"] == 2


def test_zero_documents_after_cleaning_is_a_clear_error(tmp_path, tok_dir):
    data = write_lines(tmp_path / "a.txt", ["短", "", "也短"])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": data, "clean": {"min_chars": 50}}])
    with pytest.raises(UserError, match=r"(?s)no documents left.*a: 3 records read; dropped 1 empty.*2 too short"):
        prepare(_cfg(manifest, tok_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_tokenizer_without_eos_is_refused(tmp_path):
    data = write_lines(tmp_path / "a.txt", corpus_lines(3))
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": data}])
    tok = make_tokenizer(tmp_path / "tok", eos=False)
    with pytest.raises(UserError, match="no EOS token"):
        prepare(_cfg(manifest, tok, tmp_path / "out"))
    with pytest.raises(UserError, match="not a Hugging Face tokenizer folder"):
        prepare(_cfg(manifest, tmp_path, tmp_path / "out"))


def test_bad_settings_are_reported_together(tmp_path, tok_dir):
    with pytest.raises(UserError) as info:
        prepare(PrepareConfig(manifest="m.yaml", tokenizer=str(tok_dir), block_size=1, out=str(tmp_path),
                              shard=(3, 2), num_proc=0))
    assert "3 problems" in str(info.value)
    with pytest.raises(UserError, match="expected i/n"):
        parse_shard("2")
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert parse_shard("slurm", slurm) == (3, 5) and parse_shard("2/8") == (2, 8)
    with pytest.raises(UserError, match="SLURM_ARRAY_TASK_ID"):
        parse_shard("slurm", {})


def test_interrupted_prepare_leaves_nothing_that_looks_complete(corpus, tok_dir, tmp_path, monkeypatch):
    from pretrain import shards

    calls = []

    def boom(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_add(self, *args)

    real_add = shards.SplitWriter.add
    monkeypatch.setattr(shards.SplitWriter, "add", boom)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(corpus, tok_dir, out, batch_chars=50))
    assert [p.name for p in out.iterdir()] == []
    with pytest.raises(UserError, match="no prepared parts"):
        PackedDataset(out)


def test_out_holding_other_files_is_refused(corpus, tok_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files"):
        prepare(_cfg(corpus, tok_dir, out))


def test_start_marker_is_eos_without_bos(tmp_path):
    data = write_lines(tmp_path / "a.txt", corpus_lines(4))
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": data}])
    tok = make_tokenizer(tmp_path / "tok", bos=False)
    result = prepare(_cfg(manifest, tok, tmp_path / "out"))
    tokens, starts = split_stream(result.part_dir / "train", result.report)
    eos = result.report["special_ids"]["eos"]
    assert result.report["special_ids"]["start"] == eos
    assert np.all(tokens[starts] == eos) and tokens[-1] == eos


def test_sampling_weights_decide_each_sources_share(tmp_path, tok_dir):
    from corpora.manifest import copies, iter_documents, load_manifest

    a = write_lines(tmp_path / "a.txt", corpus_lines(80, seed=4))
    b = write_lines(tmp_path / "b.txt", corpus_lines(10, seed=5))
    c = write_lines(tmp_path / "c.txt", corpus_lines(10, seed=6))
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "a", "file": a, "weight": 0.5},
                                                    {"name": "b", "file": b, "weight": 0},
                                                    {"name": "c", "file": c, "weight": 3}])
    written = prepare(_cfg(manifest, tok_dir, tmp_path / "out", seed=7)).report["source_stats"]
    source_a = load_manifest(manifest).source("a")
    kept = sum(copies(0.5, doc, 7) for doc in iter_documents(source_a))
    assert written["a"]["written"]["train"] == kept and 20 < kept < 60  # down-sampled by hash, about half
    assert written["b"]["written"]["train"] == 0  # weight 0 leaves a source out
    assert written["c"]["written"]["train"] == 30  # up-sampled three times
