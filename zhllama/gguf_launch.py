"""Run llama.cpp's convert_hf_to_gguf.py on a folder whose byte-level BPE base was extended with Chinese.

    python -m zhllama.gguf_launch CONVERTER_TREE MODEL_DIR [the converter's arguments ...]

(``zhllama.gguf.convert`` runs it; nobody needs to call it by hand.)

llama.cpp names a BPE pre-tokenizer (``tokenizer.ggml.pre``: llama-bpe, qwen2, tekken ...) by hashing
the ids the folder's tokenizer gives one fixed check text and looking the hash up in a table of known
models. That text holds Chinese (``我想在apple工作1314151天～``), so a base extended with Chinese tokens
— "我想" is one after most extensions — hashes to something the table does not know, and the converter
stops ("BPE pre-tokenizer was not recognized"), although the pre-tokenizer is the base's, unchanged
(``vocab merge`` never touches it). Only in that case this launcher hashes the ids of the BASE
tokenizer instead — the folder's tokenizer.json cut back to merge_report.json's ``base_vocab_size``
— and takes the name the converter's own table gives it. Everything else is the converter as
shipped; a folder that is not such an extension fails exactly as it would without the launcher.
"""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


class BaseView:
    """What the converter's check needs of a tokenizer (``encode``), as the base tokenized."""

    def __init__(self, tokenizer_json: str, base_size: int):
        from tokenizers import Tokenizer

        from zhllama.tokenizer_files import base_tokenizer_json

        self.tokenizer = Tokenizer.from_str(base_tokenizer_json(tokenizer_json, base_size))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids  # BOS as the folder's post-processor adds it, as HF's encode does


def base_view(model_dir: Path) -> BaseView | None:
    """The base of an extended byte-level BPE folder, or None when the folder is not one."""
    report, tok = model_dir / "merge_report.json", model_dir / "tokenizer.json"
    if not report.is_file() or not tok.is_file():
        return None
    from zhllama.tokenizer_files import is_bbpe_extension

    merge = json.loads(report.read_text(encoding="utf-8"))
    if not is_bbpe_extension(merge):
        return None
    return BaseView(tok.read_text(encoding="utf-8"), int(merge["base_vocab_size"]))


def install(conversion_base) -> None:
    """Wrap ``TextModel.get_vocab_base_pre`` of the converter's module ``conversion.base``."""
    original = conversion_base.TextModel.get_vocab_base_pre

    def identified_by_base(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            view = base_view(Path(self.dir_model))
            if view is None:
                raise
            name = original(self, view)
            conversion_base.logger.warning(f"zhllama: pre-tokenizer {name!r} identified by the base tokenizer "
                                           "(the new Chinese tokens change the check text's ids, not the pre-tokenizer)")
            return name

    conversion_base.TextModel.get_vocab_base_pre = identified_by_base


def main(argv: list[str]) -> None:
    tree, args = Path(argv[0]), argv[1:]
    sys.path[:0] = [str(tree / "gguf-py"), str(tree)]
    import conversion.base

    install(conversion.base)
    script = tree / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *args]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
