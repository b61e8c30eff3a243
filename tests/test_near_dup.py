"""Near-duplicate removal: MinHash estimates n-gram Jaccard, LSH finds planted copies and nothing else,
and a manifest's exclude: file (written by `python -m corpora near-dups`) leaves them out of every phase."""
from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import yaml
from helpers_prepare import write_lines, write_manifest

from corpora.manifest import SourceStats, document_key, is_held_out, iter_documents, load_manifest
from corpora.near_dup import MinHasher, NearDupSettings, find_near_duplicates, ngram_jaccard
from corpora.near_dup_cli import run
from zhllama.errors import UserError


def _paragraph(rng: random.Random, length: int = 300) -> str:
    return "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(length))


def _edited(text: str, rate: float, rng: random.Random) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), int(len(chars) * rate)):
        chars[i] = chr(0x9000 + rng.randrange(1000))
    return "".join(chars)


def test_agreeing_slots_estimate_the_ngram_jaccard_similarity():
    rng, hasher = random.Random(0), MinHasher(NearDupSettings(permutations=256, bands=16))
    for rate in (0.0, 0.01, 0.03, 0.06, 0.15):
        a = _paragraph(rng)
        b = _edited(a, rate, rng)
        estimate = float(np.mean(hasher.signature(a) == hasher.signature(b)))
        assert abs(estimate - ngram_jaccard(a, b)) < 0.1, (rate, estimate, ngram_jaccard(a, b))
    # Whitespace does not count, and the same text has the same signature in every run and machine.
    assert np.array_equal(hasher.signature("春眠 不觉晓，处处闻啼鸟"), hasher.signature("春眠不觉晓，\n处处闻啼鸟"))
    # Pinned: the same corpus gives the same list on every machine and numpy version.
    assert MinHasher(NearDupSettings()).signature("春眠不觉晓，处处闻啼鸟。")[:4].tolist() == [121286728, 50599291, 450906823, 247697478]


def test_planted_copies_are_found_and_distinct_documents_kept():
    rng = random.Random(1)
    originals = [_paragraph(rng) for _ in range(200)]
    close = [_edited(originals[i], 0.01, rng) for i in range(0, 40)]  # Jaccard ~0.95
    far = [_edited(originals[i], 0.3, rng) for i in range(40, 80)]  # Jaccard ~0.1: other documents
    texts = originals + close + far
    matches = list(find_near_duplicates(texts, NearDupSettings()))
    assert [(m.index, m.kept) for m in matches] == [(200 + i, i) for i in range(40)]
    assert all(m.similarity >= 0.8 for m in matches)


def _corpus(rng: random.Random) -> tuple[list[str], set[str]]:
    originals = [_paragraph(rng, 120) for _ in range(60)]
    copies = [_edited(originals[i], 0.01, rng) for i in range(15)]
    lines = originals + copies
    return lines, set(copies)


def test_cli_lists_the_copies_and_the_manifest_exclude_leaves_them_out_everywhere(tmp_path, capsys):
    rng = random.Random(2)
    lines, copies = _corpus(rng)
    corpus = write_lines(tmp_path / "corpus.txt", lines)
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "web", "file": corpus}], holdout=0.3)
    keys_file = tmp_path / "near.keys"
    args = argparse.Namespace(manifest=str(manifest), out=str(keys_file), threshold=0.8, ngram=5, permutations=128,
                              bands=16)
    assert run(args) == 0
    assert "15 of 75 documents are near-duplicates" in capsys.readouterr().out
    report = yaml.safe_load((tmp_path / "near.keys.json").read_text())
    assert report["totals"]["copies"] == 15 and report["sources"] == {"web": {"documents": 75, "copies": 15}}
    held = [is_held_out(document_key(t, "t"), 0.3) for t in lines]
    assert report["totals"]["across_holdout"] == sum(held[i] != held[60 + i] for i in range(15)) > 0

    before = load_manifest(manifest)
    raw = yaml.safe_load(manifest.read_text())
    raw["exclude"] = {"file": str(keys_file), "sha256": report["sha256"]}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    after = load_manifest(manifest)
    assert after.fingerprint() != before.fingerprint()  # downstream caches see another corpus
    stats = SourceStats()
    kept = [d.text for d in iter_documents(after.sources[0], split="all", stats=stats)]
    assert stats.excluded == 15 and len(kept) == 60 and not copies & set(kept)
    for split in ("train", "holdout"):  # no document of one part has a twin in the other, or its own
        assert not copies & {d.text for d in iter_documents(after.sources[0], split=split)}
    assert run(args) == 0  # the manifest's own exclusion is ignored: the same list again
    assert keys_file.read_text().count("\n") == 15 + 4
    keys_file.unlink()  # even when the file it names is gone (the manifest would not load otherwise)
    assert run(args) == 0 and keys_file.read_text().count("\n") == 15 + 4


def test_a_bad_exclude_file_is_reported_with_every_problem(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", ["一", "二"])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "s", "file": corpus}], holdout=0.1)
    raw = yaml.safe_load(manifest.read_text())
    keys = tmp_path / "k.keys"
    keys.write_text("# salt: other\n" + "ab" * 16 + "\nnot-a-key\n")
    raw["exclude"] = {"file": str(keys), "sha256": "0" * 64}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(UserError) as info:
        load_manifest(manifest)
    text = str(info.value)
    assert "exclude.sha256: " in text and "the manifest says 0000" in text
    assert f"{keys}:3: expected a 32-hex-digit document key, got 'not-a-key'" in text
    assert "made with holdout salt 'other' but the manifest's is 't'" in text
    raw["exclude"] = {"file": "missing.keys"}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    with pytest.raises(UserError, match=r"exclude.file: .*missing.keys"):
        load_manifest(manifest)


def test_bad_settings_are_refused_together(tmp_path):
    args = argparse.Namespace(manifest="m.yaml", out=str(tmp_path / "k"), threshold=1.5, ngram=0, permutations=100,
                              bands=16)
    with pytest.raises(UserError, match="3 problems"):
        run(args)


def test_sft_leaves_out_the_records_a_manifest_excludes(tmp_path):
    """SFT reads its records itself, so the exclusion must be applied there too (keyed as corpora keys them)."""
    from helpers_sft import ZH_RECORDS, load_tokenizer, tiny_tokenizer, write_json

    from sft.config import SFTData
    from sft.mixture import build_datasets
    from sft.templates import make_spec

    twin = {**ZH_RECORDS[0], "output": ZH_RECORDS[0]["output"] + "。"}  # one character more: a near-duplicate
    records = [*ZH_RECORDS, twin]
    data_file = write_json(tmp_path / "sft.json", records)
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "sft", "file": data_file, "format": "json",
                                                     "text_fields": ["instruction", "input", "output"]}])
    keys_file = tmp_path / "near.keys"
    run(argparse.Namespace(manifest=str(manifest), out=str(keys_file), threshold=0.8, ngram=2, permutations=128,
                           bands=32))
    report = yaml.safe_load((tmp_path / "near.keys.json").read_text())
    assert report["totals"]["copies"] == 1
    raw = yaml.safe_load(manifest.read_text())
    tok = load_tokenizer(tiny_tokenizer(tmp_path / "tok"))
    spec = make_spec("alpaca", tok)
    data = SFTData(manifest=str(manifest), max_seq_length=256, cache_dir=str(tmp_path / "cache"))
    _, _, plain = build_datasets(data, tok, spec, "fp", order_seed=1)
    raw["exclude"] = {"file": str(keys_file), "sha256": report["sha256"]}
    manifest.write_text(yaml.safe_dump(raw, allow_unicode=True))
    _, _, excluded = build_datasets(data, tok, spec, "fp", order_seed=1)
    assert plain.train_samples == len(records) and excluded.train_samples == len(records) - 1
    assert excluded.files["sft"]["excluded_records"] == 1 and excluded.fingerprint != plain.fingerprint
