"""What ``vocab resize`` needs to know about a byte-level BPE extension (merge_report.json "base").

- Spelling: a new token's decomposition is its base tokenization — the extended tokenizer.json
  cut back to the base (vocab ids below ``base_vocab_size`` and special tokens; merges whose
  result is still a token), encoding the new token's text.
- Spelling (``--init spelling``): the calibration text is read by the same base tokenizer, each
  document started by BOS (or EOS where the base has none, as ``pretrain prepare`` does).
- Spare rows: a model may have more embedding rows than its tokenizer has ids (Qwen: 151,936 rows
  for 151,665 ids). New ids from ``base_vocab_size`` on then land on rows that were never trained
  for any token; they are initialised like every other new id, never left as they were.
- The mean row new tokens fall back to leaves out the special tokens' rows (Llama-3's 250
  reserved tokens were never trained).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

def bbpe_speller(folder: Path, base_size: int) -> Callable[[int], list[int]]:
    """id -> ids of its text under the base tokenizer (rebuilt from the folder's tokenizer.json)."""
    from tokenizers import Tokenizer

    from zhllama.tokenizer_files import base_tokenizer_json

    text = (Path(folder) / "tokenizer.json").read_text(encoding="utf-8")
    full = Tokenizer.from_str(text)
    base = Tokenizer.from_str(base_tokenizer_json(text, base_size))

    def spell(i: int) -> list[int]:
        return base.encode(full.decode([i], skip_special_tokens=False), add_special_tokens=False).ids
    return spell


def bbpe_reader(folder: Path, base_size: int,
                special_ids: dict[str, int]) -> tuple[int | None, Callable[[str], list[int]]]:
    """(document-start id, text -> base ids) for ``--init spelling``'s calibration text: the base as
    it reads running text. A document starts with BOS, or EOS where the base has none (Qwen), as
    ``pretrain prepare`` starts documents; None when the tokenizer names neither."""
    from tokenizers import Tokenizer

    from zhllama.tokenizer_files import base_tokenizer_json

    start = special_ids.get("bos_token_id", special_ids.get("eos_token_id"))
    base = Tokenizer.from_str(base_tokenizer_json((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"),
                                                  base_size))
    return start, lambda text: base.encode(text, add_special_tokens=False).ids
