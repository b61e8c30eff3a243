"""What a bare byte-level BPE rank file does not say about itself: split pattern and special tokens.

A tiktoken rank file holds only ``base64(token) rank`` lines. The regex that cuts text into
pre-tokens and the special tokens (with their ids) live in the code that loads it. We recognise
the files we know by sha256 and take both from the public loader of each, written down here with
where it came from; any other rank file needs ``--pattern`` (and has no special tokens unless
given). Mistral's tekken.json carries its own pattern (``config.pattern``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Llama-3.x: llama-models 0.3.0, llama_models/llama3/tokenizer.py (``pat_str``), Meta's loader of
# llama_models/llama3/tokenizer.model; cl100k's regex with digits in runs of 1..3 (tests check the wheel's text).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen: dashscope 2.0.2, dashscope/tokenizers/qwen_tokenizer.py (``PAT_STR``), which loads
# dashscope/resources/qwen.tiktoken; cl100k's regex with single digits (tests check the wheel's text).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Llama-3.x special tokens, ids 128000..128255, named as Meta's loader names them (the same file;
# 3.2 added <|image|> at 128011, the first id 3.1 left reserved). An HF folder base keeps its own names.
_LLAMA3_NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
                 "<|image|>"]
LLAMA3_SPECIALS = _LLAMA3_NAMED + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))]
# Qwen: SPECIAL_START_ID 151643, then <|endoftext|>, <|im_start|>, <|im_end|>, <|extra_0..204|>.
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
# Tekken files of version v3 list no special tokens; mistral-common 1.13.1
# (mistral_common/tokens/tokenizers/tekken.py) then uses these 20 at ranks 0..19 and fills the
# rest of the ``default_num_special_tokens`` with "<SPECIAL_{i}>".
TEKKEN_DEFAULT_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                           "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                           "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                           "[TOOL_CONTENT]"]
TEKKEN_FILLER = "<SPECIAL_{}>"


@dataclass(frozen=True)
class Profile:
    """A known rank file: its split pattern, special tokens from ``first_special_id`` on, BOS."""

    name: str
    pattern: str
    pattern_source: str
    specials: list[str] = field(default_factory=list)
    first_special_id: int = 0
    bos: str | None = None
    eos: str | None = None


KNOWN_RANK_FILES = {
    "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55": Profile(
        "llama3", LLAMA3_PATTERN, "llama-models==0.3.0 llama_models/llama3/tokenizer.py (pat_str)",
        LLAMA3_SPECIALS, 128000, "<|begin_of_text|>", "<|end_of_text|>"),
    "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186": Profile(
        "qwen", QWEN_PATTERN, "dashscope==2.0.2 dashscope/tokenizers/qwen_tokenizer.py (PAT_STR)",
        QWEN_SPECIALS, 151643, None, "<|endoftext|>"),
}


def tekken_specials(config: dict, listed: list[dict] | None) -> list[str]:
    """The special tokens of a tekken.json, by id 0..num_special-1 (mistral-common's rule)."""
    n = int(config.get("default_num_special_tokens", 0))
    names = [t["token_str"] for t in sorted(listed, key=lambda t: t["rank"])] if listed else list(TEKKEN_DEFAULT_SPECIALS)
    return (names + [TEKKEN_FILLER.format(i) for i in range(len(names), n)])[:n]
