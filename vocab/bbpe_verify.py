"""The six guarantees of an extended byte-level BPE tokenizer, as functions returning result dicts.

Each check returns ``{"ok": bool, ...numbers..., "examples": [...]}``; ``--verify`` runs them on
built-in samples (vocab.verify's English and Chinese plus the multilingual lines below and our
own Python source), the tests on all text of ../shared/data and on random Unicode (hypothesis).

Round trip: byte-level BPE covers every byte, so decode(encode(x)) == x for any string — unless
the base normalizes (Qwen2's tokenizer.json has NFC). Then the guarantee is the base's:
decode(encode(x)) == normalize(x) wherever the base round-trips to that, counted separately.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from tokenizers import Tokenizer

from .bbpe_base import ByteBPEBase, from_bytelevel
from .verify import SAMPLE_CHINESE, SAMPLE_ENGLISH, python_source_lines

_MAX_EXAMPLES = 5
SAMPLE_MULTILINGUAL = [
    "Ça va très bien, merci ! Größe, Straße, naïve, œuvre, İstanbul.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "ひらがなとカタカナだけのぶん。コンピューター、ラーメン。",
    "한국어 문장입니다. 안녕하세요, 세계!",
    "Emoji 😀🎉👍🏽👨‍👩‍👧 and flags 🇨🇳🇺🇸, math ∑∫√∞ ≠ ≤ ≥.",
    "ελληνικά: Καλημέρα κόσμε; עברית: שלום עולם; العربية: مرحبا بالعالم",
    "Tab\tseparated\tfields\r\nand CRLF; trailing spaces   ",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment",
]


def _result(ok: bool, examples: list, **numbers: Any) -> dict[str, Any]:
    return {"ok": ok, **numbers, "examples": examples[:_MAX_EXAMPLES]}


def ids_of(tok: Tokenizer, lines: Sequence[str]) -> list[list[int]]:
    """Ids without BOS, special-token text kept as text (as the rank file encoders see it)."""
    tok.encode_special_tokens = True
    try:
        return [e.ids for e in tok.encode_batch(list(lines), add_special_tokens=False)]
    finally:
        tok.encode_special_tokens = False


def check_base_preserved(base: ByteBPEBase, new_tok: Tokenizer, n_new: int) -> dict[str, Any]:
    """1: every base token and special token keeps its id and bytes; new ids follow the last one."""
    changed = []
    for i, data in base.tokens.items():
        got = new_tok.id_to_token(i)
        if got is None or from_bytelevel(got) != data:
            changed.append(f"id {i}")
    for i, content in base.specials.items():
        if new_tok.id_to_token(i) != content or new_tok.token_to_id(content) != i:
            changed.append(f"special {content} (id {i})")
    new_ids = [i for i in range(base.next_id, base.next_id + n_new) if new_tok.id_to_token(i) is not None]
    size = new_tok.get_vocab_size(with_added_tokens=True)
    return _result(not changed and len(new_ids) == n_new, changed, base_tokens=len(base.tokens),
                   special_tokens=len(base.specials), first_new_id=base.next_id, new_tokens=len(new_ids),
                   vocab_size=size)


def check_unchanged(base_ids: list[list[int]], new_ids: list[list[int]], lines: Sequence[str]) -> dict[str, Any]:
    """2: lines without allowed (Han) text tokenize exactly as with the base."""
    differ = [x for x, a, b in zip(lines, base_ids, new_ids) if a != b]
    return _result(not differ, differ, lines=len(lines), lines_changed=len(differ))


def check_not_longer(base_ids: list[list[int]], new_ids: list[list[int]], lines: Sequence[str]) -> dict[str, Any]:
    """3: len(new(x)) <= len(base(x)) for every line."""
    longer = [x for x, a, b in zip(lines, base_ids, new_ids) if len(b) > len(a)]
    base_total, new_total = sum(map(len, base_ids)), sum(map(len, new_ids))
    return _result(not longer, longer, lines=len(lines), lines_longer=len(longer),
                   lines_shorter=sum(len(b) < len(a) for a, b in zip(base_ids, new_ids)),
                   base_tokens=base_total, new_tokens=new_total)


def check_roundtrip(base_tok: Tokenizer, new_tok: Tokenizer, new_ids: list[list[int]],
                    lines: Sequence[str]) -> dict[str, Any]:
    """4: decode(encode(x)) == x byte for byte (or == the base's own result where it normalizes)."""
    decoded = new_tok.decode_batch(new_ids, skip_special_tokens=False)
    bad, normalized = [], 0
    for x, y in zip(lines, decoded):
        if y == x:
            continue
        if base_tok.decode(ids_of(base_tok, [x])[0], skip_special_tokens=False) == y:
            normalized += 1  # the base gives the same (normalized) text back
        else:
            bad.append(x)
    return _result(not bad, bad, lines=len(lines), failures=len(bad), base_normalizes=normalized)


def check_same_ids(new_ids: list[list[int]], encode: Callable[[str], list[int]] | None,
                   lines: Sequence[str]) -> dict[str, Any]:
    """5: the HF folder and the original-format file give identical ids."""
    if encode is None:
        return {"ok": True, "skipped": "no original-format file, or tiktoken is not installed"}
    differ = [x for x, ids in zip(lines, new_ids) if encode(x) != ids]
    return _result(not differ, differ, lines=len(lines), lines_differ=len(differ))


def check_reachable(new_tok: Tokenizer, new: list[bytes], first_id: int) -> dict[str, Any]:
    """6: each added token's own text encodes to exactly that token."""
    texts = [t.decode("utf-8") for t in new]
    got = new_tok.encode_batch(texts, add_special_tokens=False)
    bad = [f"{t} -> {e.ids}" for k, (t, e) in enumerate(zip(texts, got)) if e.ids != [first_id + k]]
    return _result(not bad, bad, added=len(new), unreachable=len(bad))


def run_checks(base: ByteBPEBase, base_tok: Tokenizer, new_tok: Tokenizer, new: list[bytes],
               non_han: Sequence[str], everything: Sequence[str], has_allowed: Callable[[str], bool],
               original_encode: Callable[[str], list[int]] | None) -> dict[str, dict[str, Any]]:
    """All six guarantees; ``non_han`` lines holding allowed characters are left out of check 2."""
    plain = [x for x in non_han if not has_allowed(x)]
    lines = list(dict.fromkeys(list(everything) + plain))
    base_ids, new_ids = ids_of(base_tok, lines), ids_of(new_tok, lines)
    index = {x: k for k, x in enumerate(lines)}
    return {
        "1_base_ids_preserved": check_base_preserved(base, new_tok, len(new)),
        "2_non_han_unchanged": check_unchanged([base_ids[index[x]] for x in plain],
                                               [new_ids[index[x]] for x in plain], plain),
        "3_never_longer": check_not_longer(base_ids, new_ids, lines),
        "4_roundtrip": check_roundtrip(base_tok, new_tok, new_ids, lines),
        "5_hf_equals_original": check_same_ids(new_ids, original_encode, lines),
        "6_added_reachable": check_reachable(new_tok, new, base.next_id),
    }


def sample_lines() -> tuple[list[str], list[str]]:
    """(non-Han lines, all lines) of the built-in samples."""
    non_han = SAMPLE_ENGLISH + SAMPLE_MULTILINGUAL + python_source_lines() + [
        line for p in sorted(Path(__file__).parent.glob("bbpe_*.py")) for line in p.read_text("utf-8").split("\n")]
    return non_han, non_han + SAMPLE_CHINESE
