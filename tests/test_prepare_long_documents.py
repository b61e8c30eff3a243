"""Length upsampling (a manifest source's ``long_documents: {min_chars, weight}``): long documents are drawn
``weight`` times, the rest by the source's weight, in `pretrain prepare`'s blocks and in every weighted read."""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import pytest
import yaml
from helpers_prepare import documents_of, make_tokenizer, read_json, split_stream, write_lines, write_manifest

from pretrain import prepare_cli
from pretrain.prepare import PrepareConfig, prepare
from zhllama.errors import UserError

SHORT = [f"{i} 今天天气很好，我们去公园散步吧。" for i in range(12)]
LONG = [f"{i} " + "长江是亚洲第一长河，全长约六千三百公里。" * (6 + i) for i in range(4)]  # >= 120 characters


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _manifest(folder: Path, long_documents: dict | None, weight: float = 1.0) -> Path:
    corpus = write_lines(folder / "corpus.txt", [d for pair in zip(SHORT, LONG + [None] * 8) for d in pair if d])
    path = write_manifest(folder / "manifest.yaml", [{"name": "web", "file": corpus, "weight": weight}])
    if long_documents is not None:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw["sources"][0]["long_documents"] = long_documents
        path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def _train_docs(manifest: Path, tok_dir: Path, out: Path) -> tuple[list[str], dict]:
    from transformers import AutoTokenizer

    result = prepare(PrepareConfig(manifest=str(manifest), tokenizer=str(tok_dir), block_size=64, out=str(out),
                                   progress=False))
    tokens, starts = split_stream(result.part_dir / "train", result.report)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    texts = [tok.decode(list(doc[1:-1])) for doc in documents_of(tokens, starts)]
    return texts, result.report


def test_long_documents_are_drawn_their_weight_times_a_pass_apart(tok_dir, tmp_path):
    manifest = _manifest(tmp_path, {"min_chars": 120, "weight": 3})
    texts, report = _train_docs(manifest, tok_dir, tmp_path / "out")
    counts = collections.Counter(texts)
    assert {counts[t] for t in LONG} == {3} and {counts[t] for t in SHORT} == {1}
    # repeats are a whole pass apart: the second copy of a long document comes after every short one
    assert min(i for i, t in enumerate(texts) if t in SHORT) < texts.index(LONG[0])
    assert [i for i, t in enumerate(texts) if t == LONG[0]][1] > max(i for i, t in enumerate(texts) if t in SHORT)
    long = report["source_stats"]["web"]["long_documents"]
    long_chars, short_chars = sum(map(len, LONG)), sum(map(len, SHORT))
    assert long["documents"] == 4 and long["characters"] == long_chars
    assert long["mix_characters"] == 3 * long_chars + short_chars and long["mix_long_characters"] == 3 * long_chars


def test_a_long_only_mix_and_fractional_weights(tok_dir, tmp_path):
    """weight 0 with long documents at 1 keeps the long ones only; a fractional long weight draws each long
    document 1 or 2 times as every weighted read of the manifest does (corpora.manifest.iter_weighted)."""
    from corpora.manifest import iter_weighted, load_manifest

    only = _manifest(tmp_path, {"min_chars": 120, "weight": 1}, weight=0)
    texts, _ = _train_docs(only, tok_dir, tmp_path / "only")
    assert sorted(texts) == sorted(LONG)
    (tmp_path / "frac").mkdir()
    fractional = _manifest(tmp_path / "frac", {"min_chars": 120, "weight": 1.5})
    texts, _ = _train_docs(fractional, tok_dir, tmp_path / "frac" / "out")
    counts = collections.Counter(texts)
    assert {counts[t] for t in LONG} <= {1, 2} and {counts[t] for t in SHORT} == {1}
    weighted = collections.Counter(doc.text for doc in iter_weighted(load_manifest(fractional)))
    assert weighted == counts


def test_the_setting_is_part_of_the_fingerprint_only_when_given(tok_dir, tmp_path):
    from corpora.manifest import load_manifest

    plain = load_manifest(_manifest(tmp_path, None))
    assert "long_documents" not in plain._normalized["sources"][0]  # older manifests keep their caches
    (tmp_path / "b").mkdir()
    upsampled = load_manifest(_manifest(tmp_path / "b", {"min_chars": 120, "weight": 3}))
    assert upsampled.fingerprint() != plain.fingerprint()


def test_bad_settings_are_refused_all_at_once(tmp_path):
    from corpora.manifest import load_manifest

    with pytest.raises(UserError) as err:
        load_manifest(_manifest(tmp_path, {"min_chars": -5, "weight": -1, "factor": 2}))
    text = str(err.value)
    assert "long_documents.min_chars" in text and "long_documents.weight" in text and "factor" in text


def test_the_command_reports_the_long_share(tok_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    prepare_cli.add_arguments(parser)
    manifest = _manifest(tmp_path, {"min_chars": 120, "weight": 3})
    args = parser.parse_args(["--manifest", str(manifest), "--tokenizer", str(tok_dir), "--block-size", "64",
                              "--out", str(tmp_path / "out"), "--no-progress"])
    assert prepare_cli.run(args) == 0
    share_read = sum(map(len, LONG)) / (sum(map(len, LONG)) + sum(map(len, SHORT)))
    line = next(x for x in capsys.readouterr().out.splitlines() if "long documents" in x)
    assert f"web: 4 long documents (>= 120 characters, weight 3): {share_read:.1%} of its characters read" in line
    part = next((tmp_path / "out").glob("part-*"))
    assert read_json(part / "prepare_report.json")["source_stats"]["web"]["long_documents"]["weight"] == 3


def test_sft_refuses_a_manifest_that_weighs_by_length(tmp_path):
    from sft.config import SFTData
    from sft.mixture import resolve_sources

    with pytest.raises(UserError, match=r"sources \['web'\] set long_documents"):
        resolve_sources(SFTData(manifest=str(_manifest(tmp_path, {"min_chars": 120, "weight": 3}))))


def test_corpora_check_shows_how_much_text_long_documents_hold(tmp_path, capsys):
    """What a min_chars would upsample: the characters in documents of at least 4K/16K/64K characters."""
    from corpora.check_cli import check_manifest, format_report

    book = "长江是亚洲第一长河，全长约六千三百公里。" * 250  # 5,000 characters
    corpus = write_lines(tmp_path / "corpus.txt", SHORT + [book])
    report = check_manifest(str(write_manifest(tmp_path / "m.yaml", [{"name": "web", "file": corpus}])))
    (source,) = report["sources"]
    assert source["characters_in_documents_of_at_least"] == {"4000": len(book), "16000": 0, "64000": 0}
    share = len(book) / (len(book) + sum(map(len, SHORT)))
    assert f"{share:.0%}/0%/0%" in format_report(report)
