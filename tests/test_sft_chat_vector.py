"""`python -m sft chat-vector`: target + ratio x (chat - base), tensor by tensor, on a target with an extended
vocabulary (its new rows untouched), in the target's dtype; the chat model's template; every mismatch refused."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from sft import chat_vector_cli
from zhllama.errors import UserError

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


def _perturbed(folder, out, seed: int, dtype=torch.float32, new_tokens: tuple[str, ...] = ()):
    """A copy of the model in ``folder`` with every weight moved a little (and tokens appended)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    if new_tokens:
        tokenizer.add_tokens(list(new_tokens))
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.05)
    model.to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    from engine.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("chat_vector")
    base = make_tiny_model(root / "base")
    chat = _perturbed(base, root / "chat", 1)
    config = json.loads((chat / "tokenizer_config.json").read_text(encoding="utf-8"))
    (chat / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TEMPLATE}), encoding="utf-8")
    (chat / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9, "do_sample": True}))
    target = _perturbed(base, root / "target", 2, torch.bfloat16, new_tokens=("新词甲", "新词乙", "新词丙"))
    (base / "README.md").write_text("---\nlicense: llama2\n---\n# base\n")  # the card's licence comes from here
    (target / "train_report.json").write_text(json.dumps({  # what a pretraining run's final/ records
        "base_model": str(base), "mode": "full", "step": 10, "global_batch": 8, "settings": {"optim.lr": 1e-4},
        "data": {"stage": "pretrain", "manifests": [{"name": "zh", "sources": [
            {"name": "cmrc", "license": "CC BY-SA 4.0", "language": "zh", "weight": 1.0}]}]}}))
    return root, base, chat, target


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    chat_vector_cli.add_arguments(parser)
    return chat_vector_cli.run(parser.parse_args([*argv, "--no-progress"]))


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def test_the_vector_is_added_to_the_base_rows_in_the_target_dtype(three):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base, chat, target = three
    out = root / "out"
    assert _run("--target", str(target), "--base", str(base), "--chat", str(chat), "--out", str(out),
                "--ratio", "0.8", "--max-shard-size", "100KB") == 0
    got, t, b, c = (_weights(f) for f in (out, target, base, chat))
    assert len(list(out.glob("model-*.safetensors"))) > 1 and set(got) == set(t)
    rows = b["model.embed_tokens.weight"].shape[0]
    for name, tensor in got.items():
        assert tensor.dtype == torch.bfloat16 and tensor.shape == t[name].shape
        want = t[name].float()
        want[: b[name].shape[0]] += 0.8 * (c[name].float() - b[name].float())
        assert torch.equal(tensor, want.to(torch.bfloat16)), name
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # the three new rows: as the target trained them
        assert t[name].shape[0] == rows + 3 and torch.equal(got[name][rows:], t[name][rows:])
        assert not torch.equal(got[name][:rows], t[name][:rows])
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == TEMPLATE and len(tokenizer) == rows + 3
    assert json.loads((out / "generation_config.json").read_text())["temperature"] == 0.6
    AutoModelForCausalLM.from_pretrained(out)  # loads as an ordinary model folder
    report = json.loads((out / "chat_vector_report.json").read_text())
    assert report["ratio"] == 0.8 and report["new_rows_left_as_trained"] == {"model.embed_tokens.weight": 3,
                                                                             "lm_head.weight": 3}
    assert report["chat"]["fingerprint"] and "base's ids verified identical" in report["notes"][0]
    card = (out / "README.md").read_text(encoding="utf-8")  # the target's lineage, then the vector
    assert "license: llama2" in card and "- chat-vector" in card and "cmrc" in card
    made = card.index("1. Continued pretraining: mode `full`, 10 steps")
    assert made < card.index(f"2. Chat vector: `{target}` + 0.8 × (`{chat}` − `{base}`)")


def test_skip_leaves_embeddings_and_head_as_the_target_has_them(three):
    root, base, chat, target = three
    out = root / "skip"
    _run("--target", str(target), "--base", str(base), "--chat", str(chat), "--out", str(out), "--embeddings", "skip")
    got, t = _weights(out), _weights(target)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(got[name], t[name])
    assert not torch.equal(got["model.norm.weight"], t["model.norm.weight"])


def test_models_that_do_not_fit_together_are_refused_before_writing(three, tmp_path):
    from engine.tiny import make_tiny_model

    root, base, chat, target = three
    other = make_tiny_model(tmp_path / "other", hidden=48, heads=4)  # another architecture: no shape matches
    with pytest.raises(UserError) as e:
        _run("--target", str(target), "--base", str(base), "--chat", str(other), "--out", str(tmp_path / "o1"))
    assert "in --base but" in str(e.value) and "a chat model of another base?" in str(e.value)
    shuffled = tmp_path / "shuffled"  # the same shapes, but base ids that mean other tokens
    shuffled.mkdir()
    for f in base.iterdir():
        (shuffled / f.name).write_bytes(f.read_bytes())
    tok = json.loads((shuffled / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (shuffled / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match="2 of the base's .* ids are other tokens there"):
        _run("--target", str(shuffled), "--base", str(base), "--chat", str(chat), "--out", str(tmp_path / "o2"))
    with pytest.raises(UserError, match="--ratio must be a positive number"):
        _run("--target", str(target), "--base", str(base), "--chat", str(chat), "--out", str(tmp_path / "o3"),
             "--ratio", "nan")
    with pytest.raises(UserError, match="already exists"):
        _run("--target", str(target), "--base", str(base), "--chat", str(chat), "--out", str(root))
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
