"""python -m vocab resize --init spelling: output rows that give each new piece the base model's
probability of its spelling, checked against a forward pass of the base model done here."""
from __future__ import annotations

import pytest
import torch
from helpers_resize import (  # noqa: F401  (toks is a fixture)
    EMB, ENGLISH, HEAD, _assert_nothing_written, _byte_ids, _make_model, _weights, logprob_rest, toks)
from transformers import AutoModelForCausalLM

from vocab.resize import ResizeConfig, resize_model
from vocab.resize_spelling import constant_direction
from zhllama.errors import UserError


def _calibration(folder) -> tuple[list, list[str], list[str]]:
    """A 'new language' file (English with 中国 in it: the tiny base only knows English) and English."""
    mixed = [f"{line} 中国 {k}" for k, line in enumerate(ENGLISH)]
    (folder / "zh.txt").write_text("\n".join(mixed) + "\n", encoding="utf-8")
    (folder / "en.txt").write_text("\n".join(reversed(ENGLISH)) + "\n", encoding="utf-8")
    return [folder / "zh.txt", folder / "en.txt"], mixed, list(reversed(ENGLISH))


def test_spelling_rows_are_first_piece_plus_logprob_of_the_rest(tmp_path, toks):
    model_dir = _make_model(tmp_path / "m", toks["n"], tied=False, tokenizer=toks["base"])
    calibration, lines, english = _calibration(tmp_path)
    report = resize_model(ResizeConfig(model_dir, toks["merged"], tmp_path / "out", init="spelling",
                                       calibration_text=calibration))
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    old, new = _weights(model_dir), _weights(tmp_path / "out")
    n, sp = toks["n"], toks["sp"]
    # The documented contexts: BOS + the first 8 base tokens of the first 4 calibration lines.
    contexts = [[sp.bos_id()] + sp.encode(line)[:8] for line in lines[:4]]
    space = sp.piece_to_id("\u2581")
    spellings = {n: _byte_ids(sp, "中"), n + 1: _byte_ids(sp, "国"), n + 2: _byte_ids(sp, "中国"),
                 n + 3: [space] + _byte_ids(sp, "中国"), n + 6: sp.encode("thequick")}
    for name in old:  # every base row and every other tensor bit for bit
        assert torch.equal(new[name][: old[name].shape[0]], old[name]), name
    for row, ids in spellings.items():  # input rows: sub-token means, as --init subtoken-mean
        assert torch.equal(new[EMB][row], old[EMB][ids].mean(dim=0))
    # Output rows: w[a1] + c * u with c the base model's log-probability of the rest of the spelling
    # (mean over the contexts) and one shared direction u.
    offsets = {row: new[HEAD][row] - old[HEAD][ids[0]] for row, ids in spellings.items()}
    rests = {row: sum(logprob_rest(base, ctx, ids) for ctx in contexts) / 4 for row, ids in spellings.items()}
    assert all(c < 0 for c in rests.values())
    direction = offsets[n] / rests[n]
    for row in spellings:
        torch.testing.assert_close(offsets[row], rests[row] * direction, rtol=1e-4, atol=1e-5)
    assert report["spelling"]["output_rows"] == len(spellings)
    assert report["rows_per_rule"]["subtoken-mean"] == len(spellings)
    fit = report["spelling"]["bias_direction_fit"]
    # u is fitted on 32 lines of each file (BOS + each line)
    assert fit["states"] == sum(1 + len(sp.encode(line)) for line in lines[:32] + english[:32])
    assert report["inputs"]["calibration_text_sha256"] and report["spelling"]["contexts"] == 4
    # The model loads and scores with its new vocabulary.
    resized = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert resized(input_ids=torch.tensor([[1, n + 2]])).logits.shape[-1] == toks["size"]


def test_constant_direction_recovers_a_planted_bias_coordinate():
    torch.manual_seed(0)
    hidden = torch.randn(500, 8, dtype=torch.float64)
    hidden[:, 3] = 2.0  # every state has the same value on coordinate 3: u = e3 / 2 gives h . u = 1
    direction = constant_direction(hidden, ridge=1e-9)
    torch.testing.assert_close(hidden @ direction, torch.ones(500, dtype=torch.float64), rtol=0, atol=1e-6)
    assert abs(float(direction[3]) - 0.5) < 1e-6


def test_spelling_refuses_tied_models_missing_calibration_and_cuda(tmp_path, toks):
    calibration, _, _ = _calibration(tmp_path)
    tied = _make_model(tmp_path / "tied", toks["n"], tied=True)
    with pytest.raises(UserError, match="ties them; use --init subtoken-mean"):
        resize_model(ResizeConfig(tied, toks["merged"], tmp_path / "out", init="spelling",
                                  calibration_text=calibration))
    _assert_nothing_written(tmp_path, tmp_path / "out")
    untied = _make_model(tmp_path / "untied", toks["n"], tied=False)
    with pytest.raises(UserError, match="needs --calibration-text NEW_LANGUAGE.txt"):
        resize_model(ResizeConfig(untied, toks["merged"], tmp_path / "out", init="spelling"))
    (tmp_path / "short.txt").write_text("too short\n", encoding="utf-8")
    with pytest.raises(UserError, match="short.txt: needs at least 500 tokens"):
        resize_model(ResizeConfig(untied, toks["merged"], tmp_path / "out", init="spelling",
                                  calibration_text=[calibration[0], tmp_path / "short.txt"]))
    with pytest.raises(UserError, match="missing.txt: does not exist"):
        resize_model(ResizeConfig(untied, toks["merged"], tmp_path / "out", init="spelling",
                                  calibration_text=[tmp_path / "missing.txt"]))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: no CUDA device here"):
            resize_model(ResizeConfig(untied, toks["merged"], tmp_path / "out", init="spelling", device="cuda",
                                      calibration_text=calibration))
    _assert_nothing_written(tmp_path, tmp_path / "out")
