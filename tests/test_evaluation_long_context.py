"""`python -m evaluation long-context`: loss by position from one forward, passkey prompts that fill their length."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers_prepare import corpus_lines, write_lines, write_manifest

from evaluation.long_context import (first_number, greedy_answers, loss_by_position, passkey_prompt,
                                     passkey_prompts, passkey_summary, text_windows)
from zhllama.token_losses import token_losses


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("long") / "model")  # 512 positions
    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def zh_tokenizer(shared_data):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "chinese_llama_alpaca_2")


def test_chunked_losses_equal_the_models_own_logits(tiny):
    _, model, _ = tiny
    ids = torch.randint(3, model.config.vocab_size, (2, 301), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=ids).logits[:, :-1].float()
    expected = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    got = token_losses(model, ids, chunk=64)  # 300 positions: 4 whole chunks and a short one
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_one_forward_gives_the_loss_at_every_shorter_length(tiny):
    _, model, tokenizer = tiny
    windows, available = text_windows(tokenizer, corpus_lines(200), 640, 3)
    assert len(windows) == 3 and available == 3
    got = loss_by_position(model, windows, [128, 256, 640], positions=512, batch_size=2)
    for n in (128, 256, 640):  # a forward on only the first n tokens scores them the same (causal)
        alone = torch.cat([token_losses(model, torch.tensor([w[:n]]))[0] for w in windows]).mean()
        assert got["by_length"][str(n)]["loss"] == pytest.approx(float(alone), abs=1e-5)
    stretches = got["by_position"]
    assert [s["tokens"] for s in stretches] == [[1, 127], [128, 255], [256, 639]]
    weighted = sum(s["loss"] * (s["tokens"][1] - s["tokens"][0] + 1) for s in stretches) / 639
    assert weighted == pytest.approx(got["by_length"]["640"]["loss"], abs=1e-6)
    assert [got["by_length"][n]["beyond_positions"] for n in ("128", "256", "640")] == [False, False, True]
    assert [s["beyond_positions"] for s in stretches] == [False, False, True]


def test_windows_join_documents_or_take_whole_ones(tiny):
    _, _, tokenizer = tiny
    texts = corpus_lines(60)
    stream = []
    for t in texts:
        stream += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    joined, available = text_windows(tokenizer, texts, 100, 1000)
    assert available == len(stream) // 100 and sum(joined, []) == stream[: available * 100]
    whole, _ = text_windows(tokenizer, texts, 100, 1000, whole_documents=True)
    long_docs = [t for t in texts if len(tokenizer(t, add_special_tokens=False).input_ids) + 2 >= 100]
    assert 0 < len(whole) == len(long_docs) < len(texts)
    assert whole[0] == ([tokenizer.bos_token_id] + tokenizer(long_docs[0], add_special_tokens=False).input_ids)[:100]
    assert text_windows(tokenizer, texts, 100, 2)[0] == joined[:2]


@pytest.mark.parametrize("language", ["zh", "en"])
def test_passkey_prompts_fill_their_length_with_the_key_at_its_depth(zh_tokenizer, language):
    from evaluation.long_context import PASSKEY_TEXT

    prompts = passkey_prompts(zh_tokenizer, [300, 1000, 2000], [0, 0.5, 1], trials=2, language=language)
    assert len(prompts) == 3 * 3 * 2
    filler = len(zh_tokenizer(PASSKEY_TEXT[language]["filler"], add_special_tokens=False).input_ids)
    for p in prompts:
        assert p.length - filler - 4 < len(p.ids) <= p.length  # as much filler as fits
        assert p.ids[0] == zh_tokenizer.bos_token_id
        text = zh_tokenizer.decode(p.ids, skip_special_tokens=True)
        assert text.count(p.key) == 2 and text.endswith(PASSKEY_TEXT[language]["question"])
        assert abs(p.key_token / len(p.ids) - p.depth) < 0.2 + 120 / p.length  # intro and question around the filler
    by_depth = {p.depth: p.key_token for p in prompts if p.length == 2000 and p.trial == 0}
    assert by_depth[0] < by_depth[0.5] < by_depth[1]
    keys = [p.key for p in prompts]
    assert len(set(keys)) == len(keys) and all(len(k) == 5 and k.isdigit() for k in keys)
    again = passkey_prompts(zh_tokenizer, [1000], [0.5], trials=2, language=language)
    assert [p.key for p in again] == [p.key for p in prompts if p.length == 1000 and p.depth == 0.5]


def test_chat_prompts_are_one_user_turn_of_the_template_and_fill_their_length(zh_tokenizer):
    from evaluation.long_context import PASSKEY_TEXT
    from zhllama.errors import UserError

    with pytest.raises(UserError, match="no chat template"):
        passkey_prompts(zh_tokenizer, [500], [0.5], trials=1, language="zh", chat=True)
    zh_tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                                  "{% if add_generation_prompt %}[assistant] {% endif %}")
    try:
        prompts = passkey_prompts(zh_tokenizer, [500, 1500], [0, 1], trials=1, language="zh", chat=True)
    finally:
        zh_tokenizer.chat_template = None
    for p in prompts:
        text = zh_tokenizer.decode(p.ids)
        assert p.ids.count(zh_tokenizer.bos_token_id) == 1 and p.length - 40 < len(p.ids) <= p.length
        assert "[user] " in text and text.rstrip().endswith(PASSKEY_TEXT["zh"]["ask"] + "\n[assistant]")
        assert text.count(p.key) == 2
    assert prompts[2].key_token < prompts[3].key_token  # depth 0 before depth 1, at 1,500 tokens


def test_a_length_shorter_than_the_bare_prompt_is_refused(zh_tokenizer):
    from zhllama.errors import UserError

    with pytest.raises(UserError, match="without filler already has"):
        passkey_prompt(zh_tokenizer, "zh", "12345", 20, 0.5)


def test_batched_answers_equal_one_at_a_time(tiny):
    _, model, tokenizer = tiny
    prompts = [tokenizer(t).input_ids for t in corpus_lines(6, seed=3)]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    one = greedy_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert greedy_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=4) == one
    assert all(isinstance(a, str) for a in one) and any(one)


def test_the_first_number_of_the_answer_is_the_verdict():
    from evaluation.long_context import PasskeyPrompt

    assert first_number(" 68220. Remember it.") == "68220"
    assert first_number("通行密码是６８２２０。") == "68220"  # full-width digits
    assert first_number("我不知道") is None
    assert first_number("第1个密码是68220") == "1"  # the first number, not any number
    prompts = [PasskeyPrompt(n, d, 0, "68220", [1], 0) for n in (100, 200) for d in (0.0, 1.0)]
    answers = ["68220", "68221", "是68220。", "不知道"]
    summary = passkey_summary(prompts, answers, [0.0, 1.0])
    assert summary["found"] == 0.5
    assert summary["by_length_and_depth"] == {"100": {"0": 1.0, "1": 0.0, "all": 0.5},
                                              "200": {"0": 1.0, "1": 0.0, "all": 0.5}}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluation", "long-context", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_reads_the_model_at_another_scaling_and_marks_lengths_past_its_positions(tiny, tmp_path):
    folder, _, _ = tiny
    corpus = write_lines(tmp_path / "corpus.txt", corpus_lines(400))
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "t", "file": corpus}], holdout=0.3, name="t")
    common = ["--model", str(folder), "--lengths", "256,512,1024", "--set", f"mix={manifest}", "--windows", "2",
              "--trials", "1", "--depths", "0,1", "--language", "en", "--batch-size", "2"]
    plain = _cli(*common, "--out", str(tmp_path / "plain.json"))
    assert plain.returncode == 0, plain.stderr
    scaled = _cli(*common, "--rope-scaling", "{rope_type: linear, factor: 2}", "--out", str(tmp_path / "x2.json"))
    assert scaled.returncode == 0, scaled.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "x2.json"))
    assert (a["positions"], b["positions"]) == (512, 1024)
    assert b["rope_scaling"] == {"rope_type": "linear", "factor": 2}
    assert [r["beyond_positions"] for r in a["loss"]["mix"]["by_length"].values()] == [False, False, True]
    assert not any(r["beyond_positions"] for r in b["loss"]["mix"]["by_length"].values())
    assert a["loss"]["mix"]["by_length"]["256"]["loss"] != b["loss"]["mix"]["by_length"]["256"]["loss"]
    assert len(a["passkey"]["items"]) == 3 * 2 and "1024*" in plain.stdout and "1024*" not in scaled.stdout
    assert [i["key"] for i in a["passkey"]["items"]] == [i["key"] for i in b["passkey"]["items"]]


def test_cli_reports_every_bad_setting_at_once(tiny, tmp_path):
    folder, _, _ = tiny
    bad = _cli("--model", str(folder), "--lengths", "512,256", "--depths", "0,2", "--trials", "0",
               "--rope-scaling", "{rope_type: dynamic, factor: 4}", "--out", str(tmp_path / "x.json"))
    assert bad.returncode != 0 and not (tmp_path / "x.json").exists()
    for expected in ("--lengths '512,256'", "--depths '0,2'", "--trials must be >= 1", "--rope-scaling: rope_type"):
        assert expected in bad.stderr, bad.stderr
    corpus = write_lines(tmp_path / "short.txt", ["短文本。"] * 20)
    manifest = write_manifest(tmp_path / "s.yaml", [{"name": "s", "file": corpus}], holdout=0.5, name="s")
    short = _cli("--model", str(folder), "--lengths", "4096", "--set", f"short={manifest}",
                 "--passkey-lengths", "none", "--out", str(tmp_path / "y.json"))
    assert short.returncode != 0 and "--set short" in short.stderr and "no windows of 4096" in short.stderr
