"""engine.packed.PackedDataset: blocks, document boundaries, position ids, labels, real tokenizers."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from helpers_prepare import corpus_lines, make_tokenizer, split_stream, write_lines, write_manifest

from engine.packed import IGNORE_INDEX, PackedDataset, read_prepare_report
from zhllama.tokenizer_files import tokenizer_fingerprint
from pretrain.prepare import PrepareConfig, prepare
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed")
    tok = make_tokenizer(root / "tok")
    lines = corpus_lines(40, seed=3) + ["短"]  # one 1-character document: START, a token or two, EOS
    data = write_lines(root / "a.txt", lines)
    manifest = write_manifest(root / "m.yaml", [{"name": "a", "file": data}], holdout=0.25)
    cfg = PrepareConfig(manifest=str(manifest), tokenizer=str(tok), block_size=24, out=str(root / "out"),
                        progress=False, file_tokens=50)
    return prepare(cfg), tok


@pytest.mark.parametrize("split", ["train", "validation"])
def test_blocks_cover_every_target_once_with_document_boundaries(prepared, split):
    result, _ = prepared
    ds = PackedDataset(result.part_dir.parent, split=split)
    stream, starts = split_stream(result.part_dir / split, result.report)
    n = ds.block_size
    assert len(ds) == -(-(len(stream) - 1) // (n - 1)) > 1
    starts_set = set(starts.tolist())
    labelled: list[int] = []
    rebuilt: list[int] = []
    for b in range(len(ds)):
        item = ds[b]
        assert {k: (v.dtype, tuple(v.shape)) for k, v in item.items()} == {
            k: (torch.int64, (n,)) for k in ("input_ids", "position_ids", "labels")}
        ids, pos, labels = (item[k].numpy() for k in ("input_ids", "position_ids", "labels"))
        first = b * (n - 1)
        real = min(n, len(stream) - first)
        rebuilt.extend(ids[: real].tolist() if b == 0 else ids[1:real].tolist())
        segment_start = first
        for p in range(n):
            s = first + p
            if p < real:
                assert ids[p] == stream[s]
                if s in starts_set:
                    segment_start = s
                assert pos[p] == s - segment_start, (b, p)
                if labels[p] != IGNORE_INDEX:
                    assert p > 0 and s not in starts_set and labels[p] == stream[s]
                    labelled.append(s)
                else:
                    assert p == 0 or s in starts_set
            else:  # padding: a segment of its own, never a target
                assert ids[p] == ds.pad_id and labels[p] == IGNORE_INDEX and pos[p] == p - real
    assert rebuilt == stream.tolist()
    assert sorted(labelled) == [s for s in range(len(stream)) if s not in starts_set]  # each once
    assert len(labelled) == ds.labelled_tokens == ds.tokens - ds.documents
    assert ds.characters == result.report["splits"][split]["characters"] > 0
    assert ds.cache_key == result.report["cache_key"]


def test_dataset_pickles_small_and_loads_in_a_dataloader(prepared):
    result, tok = prepared
    ds = PackedDataset(result.part_dir.parent)
    ds[0]  # maps opened
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the maps are reopened, not copied
    batch = next(iter(torch.utils.data.DataLoader(pickle.loads(blob), batch_size=4)))
    assert batch["input_ids"].shape == (4, ds.block_size)
    assert torch.equal(batch["labels"][1], ds[1]["labels"])
    assert ds[-1]["input_ids"].shape == (ds.block_size,)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(UserError, match="split must be one of"):
        PackedDataset(result.part_dir.parent, split="test")


def test_tokenizer_fingerprint_follows_ids_not_formatting(prepared, tmp_path):
    result, tok = prepared
    assert PackedDataset(result.part_dir.parent).tokenizer_fingerprint == tokenizer_fingerprint(tok)
    copy = tmp_path / "copy"
    shutil.copytree(tok, copy)
    tj = copy / "tokenizer.json"
    import json

    tj.write_text(json.dumps(json.loads(tj.read_text()), indent=4, sort_keys=True))  # reformatted only
    (copy / "config.json").write_text("{}")  # a model folder's other files do not count
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(tok)
    cfg = copy / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"<s>"', '"</s>"', 1))  # another BOS: other ids
    assert tokenizer_fingerprint(copy) != tokenizer_fingerprint(tok)
    with pytest.raises(UserError, match="no tokenizer files"):
        tokenizer_fingerprint(tmp_path / "nothing")


def test_report_totals(prepared):
    result, _ = prepared
    totals = read_prepare_report(result.part_dir.parent)
    assert totals["parts"] == 1 and totals["tokens"] == result.report["tokens"]
    assert totals["documents"] == sum(s["documents"] for s in totals["splits"].values())
    with pytest.raises(UserError, match="does not exist"):
        read_prepare_report(result.part_dir.parent / "nope")


def test_real_llama_tokenizer_on_chinese_wikipedia(shared_data, tmp_path):
    """Ids in the shards are exactly what the HF tokenizer gives (BOS added by it) plus EOS."""
    from transformers import LlamaTokenizer

    model_dir = tmp_path / "sp"
    model_dir.mkdir()
    shutil.copy(shared_data / "tokenizers/llama2c/tokenizer.model", model_dir / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(model_dir), add_bos_token=True)
    tok.save_pretrained(str(tmp_path / "tok"))
    lines = (shared_data / "pretrain/cmrc2018_dev_contexts.txt").read_text(encoding="utf-8").splitlines()[:300]
    data = write_lines(tmp_path / "zh.txt", lines)
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "zh", "file": data}])
    result = prepare(PrepareConfig(manifest=str(manifest), tokenizer=str(tmp_path / "tok"), block_size=512,
                                   out=str(tmp_path / "out"), progress=False))
    stream, starts = split_stream(result.part_dir / "train", result.report)
    expected = np.concatenate([tok(t)["input_ids"] + [tok.eos_token_id] for t in lines])
    assert result.report["dtype"] == "uint16"
    np.testing.assert_array_equal(stream, expected)
    assert result.report["splits"]["train"]["characters"] == sum(len(t) for t in lines)
