"""evaluation/answer_scorer.py: a reference answer's log-probability and greedy match from one forward."""
from __future__ import annotations

import pytest
import torch

from evaluation.answer_scorer import AnswerRequest, answer_ids, score_answers


@pytest.fixture(scope="module")
def wide_tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.tiny import make_tiny_model
    from helpers_reading import input_dependent as _input_dependent

    folder = _input_dependent(make_tiny_model(tmp_path_factory.mktemp("scorer") / "model"))
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def _direct(model, request: AnswerRequest) -> tuple[float, bool]:
    ids = torch.tensor([request.prompt + request.answer])
    logprobs = model(input_ids=ids).logits[0, len(request.prompt) - 1 : -1].float().log_softmax(-1)
    target = torch.tensor(request.answer)
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def test_a_batch_scores_as_each_answer_alone_and_greedy_means_greedy(wide_tiny):
    model, tokenizer = wide_tiny
    g = torch.Generator().manual_seed(0)
    requests = [AnswerRequest(torch.randint(3, 500, (n,), generator=g).tolist(),
                              torch.randint(3, 500, (m,), generator=g).tolist())
                for n, m in [(5, 1), (40, 7), (17, 3), (60, 12), (8, 2)]]
    # one answer that greedy decoding writes: the model's own continuation
    prompt = requests[1].prompt
    own = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(prompt):]
    requests += [AnswerRequest(prompt, own.tolist()), AnswerRequest(prompt, own.tolist()[:-1] + [(int(own[-1]) + 1) % 500])]
    batched = score_answers(model, requests, batch_size=3, device="cpu")
    for request, (logprob, greedy) in zip(requests, batched):
        expected = _direct(model, request)
        assert logprob == pytest.approx(expected[0], abs=1e-3) and greedy == expected[1]
    assert [g for _, g in batched[-2:]] == [True, False]
    alone = score_answers(model, requests, batch_size=1, device="cpu")
    assert all(a[0] == pytest.approx(b[0], abs=1e-3) and a[1] == b[1] for a, b in zip(batched, alone))


def test_the_answer_is_read_as_it_follows_the_prompt(shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "chinese_llama_alpaca_2")
    for prompt, answer in (("问题：谁写了静夜思？\n答案：", "李白\n"), ("Question: Where?\nAnswer:", " Paris\n")):
        ids = tokenizer(prompt).input_ids
        got = answer_ids(tokenizer, prompt, True, ids, answer)
        assert ids + got == tokenizer(prompt + answer).input_ids and tokenizer.decode(got).strip() == answer.strip()
