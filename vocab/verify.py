"""The five invariants of a merged tokenizer, as functions that return a result dict.

Each check returns ``{"ok": bool, ...numbers..., "examples": [...]}`` so the merge can record it in
merge_report.json and tests can assert on it. They run on any list of lines: the merge's
``--verify`` pass uses the built-in samples below, the tests use every line of ../shared/data.

Whitespace: the HF folder runs sentencepiece's own normalisation ("▁" before the text, every
space -> "▁", no splitting), so HF ids == sentencepiece ids for every text, leading spaces, tabs,
runs of spaces and newlines included, and HF decode gives the text back. Literal special-token
text ("</s>" inside a line) is text to sentencepiece; HF, like llama.cpp with special parsing on,
makes it the special token unless asked not to (``split_special_tokens=True``, what our data
paths use), so the same-ids check compares such lines with it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer

from .spm_proto import WHITESPACE, clone, is_han

_MAX_EXAMPLES = 5
HF_GUARANTEE = ("HF ids == sentencepiece ids for every text (leading/repeated spaces, tabs and newlines "
                "included); literal special-token text stays text with split_special_tokens=True, as in "
                "sentencepiece; HF decode(encode(x)) == x.")

SAMPLE_ENGLISH = [
    "The quick brown fox jumps over the lazy dog in 2016 — twice, at 3:45 p.m.",
    "Wikipedia is a free online encyclopedia, created and edited by volunteers around the world.",
    "  Leading spaces, trailing spaces  and  double  spaces are kept. ",
    "Prices rose 12.5% (from $1,024 to $1,152) between 1999 and 2023; see §4.2.",
    "E-mail: someone@example.com -- visit https://example.org/path?q=1&r=2#frag",
    "Naïve café déjà vu — Ünïcödé accents, Ελληνικά, русский, עברית, العربية.",
]
SAMPLE_CHINESE = [
    "中国科学院的研究人员在2023年发布了新的大语言模型，引起了广泛关注。",
    "“你好，世界！”他说：“今天天气很好。”——这是一个测试（测试）；【注意】《红楼梦》……",
    "全角数字：０１２３４５６７８９，全角字母：ＡＢＣ，半角：ABC 123。",
    "表情符号😀🎉👍🏽和中文混排，还有日文ひらがなカタカナ与韩文한국어。",
    "繁體中文：臺灣的資訊科技產業發達，龍、鬱、靈、體。",
    "数学公式 E=mc² 与 α、β、γ 以及 ① ② ③ 和 〇 一 二。",
    " 行首空格与\t制表符\u3000全角空格。",
    "    \"merge\": 缩进的代码 ,\t\ttabs  and   runs of spaces\n第二行",
    "\t制表符开头",
]


def python_source_lines() -> list[str]:
    """Real Python source: the merge's own files (always present, no network)."""
    lines: list[str] = []
    here = Path(__file__).parent
    for path in sorted(here.glob("merge*.py")) + [here / "spm_proto.py", here / "hf_export.py", here / "verify.py"]:
        lines += path.read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line]


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def text_lines(files: Sequence[Path]) -> list[str]:
    """Every non-empty line of plain-text files and of every string in JSON / JSON-Lines files."""
    out: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix != ".json":
            out += text.split("\n")
            continue
        try:
            objects = [json.loads(text)]
        except json.JSONDecodeError:  # JSON Lines
            objects = [json.loads(line) for line in text.splitlines() if line.strip()]
        for string in _strings(objects):
            out += string.split("\n")
    return [line for line in out if line]


def shared_text_files(data_dir: Path) -> list[Path]:
    """All text of ../shared/data: pretrain/*.txt and every pretrain/sft JSON file."""
    return sorted(data_dir.glob("pretrain/*.txt")) + sorted(data_dir.glob("pretrain/*.json")) + sorted(
        data_dir.glob("sft/*.json"))


def has_han(text: str) -> bool:
    return any(is_han(c) for c in text)


class Backends:
    """sentencepiece (with and without the dummy prefix) and the HF tokenizers object of a folder."""

    def __init__(self, proto: pb.ModelProto, hf: Tokenizer | None):
        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        no_prefix = clone(proto)
        no_prefix.normalizer_spec.add_dummy_prefix = False
        self.sp_no_prefix = spm.SentencePieceProcessor(model_proto=no_prefix.SerializeToString())
        self.hf = hf
        self._cache: dict[tuple, list[list[int]]] = {}  # checks re-encode the same lines

    def _cached(self, kind: str, lines: Sequence[str], encode) -> list[list[int]]:
        key = (kind, len(lines), hash(tuple(lines)))
        if key not in self._cache:
            self._cache[key] = encode(list(lines))
        return self._cache[key]

    def sp_ids(self, lines: Sequence[str]) -> list[list[int]]:
        return self._cached("sp", lines, self.sp.encode)

    def hf_ids(self, lines: Sequence[str], special_text_as_text: bool = False) -> list[list[int]]:
        """HF ids without BOS. ``special_text_as_text``: literal "<s>" in the text stays text, as
        in sentencepiece (transformers' ``split_special_tokens=True``); by default HF, like every
        HF Llama tokenizer, turns it into the special token."""
        def encode(batch: list[str]) -> list[list[int]]:
            self.hf.encode_special_tokens = special_text_as_text
            try:
                return [e.ids for e in self.hf.encode_batch(batch, add_special_tokens=False)]
            finally:
                self.hf.encode_special_tokens = False

        return self._cached(f"hf{special_text_as_text}", lines, encode)

    def special_texts(self) -> list[str]:
        return [t.content for t in self.hf.get_added_tokens_decoder().values() if t.special]

    def hf_reference_ids(self, lines: Sequence[str]) -> list[list[int]]:
        """What the HF tokenizer is guaranteed to give: sentencepiece's ids."""
        return self.sp_ids(lines)


def _result(ok: bool, examples: list, **numbers: Any) -> dict[str, Any]:
    return {"ok": ok, **numbers, "examples": examples[:_MAX_EXAMPLES]}


def check_base_preserved(base: pb.ModelProto, merged: pb.ModelProto) -> dict[str, Any]:
    """Invariant 1: pieces 0..N-1 identical (string, score, type); no duplicate piece strings."""
    n = len(base.pieces)
    changed = [i for i in range(n) if i >= len(merged.pieces) or (
        base.pieces[i].piece, base.pieces[i].score, base.pieces[i].type) != (
        merged.pieces[i].piece, merged.pieces[i].score, merged.pieces[i].type)]
    seen: set[str] = set()
    duplicates = [p.piece for p in merged.pieces if p.piece in seen or seen.add(p.piece)]
    return _result(not changed and not duplicates, [f"id {i} changed" for i in changed] + duplicates,
                   base_pieces=n, changed=len(changed), duplicates=len(duplicates))


def check_unchanged(base: Backends, merged: Backends, lines: Sequence[str]) -> dict[str, Any]:
    """Invariant 2: these (non-Chinese) lines give the same ids as the base, in both backends."""
    differ = [line for line, a, b in zip(lines, base.sp_ids(lines), merged.sp_ids(lines)) if a != b]
    if merged.hf is not None and base.hf is not None:
        pairs = zip(lines, base.hf_ids(lines, True), merged.hf_ids(lines, True))
        differ += [line for line, a, b in pairs if a != b]
    differ = list(dict.fromkeys(differ))
    return _result(not differ, differ, lines=len(lines), lines_changed=len(differ))


def check_roundtrip(merged: Backends, lines: Sequence[str]) -> dict[str, Any]:
    """Invariant 3: sentencepiece decode(encode(x)) == x; HF too.

    Text holding "▁" (U+2581) itself cannot round-trip in any LLaMA tokenizer, the base included:
    sentencepiece writes spaces as "▁" and decodes every "▁" as a space. Such lines are counted
    and left out.
    """
    excluded = sum(1 for x in lines if WHITESPACE in x)
    lines = [x for x in lines if WHITESPACE not in x]
    bad = [x for x, y in zip(lines, merged.sp.decode(merged.sp_ids(lines))) if x != y]
    hf_bad = []
    if merged.hf is not None:
        decoded = merged.hf.decode_batch(merged.hf_ids(lines, True), skip_special_tokens=False)
        hf_bad = [x for x, y in zip(lines, decoded) if x != y]
    return _result(not bad and not hf_bad, bad + hf_bad, lines=len(lines),
                   excluded_lines_with_u2581=excluded, sentencepiece_failures=len(bad), hf_failures=len(hf_bad))


def check_same_ids(merged: Backends, lines: Sequence[str]) -> dict[str, Any]:
    """Invariant 4: HF ids == sentencepiece ids.

    Lines holding a special token's text (e.g. "</s>") are compared with that text kept as text
    (``split_special_tokens=True``): by default HF maps it to the special token, sentencepiece never.
    """
    specials = merged.special_texts()
    has_special = [any(s in line for s in specials) for line in lines]
    ref, got = merged.hf_reference_ids(lines), merged.hf_ids(lines)
    with_special = [line for line, flag in zip(lines, has_special) if flag]
    as_text = iter(merged.hf_ids(with_special, special_text_as_text=True))
    differ = [line for line, flag, a, b in zip(lines, has_special, ref, got) if a != (next(as_text) if flag else b)]
    return _result(not differ, differ, lines=len(lines), lines_differ=len(differ),
                   leading_space_lines=sum(1 for line in lines if line.startswith(" ")),
                   lines_with_special_token_text=sum(has_special))


def unreachable_pieces(merged: Backends, ids: Sequence[int], pieces: Sequence[str] | None = None
                       ) -> dict[int, list[str]]:
    """Pieces whose own text does not encode to that one piece; id -> what sentencepiece gives.

    Encoded without the dummy prefix so a piece without a leading "▁" is tested as itself.
    ``pieces`` (the strings of ``ids``) may be given to skip reading the protobuf.
    """
    pieces = [merged.proto.pieces[i].piece for i in ids] if pieces is None else pieces
    encoded = merged.sp_no_prefix.encode([p.replace(WHITESPACE, " ") for p in pieces], out_type=str)
    bad = {i: got for i, piece, got in zip(ids, pieces, encoded) if got != [piece]}
    if merged.hf is not None:
        model = merged.hf.model
        for i, piece in zip(ids, pieces):
            got = [t.value for t in model.tokenize(piece)]
            if got != [piece]:
                bad.setdefault(i, got)
    return bad


def check_reachable(merged: Backends, added_ids: Sequence[int]) -> dict[str, Any]:
    """Invariant 5: every added piece is produced by encoding its own text (both backends)."""
    bad = unreachable_pieces(merged, added_ids)
    examples = [f"{merged.proto.pieces[i].piece} -> {got}" for i, got in list(bad.items())[:_MAX_EXAMPLES]]
    return _result(not bad, examples, added=len(added_ids), unreachable=len(bad))


def run_checks(base: pb.ModelProto, merged: pb.ModelProto, hf_json: Path | None, added_ids: Sequence[int],
               english: Sequence[str], everything: Sequence[str]) -> dict[str, dict[str, Any]]:
    """All five invariants; ``english`` must contain no Han characters (it is checked)."""
    base_hf = merged_hf = None
    if hf_json is not None:
        from .hf_export import build_backend

        base_hf = build_backend(base, add_bos=False)
        merged_hf = Tokenizer.from_file(str(hf_json))
    base_b, merged_b = Backends(base, base_hf), Backends(merged, merged_hf)
    non_chinese = [line for line in english if not has_han(line)]
    return {
        "1_base_pieces_preserved": check_base_preserved(base, merged),
        "2_non_chinese_unchanged": check_unchanged(base_b, merged_b, non_chinese),
        "3_roundtrip": check_roundtrip(merged_b, everything),
        "4_sentencepiece_equals_hf": check_same_ids(merged_b, everything),
        "5_added_pieces_reachable": check_reachable(merged_b, added_ids),
    }
