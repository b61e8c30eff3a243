"""Per-document cleaning steps of a corpus manifest, and character statistics.

Each step is opt-in per source (the ``clean:`` mapping of a manifest source):

- ``nfkc``: Unicode NFKC. Off by default because NFKC folds full-width Chinese punctuation
  (，：（）！？ → ,:()!?), which LLaMA's identity-normalising tokenizer keeps apart.
- ``t2s``: Traditional → Simplified Chinese with OpenCC's ``t2s`` tables (PyPI
  ``opencc-python-reimplemented``; imported only when a source asks for it).
- ``min_chars``: drop documents shorter than this many characters after cleaning.
- ``dedup``: drop exact duplicates (see ``corpora.manifest.iter_documents`` for the key).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Any, Callable

# Han ideographs: CJK Unified (+ Extension A..H), compatibility ideographs. Kana/Hangul and CJK
# punctuation are not counted: "CJK share" here means the share of Chinese characters.
_CJK_RE = re.compile(
    "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U0002f800-\U0002fa1f]"
)


def cjk_count(text: str) -> int:
    """Number of Han ideographs in ``text``."""
    return len(_CJK_RE.findall(text))


# The ranges of _CJK_RE as half-open code point intervals, for a vectorised count (a test checks
# they agree).
_CJK_RANGES = ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00), (0x20000, 0x31350))
CJK_COUNT_CHUNK_CHARS = 1 << 20


def cjk_count_many(texts: list[str]) -> int:
    """Han ideographs in all ``texts``: ``sum(cjk_count(t) for t in texts)``, faster.

    The per-document regex findall of ``cjk_count`` allocates a string per ideograph and cost
    ~15% of prepare's CPU time; only the sum over a source is reported, so count a batch at once.
    """
    if not texts:
        return 0
    import numpy as np  # lazily: the merge imports this module and stays light

    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    found = 0
    for low, high in _CJK_RANGES:
        found += int(np.count_nonzero((codes - np.uint32(low)) < np.uint32(high - low)))  # wraps below low
    return found


def is_cjk(ch: str) -> bool:
    return bool(_CJK_RE.fullmatch(ch))


@dataclasses.dataclass(frozen=True)
class Cleaning:
    """Cleaning steps applied, in this order, to every document of one source."""

    nfkc: bool = False  # Unicode NFKC normalisation (folds full-width punctuation!)
    t2s: bool = False  # Traditional -> Simplified Chinese (OpenCC t2s)
    min_chars: int = 1  # drop documents with fewer characters (after the steps above)
    dedup: bool = False  # drop exact duplicate documents within the source

    UNKNOWN_KEY = "unknown cleaning step"  # wording of zhllama.config's unknown-key problem

    def validate(self) -> list[str]:
        if self.min_chars < 0:
            return [f"min_chars: expected an integer >= 0, got {self.min_chars!r}"]
        return []

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def _t2s_converter() -> Callable[[str], str]:
    try:
        from opencc import OpenCC
    except ImportError as exc:  # pragma: no cover - a declared dependency
        from zhllama.errors import UserError

        raise UserError(
            "clean.t2s needs the OpenCC converter: pip install opencc-python-reimplemented"
        ) from exc
    return OpenCC("t2s").convert


def t2s(text: str) -> str:
    """Traditional -> Simplified Chinese."""
    return _t2s_converter()(text)


def clean_text(text: str, cleaning: Cleaning) -> str | None:
    """Apply ``cleaning`` to one document; ``None`` when it is dropped as too short.

    Surrounding whitespace is always stripped (a txt line's newline is not content).
    Dedup is not done here: it needs state across documents (see ``iter_documents``).
    """
    if cleaning.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cleaning.t2s:
        text = t2s(text)
    text = text.strip()
    if len(text) < max(cleaning.min_chars, 1):
        return None
    return text
