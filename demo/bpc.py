"""Bits per character of several models on the same test text (vocab/bpc.py does the scoring).

    python -m demo.bpc --text test.txt --out bpc.json [--limit N] --model base=DIR --model subtoken-mean=DIR ...

Each model folder is scored with its own tokenizer, so a 32k-vocabulary model and a merged one
are compared fairly (bits per character of the same characters). Output: {label: {bpc,
tokens_per_char, characters, tokens, model}}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from zhllama.errors import UserError, run_cli
from zhllama.files import write_json_atomic


def score(model_dir: Path, texts: list[str], block_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vocab.bpc import bits_per_character

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tok):
        raise UserError(f"{model_dir}: {rows} embedding rows but the tokenizer has {len(tok)} tokens")
    result = bits_per_character(model, texts, encode=lambda t: tok(t, add_special_tokens=False)["input_ids"],
                                bos_id=tok.bos_token_id, block_size=block_size)
    return {"bpc": round(result.bpc, 4), "tokens_per_char": round(result.tokens_per_char, 4),
            "characters": result.characters, "tokens": result.tokens, "model": str(model_dir)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.bpc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", required=True, type=Path, help="UTF-8 text, one document per line")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="score only the first N texts")
    args = p.parse_args(argv)
    texts = [line for line in args.text.read_text(encoding="utf-8").splitlines() if line.strip()][: args.limit]
    if not texts:
        raise UserError(f"{args.text}: no text")
    out = {}
    import torch

    with torch.no_grad():
        for item in args.model:
            label, sep, folder = item.partition("=")
            if not sep:
                raise UserError(f"--model {item!r}: expected LABEL=DIR")
            out[label] = score(Path(folder), texts, args.block_size)
            print(f"[bpc] {label}: {out[label]['bpc']:.4f} bits/char "
                  f"({out[label]['tokens_per_char']:.3f} tokens/char) on {len(texts)} texts", flush=True)
    write_json_atomic(args.out, out)
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
