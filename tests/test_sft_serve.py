"""`python -m sft serve`: the official openai client against the server on 127.0.0.1."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from helpers_serve import start_server, tiny_export

openai = pytest.importorskip("openai", reason="the openai client is a test dependency (pip install -e '.[test]')")

QUESTION = [{"role": "user", "content": "床前明月光的下一句是什么？"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tiny_export(tmp_path_factory.mktemp("serve") / "model")
    server, url, engine = start_server(folder, max_context=256, max_concurrent=1, default_max_tokens=12)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield client, url, engine
    server.shutdown()
    server.server_close()


def _expected(engine, messages, max_tokens):
    """What greedy generation gives for these messages, computed without the server."""
    from sft.generate import Sampling, generate_ids
    from sft.serve import conversation_from_messages
    from sft.templates import encode_prompt

    prompt = encode_prompt(conversation_from_messages(messages), engine.tokenizer, engine.spec)
    ids = generate_ids(engine.model, engine.tokenizer, [prompt], Sampling(max_new_tokens=max_tokens,
                                                                          repetition_penalty=1.0))[0]
    return prompt, ids, engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_models_lists_the_served_model(served):
    client, _, _ = served
    assert [m.id for m in client.models.list().data] == ["tiny-zh"]


def test_chat_completion_equals_greedy_generation(served):
    client, _, engine = served
    prompt, ids, text = _expected(engine, QUESTION, 8)
    reply = client.chat.completions.create(model="tiny-zh", messages=QUESTION, max_tokens=8, temperature=0)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content == text
    assert reply.usage.prompt_tokens == len(prompt) and reply.usage.completion_tokens == len(ids)
    assert reply.choices[0].finish_reason == ("length" if len(ids) == 8 else "stop")


def test_streamed_chat_equals_the_whole_answer(served):
    client, _, engine = served
    history = QUESTION + [{"role": "assistant", "content": "疑是地上霜。"}, {"role": "user", "content": "再来一句"}]
    _, _, text = _expected(engine, history, 10)
    stream = client.chat.completions.create(model="tiny-zh", messages=history, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text and sum(1 for p in pieces if p) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens <= 10


def test_text_completions_plain_and_streamed(served):
    client, _, _ = served
    whole = client.completions.create(model="tiny-zh", prompt="春眠不觉晓", max_tokens=6)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-zh", prompt="春眠不觉晓", max_tokens=6, stream=True) if c.choices)
    assert whole.choices[0].text == streamed and whole.usage.completion_tokens <= 6
    ids = client.completions.create(model="tiny-zh", prompt=[engine_ids := _ids(served, "春眠不觉晓")], max_tokens=6)
    assert ids.choices[0].text == whole.choices[0].text and ids.usage.prompt_tokens == len(engine_ids)


def _ids(served, text: str) -> list[int]:
    return list(served[2].tokenizer(text)["input_ids"])


def test_bad_requests_get_the_openai_error_shape(served):
    client, url, _ = served
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-zh", messages=[])
    assert "messages" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-zh", messages=[{"role": "user", "content": "长" * 400}])
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-zh", messages=[{"role": "assistant", "content": "hi"}])
    for path, data in (("/v1/chat/completions", b"{not json"), ("/v1/nothing", b"{}"),
                       ("/v1/completions", b'{"prompt": 3}'), ("/v1/chat/completions", b'{"messages": [1]}'),
                       ("/v1/completions", b'{"prompt": [1, 99999999]}'),
                       ("/v1/completions", b'{"prompt": "x", "repetition_penalty": -1}')):
        request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        body = err.value.read().decode()
        assert 400 <= err.value.code < 500 and "Traceback" not in body, (path, body)
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}, body


def test_concurrent_requests_queue_and_none_is_lost(served, monkeypatch):
    client, _, engine = served
    import sft.serve as serve

    active, peak, lock = [0], [0], threading.Lock()
    real = serve.generate_ids

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(serve, "generate_ids", counting)
    questions = [f"第{i}个问题：你好" for i in range(6)]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        messages = [{"role": "user", "content": questions[i]}]
        if i % 2:
            answers[i] = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="tiny-zh", messages=messages, max_tokens=6, stream=True) if c.choices)
        else:
            answers[i] = client.chat.completions.create(model="tiny-zh", messages=messages,
                                                        max_tokens=6).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(answers) == list(range(6))
    assert peak[0] == 1  # max_concurrent=1: the others waited
    for i, q in enumerate(questions):
        assert answers[i] == _expected(engine, [{"role": "user", "content": q}], 6)[2]


def test_sampling_with_a_seed_is_reproducible(served):
    client, _, _ = served
    ask = lambda: client.chat.completions.create(model="tiny-zh", messages=QUESTION, max_tokens=8, temperature=1.5,
                                                 seed=7).choices[0].message.content
    assert ask() == ask()
