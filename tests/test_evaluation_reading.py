"""`python -m evaluation reading`: the CMRC 2018 and SQuAD metrics, SQuAD-layout files, prompts, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers_reading import article as _article
from helpers_reading import input_dependent as _input_dependent
from helpers_reading import squad_file as _squad

from evaluation.reading import build_prompts, clean_answer, exemplar_pool
from evaluation.reading_data import read_reading_set
from evaluation.reading_metric import _words, cmrc_exact, cmrc_f1, cmrc_segments, score, squad_exact, squad_f1
from zhllama.errors import UserError

ROOT_ARGS = [sys.executable, "-m", "evaluation", "reading"]


def test_cmrc_f1_comes_from_the_longest_common_run_of_segments():
    # "在1990年" -> 在 / 1990 / 年 against 1990 / 年: run of 2, precision 2/3, recall 1
    assert cmrc_f1("1990年", "在1990年") == pytest.approx(0.8)
    # the same segments out of order share a run of one only (SQuAD's bag of tokens would give 1.0)
    assert cmrc_f1("1990年", "年1990") == pytest.approx(0.5)
    assert cmrc_f1("李白", "杜甫") == 0.0
    # the official list of marks is dropped; a dropped mark does not end a word ("10:30" -> "1030")
    assert cmrc_segments("《红楼梦》，10:30 开始") == ["红", "楼", "梦", "1030", "开", "始"]
    assert cmrc_segments("《红楼梦》", drop_punctuation=False) == ["《", "红", "楼", "梦", "》"]
    assert cmrc_exact("《红楼梦》", "红楼梦。") and not cmrc_exact("红楼梦", "红楼 梦")
    assert cmrc_exact("ω-Force", "ω-force")  # lower case, "-" dropped
    # the best over the reference answers
    assert score(["村雨城", "任天堂游戏谜之村雨城"], "谜之村雨城", "cmrc") == (False, pytest.approx(2 * 0.6 / 1.6 * 1.0))


def test_words_follow_the_treebank_conventions_of_nltk():
    # each expected list is what nltk.word_tokenize(text, preserve_line=True) gives (NLTK 3.9.2)
    assert _words('he said "i cannot go." don\'t (a,b) 1,000 3.5 \'tis') == [
        "he", "said", "``", "i", "can", "not", "go.", "''", "do", "n't", "(", "a", ",", "b", ")", "1,000", "3.5",
        "'t", "is"]
    assert _words("henry a. walsh") == ["henry", "a.", "walsh"]
    assert _words("grenades.\"") == ["grenades", ".", "''"]
    assert _words("60％ a．ｌ．") == ["60％", "a．ｌ．"]
    assert _words("eng'a") == ["eng", "'", "a"]


def test_squad_metric_is_v1_1s():
    assert squad_exact("the Eiffel Tower", "Eiffel Tower.")
    assert squad_f1("Denver Broncos", "the Denver Broncos won") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert squad_f1("x y y", "y") == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))  # bag of tokens, counted
    assert squad_f1("a y y", "y") == pytest.approx(2 * 1 * (1 / 2) / (1 + 1 / 2))  # articles dropped
    assert score(["Paris"], "", "squad") == (False, 0.0)


def test_a_bad_file_reports_every_problem_with_its_place(tmp_path):
    good = _article("a", "李白是唐代诗人。", [("q1", "李白是谁？", "唐代诗人")])
    bad = {"paragraphs": [{"context": "杜甫。", "qas": [
        {"id": "q1", "question": "杜甫是谁？", "answers": [{"text": "杜甫"}]},  # the id again
        {"id": "q3", "question": "", "answers": [{"text": "x"}]},
        {"id": "q4", "question": "?", "answers": []},
        {"id": "q5", "question": "?", "answers": [], "is_impossible": True},  # SQuAD 2.0: left out, counted
    ]}, {"context": "", "qas": []}]}
    with pytest.raises(UserError) as e:
        read_reading_set(_squad(tmp_path / "bad.json", [good, bad, "nonsense"]))
    message = str(e.value)
    for where in ("data[1].paragraphs[0].qas[0].id: 'q1' again (first at data[0].paragraphs[0].qas[0])",
                  "data[1].paragraphs[0].qas[1].question: expected non-empty text",
                  "data[1].paragraphs[0].qas[2].answers: expected a non-empty list",
                  "data[1].paragraphs[1].context: expected non-empty text", "data[2]: expected an object"):
        assert where in message
    ok = read_reading_set(_squad(tmp_path / "ok.json", [good, {"paragraphs": [bad["paragraphs"][0] | {"qas": [
        bad["paragraphs"][0]["qas"][3]]}]}]))
    assert [q.key for q in ok.questions] == ["q1"] and ok.unanswerable == 1 and ok.language == "zh"
    assert ok.questions[0].answer_start == 3


def test_cmrc_prompts_take_exemplars_from_other_articles_and_fit_the_budget(shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "chinese_llama_alpaca_2")
    cmrc = read_reading_set(shared_data / "pretrain" / "cmrc2018_dev.json")
    assert len(cmrc.questions) == 3219 and cmrc.language == "zh"
    pool = exemplar_pool(cmrc)
    article = {q.key: q.article for q in cmrc.questions}
    part = type(cmrc)(cmrc.path, cmrc.questions[:40], 0)
    prompts = build_prompts(tokenizer, part, pool, True, 3, seed=0, budget=4096, chat=False)
    assert all(p.shots == 3 and len({article[k] for k in p.exemplars} | {article[p.question.key]}) == 4
               for p in prompts)  # three articles, none the question's own
    assert prompts == build_prompts(tokenizer, part, pool, True, 3, seed=0, budget=4096, chat=False)
    assert [p.exemplars for p in prompts] != [p.exemplars for p in
                                              build_prompts(tokenizer, part, pool, True, 3, 1, 4096, False)]
    text = tokenizer.decode(prompts[0].ids, skip_special_tokens=True)
    assert text.rstrip().endswith(f"问题：{prompts[0].question.question}\n答案：")
    zero = build_prompts(tokenizer, part, pool, True, 0, 0, 4096, False)
    tight = build_prompts(tokenizer, part, pool, True, 3, 0, max(len(p.ids) for p in zero) + 60, False)
    assert all(p.ids is not None and len(p.ids) <= max(len(z.ids) for z in zero) + 60 for p in tight)
    assert any(p.shots < 3 for p in tight) and any(p.shots > 0 for p in tight)  # exemplars dropped to fit
    none = build_prompts(tokenizer, part, pool, True, 3, 0, min(len(p.ids) for p in zero) - 1, False)
    assert all(p.ids is None for p in none)


def test_a_haystack_hides_the_paragraph_at_each_depth_among_other_articles(shared_data):
    from transformers import AutoTokenizer

    from evaluation.reading_haystack import Haystack

    tokenizer = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "chinese_llama_alpaca_2")
    cmrc = read_reading_set(shared_data / "pretrain" / "cmrc2018_dev.json")
    part = type(cmrc)(cmrc.path, cmrc.questions[::400], 0)
    haystack = Haystack.of(cmrc, 3000, [0, 0.5, 1], tokenizer)
    article_of = {text: article for article, text in haystack.paragraphs}
    prompts = build_prompts(tokenizer, part, exemplar_pool(cmrc), True, 2, 0, 4000, False, haystack)
    assert [p.key for p in prompts[:3]] == [f"{part.questions[0].key}@{d}" for d in ("0", "0.5", "1")]
    largest = max(haystack.sizes.values())
    for q, group in zip(part.questions, [prompts[i : i + 3] for i in range(0, len(prompts), 3)]):
        pieces = [p.passage.split("\n") for p in group]
        assert all(3000 - largest <= len(p.ids) <= 3000 and p.shots == 2 for p in group)
        assert [ps.index(q.context.strip()) for ps in pieces] == [0, round(0.5 * (len(pieces[1]) - 1)), len(pieces[2]) - 1]
        others = [sorted(set(ps) - {q.context.strip()}) for ps in pieces]
        assert others[0] == others[1] == others[2] and len(others[0]) >= 3  # the same haystack at every depth
        assert all(article_of[text] != q.article for text in others[0])
        text = tokenizer.decode(group[1].ids, skip_special_tokens=True)
        assert q.context.strip() in text and text.rstrip().endswith(f"问题：{q.question}\n答案：")


def test_an_answer_is_the_first_line_without_a_repeated_label():
    assert clean_answer("\n 答案：李白\n问题：下一个", "zh") == "李白"
    assert clean_answer(" Answer: Paris\n", "en") == "Paris"


@pytest.fixture(scope="module")
def tiny_reading(tmp_path_factory):
    from engine.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("reading")
    articles = [_article(f"t{i}", context, [(f"a{i}q{j}", q, a) for j, (q, a) in enumerate(qas)])
                for i, (context, qas) in enumerate([
                    ("春眠不觉晓，处处闻啼鸟。", [("什么不觉晓？", "春眠"), ("哪里闻啼鸟？", "处处")]),
                    ("白日依山尽，黄河入海流。", [("什么入海流？", "黄河"), ("白日依什么尽？", "山")]),
                    ("床前明月光，疑是地上霜。", [("床前是什么？", "明月光"), ("疑是什么？", "地上霜")]),
                    ("夜来风雨声，花落知多少。", [("夜来什么声？", "风雨")]),
                ])]
    return _input_dependent(make_tiny_model(root / "model")), _squad(root / "poems.json", articles), root


def _one_at_a_time(model_dir, data) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.long_context import greedy_answers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reading = read_reading_set(data)
    prompts = build_prompts(tokenizer, reading, exemplar_pool(reading), True, 0, 0, 506, False)
    return [greedy_answers(model, tokenizer, [p.ids], 6, stop=["\n"])[0] for p in prompts]


def _reading(model, data, out, *extra):
    return subprocess.run(ROOT_ARGS + ["--model", str(model), "--set", f"poems={data}", "--out", str(out),
                                       "--max-new-tokens", "6", "--no-progress", *extra],
                          capture_output=True, text=True)


def test_the_cli_scores_each_answer_in_its_place_and_compares(tiny_reading):
    model, data, root = tiny_reading
    first = _reading(model, data, root / "r1.json", "--shots", "0", "--batch-size", "3")
    assert first.returncode == 0, first.stderr
    items = json.loads((root / "r1.json").read_text())["sets"]["poems"]["items"]
    assert [i["output"] for i in items] == _one_at_a_time(model, data)  # batches sorted by length, put back
    # make every other question's reference the model's own answer: batched, sorted by length and put
    # back, each must score exactly (a misplaced answer would not)
    doc = json.loads(data.read_text())
    mine = {i["key"]: i["prediction"] for n, i in enumerate(items) if n % 2 == 0 and i["prediction"]}
    assert len(mine) >= 3 and len(set(mine.values())) >= 3
    for article in doc["data"]:
        for qa in article["paragraphs"][0]["qas"]:
            if qa["id"] in mine:
                qa["answers"] = [{"text": mine[qa["id"]]}]
    own = _squad(root / "own.json", doc["data"])
    second = _reading(model, own, root / "r2.json", "--shots", "0", "--batch-size", "3")
    assert second.returncode == 0, second.stderr
    result = json.loads((root / "r2.json").read_text())["sets"]["poems"]
    assert [i["prediction"] for i in result["items"]] == [i["prediction"] for i in items]
    assert {i["key"] for i in result["items"] if i["exact"] and i["f1"] == 1.0} >= set(mine)
    assert result["em"] == pytest.approx(100 * sum(i["exact"] for i in result["items"]) / 7, abs=1e-3)
    # the reference answer read after its prompt: bits per character of answer + line break, all together
    assert all(i["answer_chars"] == len(i["answers"][0]) + 1 and i["answer_bits"] > 0 for i in result["items"])
    assert result["answer_bits_per_char"] == pytest.approx(
        sum(i["answer_bits"] for i in result["items"]) / sum(i["answer_chars"] for i in result["items"]), abs=1e-3)
    assert result["greedy_answer"] == pytest.approx(100 * sum(i["greedy_answer"] for i in result["items"]) / 7)
    one = _reading(model, own, root / "r3.json", "--shots", "0", "--batch-size", "1", "--compare",
                   str(root / "r2.json"))
    assert one.returncode == 0, one.stderr
    compared = json.loads((root / "r3.json").read_text())
    assert [i["output"] for i in compared["sets"]["poems"]["items"]] == [i["output"] for i in result["items"]]
    assert compared["compare"]["sets"]["poems"]["gained"] == [] and "| poems | " in one.stdout
    refused = _reading(model, own, root / "r4.json", "--shots", "1", "--compare", str(root / "r2.json"))
    assert refused.returncode == 2 and "shots was 0, now 1" in refused.stderr
    long = _reading(model, own, root / "r5.json", "--shots", "0", "--haystack-tokens", "150", "--depths", "0,1")
    assert long.returncode == 0, long.stderr
    hay = json.loads((root / "r5.json").read_text())["sets"]["poems"]
    assert sorted(hay["by_depth"]) == ["0", "1"] and hay["by_depth"]["1"]["questions"] == 7
    assert [i["key"] for i in hay["items"][:2]] == ["a0q0@0", "a0q0@1"]
    assert all(100 < i["prompt_tokens"] <= 150 for i in hay["items"]) and "by depth" in long.stdout
    short = _reading(model, own, root / "r6.json", "--shots", "0", "--haystack-tokens", "480", "--depths", "0.5")
    assert short.returncode == 0 and "not 480 (too few other articles)" in short.stdout


def _refused(model, data, out, *extra) -> str:
    """The UserError message of a reading run that must stop before its model loads (in-process: fast)."""
    import argparse

    from evaluation import reading_cli

    parser = argparse.ArgumentParser()
    reading_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(model), "--set", f"poems={data}", "--out", str(out), *extra])
    with pytest.raises(UserError) as e:
        reading_cli.run(args)
    assert not out.exists()
    return str(e.value)


def test_the_cli_refuses_bad_sets_before_loading_the_model(tiny_reading, tmp_path):
    model, data, _ = tiny_reading
    bad = _squad(tmp_path / "bad.json", [{"paragraphs": [{"context": "x", "qas": [{"id": 1, "question": "?"}]}]}])
    out = tmp_path / "r.json"
    got = _refused(model, bad, out, "--set", "poems=missing.json", "--shots", "9")
    for problem in ("--set poems: given twice", "missing.json: not a file", "--shots must be 0..8"):
        assert problem in got
    assert "data[0].paragraphs[0].qas[0].answers: expected a non-empty list" in _refused(model, bad, out)
    assert "no question fits" in _refused(model, data, out, "--max-length", "20")
    assert "--depths '0,2'" in _refused(model, data, out, "--haystack-tokens", "600", "--depths", "0,2")
    assert "--haystack-tokens 600: more than the 448 prompt tokens" in _refused(model, data, out,
                                                                              "--haystack-tokens", "600")
    assert "has no chat template (a base model: leave --chat out)" in _refused(model, data, out, "--chat")
    got = _reading(model, data, out, "--shots", "-1")  # and from the command line: exit status 2, no traceback
    assert got.returncode == 2 and got.stderr.startswith("error: reading settings") and not out.exists()


def test_a_chat_model_is_asked_in_one_user_turn(tiny_reading):
    from transformers import AutoTokenizer

    model, data, _ = tiny_reading
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    reading = read_reading_set(data)
    chat = build_prompts(tokenizer, reading, exemplar_pool(reading), True, 1, 0, 4096, True)
    base = build_prompts(tokenizer, reading, exemplar_pool(reading), True, 1, 0, 4096, False)
    for c, b in zip(chat, base):
        text = tokenizer.decode(c.ids)
        assert text.startswith("<|user|>") and text.endswith("答案：<|assistant|>")
        assert c.exemplars == b.exemplars and c.ids[0] != tokenizer.bos_token_id


def test_cmrc_passages_the_shipped_manifest_trains_on_are_found_and_held_out_ones_are_not(shared_data, repo_root):
    from corpora.manifest import iter_documents, load_manifest
    from evaluation.contamination import ContaminationSettings
    from evaluation.contamination_cli import contamination_report, reading_items

    manifest = load_manifest(repo_root / "corpora_manifests" / "shared_zh_pretrain.yaml")
    source = next(s for s in manifest.sources if s.name == "cmrc2018")
    trained = {d.text.strip() for d in iter_documents(source, split="train")}
    held_out = {d.text.strip() for d in iter_documents(source, split="holdout")}
    items = reading_items("cmrc", str(shared_data / "pretrain" / "cmrc2018_dev.json"))
    report, _ = contamination_report(manifest, items, ContaminationSettings())
    status = {it["key"]: it["status"] for it in report["items"]}
    assert len(items) == 848 and len(trained) > 700 and len(held_out) > 50
    assert all(status.get(it.key) == "contaminated" for it in items if it.fields[0] in trained)
    assert not any(status.get(it.key) == "contaminated" for it in items if it.fields[0] in held_out)
    assert report["results"]["cmrc"]["all"]["contaminated"] == len(trained)


def test_reading_scores_clean_and_contaminated_passages_apart(tiny_reading, tmp_path):
    import argparse

    from helpers_prepare import write_lines, write_manifest

    from evaluation import contamination_cli

    model, data, _ = tiny_reading
    corpus = write_lines(tmp_path / "corpus.txt", ["前言。", "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。", "后记。"])
    manifest = write_manifest(tmp_path / "m.yaml", [{"name": "poems", "file": corpus}], name="m")
    parser = argparse.ArgumentParser()
    contamination_cli.add_arguments(parser)
    keys = tmp_path / "c.keys"
    assert contamination_cli.run(parser.parse_args([str(manifest), "--reading", f"poems={data}", "--out", str(keys),
                                                    "--min-units", "4"])) == 0
    got = _reading(model, data, tmp_path / "r.json", "--shots", "0", "--contamination", f"{keys}.json")
    assert got.returncode == 0, got.stderr
    result = json.loads((tmp_path / "r.json").read_text())["sets"]["poems"]
    marks = {i["key"]: i["contamination"] for i in result["items"]}
    # the corpus holds article 0's passage (and article 3's, in the same document)
    assert marks == {"a0q0": "contaminated", "a0q1": "contaminated", "a1q0": "clean", "a1q1": "clean",
                     "a2q0": "clean", "a2q1": "clean", "a3q0": "contaminated"}
    assert result["contamination"]["clean"]["questions"] == 4 and "by whether the passage" in got.stdout
    clean = [i for i in result["items"] if i["contamination"] == "clean"]
    assert result["contamination"]["clean"]["answer_bits_per_char"] == pytest.approx(
        sum(i["answer_bits"] for i in clean) / sum(i["answer_chars"] for i in clean), abs=1e-3)
    other = _reading(model, data, tmp_path / "r2.json", "--set", f"more={data}", "--contamination", f"{keys}.json")
    assert other.returncode == 2 and "set more was not checked" in other.stderr
    with pytest.raises(UserError) as e:
        contamination_cli.run(parser.parse_args([str(manifest), "--reading", f"poems={data}", "--reading",
                                                 f"poems={tmp_path / 'missing.json'}", "--out", str(keys)]))
    assert "missing.json: not a file" in str(e.value) and "--reading poems: the name is given twice" in str(e.value)


def test_answers_from_a_server_equal_answers_made_here(tmp_path):
    from helpers_serve import start_server, tiny_export

    model = tiny_export(tmp_path / "export")
    poems = _squad(tmp_path / "poems.json", [
        _article("t0", "春眠不觉晓，处处闻啼鸟。", [("q0", "什么不觉晓？", "春眠"), ("q1", "哪里闻啼鸟？", "处处")]),
        _article("t1", "白日依山尽，黄河入海流。", [("q2", "什么入海流？", "黄河")]),
        _article("t2", "床前明月光，疑是地上霜。", [("q3", "床前是什么？", "明月光")])])
    here = _reading(model, poems, tmp_path / "here.json", "--shots", "1", "--batch-size", "2")
    assert here.returncode == 0, here.stderr
    server, url, _ = start_server(model)
    try:
        remote = _reading(model, poems, tmp_path / "remote.json", "--shots", "1", "--server", f"{url}/v1",
                          "--server-model", "tiny-zh", "--workers", "2")
        assert remote.returncode == 0, remote.stderr
        calls = (tmp_path / "remote.json.calls.jsonl").read_text().splitlines()
    finally:
        server.shutdown()
        server.server_close()
    again = _reading(model, poems, tmp_path / "remote.json", "--shots", "1", "--server", f"{url}/v1",
                     "--server-model", "tiny-zh")
    assert again.returncode == 0, again.stderr  # the server is gone: every answer came from the cache
    sets = [json.loads((tmp_path / f"{n}.json").read_text())["sets"]["poems"] for n in ("here", "remote")]
    assert [i["prediction"] for i in sets[0]["items"]] == [i["prediction"] for i in sets[1]["items"]]
    assert any(i["prediction"] for i in sets[0]["items"]) and len(calls) == 4
    assert json.loads((tmp_path / "remote.json").read_text())["server"] == f"{url}/v1"
    assert "answer_bits_per_char" in sets[0] and "answer_bits_per_char" not in sets[1]  # needs the model here
    bad = _reading(model, poems, tmp_path / "x.json", "--server", "localhost:8000", "--api-key-env", "NO_SUCH_VAR")
    assert bad.returncode == 2 and "expected an http:// or https:// address" in bad.stderr
    assert "NO_SUCH_VAR: that environment variable is not set" in bad.stderr


def test_a_set_of_ones_own_in_json_lines(tiny_reading, tmp_path):
    from transformers import AutoTokenizer

    rows = [{"id": "a", "title": "李白", "context": "李白是唐代诗人。他字太白。", "question": "李白是谁？", "answers": ["唐代诗人"]},
            {"id": "b", "title": "李白", "context": "李白是唐代诗人。他字太白。", "question": "李白字什么？",
             "answers": [{"text": "太白", "answer_start": 10}]},
            {"context": "杜甫是唐代诗人。", "question": "杜甫是谁？", "answers": ["唐代诗人"]}]
    good = tmp_path / "own.jsonl"
    good.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    own = read_reading_set(good)
    assert [q.key for q in own.questions] == ["a", "b", "line-3"] and own.language == "zh"
    assert [q.article for q in own.questions] == [0, 0, 1] and own.questions[0].answer_start == 3
    tokenizer = AutoTokenizer.from_pretrained(tiny_reading[0])
    prompts = build_prompts(tokenizer, own, exemplar_pool(own), True, 1, 0, 10_000, False)
    assert [p.exemplars for p in prompts] == [("line-3",), ("line-3",), (prompts[2].exemplars[0],)]
    assert prompts[2].exemplars[0] in ("a", "b")  # never its own article
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "question": "?", "answers": []}\nnot json\n' + json.dumps(rows[0]) + "\n"
                   + json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_reading_set(bad)
    for problem in ("line 1.answers: expected a non-empty list", "line 2: not JSON", "line 4.id: 'a' again"):
        assert problem in str(e.value)


def test_t2s_reads_a_traditional_set_as_the_simplified_one(tiny_reading):
    """DRCD is Traditional; a Simplified model is asked and scored in Simplified with --t2s: the converted
    set gives the very prompts and answers of the Simplified set, and a comparison across the two is refused."""
    from opencc import OpenCC

    from evaluation.reading_data import simplified

    model, data, root = tiny_reading
    traditional = root / "poems_hant.json"
    traditional.write_text(OpenCC("s2t").convert(data.read_text(encoding="utf-8")), encoding="utf-8")
    hant, hans = read_reading_set(traditional), read_reading_set(data)
    assert "夜來風雨聲，花落知多少。" in {q.context for q in hant.questions}
    assert [(q.context, q.question, q.answers, q.answer_start) for q in simplified(hant).questions] == \
        [(q.context, q.question, q.answers, q.answer_start) for q in hans.questions]
    plain = _reading(model, data, root / "t1.json", "--shots", "1")
    converted = _reading(model, traditional, root / "t2.json", "--shots", "1", "--t2s")
    assert plain.returncode == 0 and converted.returncode == 0, converted.stderr
    want, got = (json.loads((root / name).read_text()) for name in ("t1.json", "t2.json"))
    assert got["settings"]["t2s"] is True
    assert [(i["prompt_tokens"], i["output"], i["f1"]) for i in got["sets"]["poems"]["items"]] == \
        [(i["prompt_tokens"], i["output"], i["f1"]) for i in want["sets"]["poems"]["items"]]
    refused = _reading(model, data, root / "t3.json", "--shots", "1", "--compare", str(root / "t2.json"))
    assert refused.returncode == 2 and "t2s was True, now False" in refused.stderr
