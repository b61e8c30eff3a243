"""Template texts exactly as specified, and loss masks with exact label positions."""
from __future__ import annotations

import pytest
from helpers_sft import load_tokenizer, tiny_tokenizer

from sft.cache import encode_all
from sft.data import Conversation, Turn
from sft.templates import IGNORE_INDEX, encode_conversation, encode_many, encode_prompt, make_spec, prompt_text
from zhllama.errors import UserError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def _spec(name, tok=None):
    return make_spec(name, tok)


def test_alpaca_prompt_is_stanford_text_verbatim():
    spec = _spec("alpaca")
    assert prompt_text(spec, 0, Turn("列出三种水果。", None), None) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n列出三种水果。\n\n### Response:")
    assert prompt_text(spec, 0, Turn("翻译成英文。", None, input="你好"), None) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\n翻译成英文。\n\n### Input:\n你好\n\n### Response:")
    # later turns repeat the instruction block only; a system prompt replaces the preamble
    assert prompt_text(spec, 1, Turn("再来一个", None), None) == "### Instruction:\n再来一个\n\n### Response:"
    assert prompt_text(spec, 0, Turn("Q", None), "SYS") == "SYS\n\n### Instruction:\nQ\n\n### Response:"


def test_chinese_alpaca_v1_prompt_text():
    assert prompt_text(_spec("chinese-alpaca"), 0, Turn("翻译", None, input="你好"), None) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n翻译\n你好\n\n### Response: ")


def test_chinese_alpaca_2_prompt_text():
    spec = _spec("chinese-alpaca-2")
    assert prompt_text(spec, 0, Turn("你好", None), None) == (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n你好 [/INST]")
    assert prompt_text(spec, 0, Turn("翻译", None, input="cat"), "自定义") == (
        "[INST] <<SYS>>\n自定义\n<</SYS>>\n\n翻译\ncat [/INST]")
    assert prompt_text(spec, 1, Turn("再说一遍", None), None) == "[INST] 再说一遍 [/INST]"


def _piece(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_single_turn_labels_exact_positions(tok):
    conv = Conversation((Turn("列出三种水果。", "苹果、香蕉、橙子。"),))
    ids, labels = encode_conversation(conv, tok, _spec("alpaca"))
    prompt = [tok.bos_token_id] + _piece(tok, (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n列出三种水果。\n\n### Response:"))
    answer = _piece(tok, "苹果、香蕉、橙子。") + [tok.eos_token_id]
    assert ids == prompt + answer
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == answer
    assert tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]) == "苹果、香蕉、橙子。</s>"


def test_multi_turn_labels_cover_every_answer_and_only_answers(tok):
    conv = Conversation((Turn("你好", "你好！"), Turn("床前明月光", "疑是地上霜。")), system=None)
    ids, labels = encode_conversation(conv, tok, _spec("chinese-alpaca-2"))
    bos, eos = tok.bos_token_id, tok.eos_token_id
    p1 = [bos] + _piece(tok, "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n你好 [/INST]")
    a1 = _piece(tok, "你好！") + [eos]
    p2 = [bos] + _piece(tok, "[INST] 床前明月光 [/INST]")
    a2 = _piece(tok, "疑是地上霜。") + [eos]
    assert ids == p1 + a1 + p2 + a2
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    first, second = len(p1), len(p1) + len(a1) + len(p2)
    assert trained == list(range(first, first + len(a1))) + list(range(second, second + len(a2)))
    assert all(labels[i] == ids[i] for i in trained)


def test_generation_prompt_matches_training_encoding(tok):
    done = Turn("你好", "你好！")
    for name in ("alpaca", "chinese-alpaca", "chinese-alpaca-2"):
        spec = _spec(name)
        full, _ = encode_conversation(Conversation((done, Turn("翻译", "cat", input="猫"))), tok, spec)
        prompt = encode_prompt(Conversation((done, Turn("翻译", None, input="猫"))), tok, spec)
        assert full[: len(prompt)] == prompt, name
        assert full[len(prompt):] == _piece(tok, "cat") + [tok.eos_token_id], name


CHATML = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}"
          "{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_tokenizer_chat_template_trains_on_assistant_spans(tmp_path):
    tok = load_tokenizer(tiny_tokenizer(tmp_path / "tok"))
    with pytest.raises(UserError, match="chat_template"):
        make_spec("tokenizer", tok)
    tok.chat_template = CHATML
    spec = make_spec("tokenizer", tok)
    assert spec.chat_template == CHATML  # saved with the model, so generation renders the same
    conv = Conversation((Turn("你好", "你好！"), Turn("再见", "再见。")))
    ids, labels = encode_conversation(conv, tok, spec)
    trained = tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert trained == "你好！</s>再见。</s>"
    prompt = encode_prompt(Conversation((Turn("你好", "你好！"), Turn("再见", None))), tok, spec)
    assert tok.decode(prompt).endswith("<|assistant|>\n")


PUBLISHED_SPANS = {  # llama.cpp's models/templates file: (system prompt, the trained text of each reply)
    # incremental: the reply's generation prompt and closing text are prefixes of the whole chat
    "meta-llama-Llama-3.2-3B-Instruct": ("简短回答。", ["你好！<|eot_id|>", "再见。<|eot_id|>"]),
    # Qwen3: an empty <think> block before the reply after the last question only
    "Qwen-Qwen3-0.6B": (None, ["你好！<|im_end|>", "<think>\n\n</think>\n\n再见。<|im_end|>\n"]),
    # Mistral-Nemo: the system prompt goes into the last user turn
    "mistralai-Mistral-Nemo-Instruct-2407": ("简短回答。", ["你好！</s>", "再见。</s>"]),
    # R1-distilled: the generation prompt ends with "<think>\n", which no whole chat holds
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("简短回答。", ["你好！<｜end▁of▁sentence｜>", "再见。<｜end▁of▁sentence｜>"]),
}


@pytest.mark.parametrize("stem", PUBLISHED_SPANS)
def test_published_chat_templates_train_on_each_reply(stem, llama_cpp_tree, tmp_path):
    """Replies are found in templates that render a turn by what follows it, and only they (with the token
    that closes them) are trained."""
    tok = load_tokenizer(tiny_tokenizer(tmp_path / "tok"))
    tok.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "[INST]", "[/INST]",
        "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>"]})
    tok.chat_template = (llama_cpp_tree / "models" / "templates" / f"{stem}.jinja").read_text(encoding="utf-8")
    system, want = PUBLISHED_SPANS[stem]
    ids, labels = encode_conversation(Conversation((Turn("问一", "你好！"), Turn("问二", "再见。")), system),
                                      tok, make_spec("tokenizer", tok))
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs, run = runs + [run], []
    runs += [run] if run else []
    assert [tok.decode(r) for r in runs] == [w.replace("▁", " ") for w in want]  # the sentencepiece decoder's space


def test_a_template_that_leaves_out_a_reply_is_refused(tok):
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' or loop.last %}<|{{ m['role'] }}|>"
                         "{{ m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    conv = Conversation((Turn("你好", "你好！"), Turn("再见", "再见。")))
    with pytest.raises(UserError, match="reply 1 of a chat .* left out"):
        encode_conversation(conv, tok, make_spec("tokenizer", tok))
    tok.chat_template = None


def test_truncation_keeps_trainable_tokens_or_drops_and_counts(tok):
    spec = _spec("alpaca")
    short = Conversation((Turn("好", "是。"),))
    long_prompt = Conversation((Turn("春眠不觉晓，处处闻啼鸟。" * 20, "花落知多少。"),))
    long_answer = Conversation((Turn("好", "夜来风雨声。" * 40),))
    limit = len(encode_conversation(short, tok, spec)[0]) + 5  # short fits; the others do not
    samples, stats = encode_all([short, long_prompt, long_answer], tok, spec, max_seq_length=limit)
    assert stats.records == 3 and stats.kept == 2 and stats.dropped_no_trainable_token == 1
    assert stats.truncated == 1
    assert list(samples.records) == [0, 2]  # which source records survived
    for i in range(len(samples)):
        ids, labels = samples.get(i)
        assert len(ids) <= limit and (labels != IGNORE_INDEX).any()


def test_batched_encoding_equals_one_by_one(tok):
    convs = [Conversation((Turn("你好", "你好！"), Turn("床前明月光", "疑是地上霜。", input="续写"))),
             Conversation((Turn("Say hello.", "Hello!"),), system="自定义"),
             Conversation((Turn("你好", "你好！"),))]  # repeated pieces share one tokenization
    for name in ("alpaca", "chinese-alpaca", "chinese-alpaca-2"):
        spec = _spec(name)
        assert list(encode_many(convs, tok, spec, chunk=2)) == [encode_conversation(c, tok, spec) for c in convs]


def test_chinese_alpaca_2_ids_with_the_real_llama_tokenizer(shared_data):
    """Pinned ids: 518 25580 29962 is Llama-2-chat's well-known "[INST]", 3532 14816 29903 6778 "<<SYS>>"."""
    from transformers import LlamaTokenizer

    model = shared_data / "tokenizers" / "llama2c" / "tokenizer.model"
    tok = LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=str(model)), add_bos_token=True)
    conv = Conversation((Turn("Hi", "Hello!"), Turn("Bye", "Bye.")), system="Be brief.")
    ids, labels = encode_conversation(conv, tok, _spec("chinese-alpaca-2"))
    assert ids == [1, 518, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3629, 11473, 29889, 13, 29966, 829, 14816,
                   29903, 6778, 13, 13, 18567, 518, 29914, 25580, 29962, 15043, 29991, 2,
                   1, 518, 25580, 29962, 2648, 29872, 518, 29914, 25580, 29962, 2648, 29872, 29889, 2]
    assert [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX] == [25, 26, 27, 38, 39, 40, 41]
