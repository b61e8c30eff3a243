"""Build the demo's tiny "base model": a random LLaMA over the BASE tokenizer, as an HF folder.

    python -m demo.base_model --tokenizer tokenizer.model --out DIR [--hidden 64] [--layers 2] [--heads 4] [--seed 0]

The demo has no pretrained LLaMA (nothing may come from a model hub), so it makes one: a
LlamaForCausalLM from a LlamaConfig whose vocabulary is the base SentencePiece model's, written
with that tokenizer as a Hugging Face folder (tokenizer.model + tokenizer.json built the way
``vocab merge`` builds its folders, so base and merged tokenizers behave alike). A short
pretraining with the base tokenizer (the next stage of the demo) then gives it something for the
vocabulary extension to preserve.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from zhllama.errors import run_cli
from zhllama.files import atomic_output_dir, sha256_file


def write_tokenizer_folder(model_file: Path, out: Path) -> None:
    from vocab.hf_export import write_hf_folder
    from vocab.spm_proto import load_model_proto

    write_hf_folder(load_model_proto(model_file), out)
    shutil.copyfile(model_file, out / "tokenizer.model")


def build(tokenizer_model: Path, out: Path, hidden: int, layers: int, heads: int, seed: int) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with atomic_output_dir(out, overwrite=True) as tmp:
        write_tokenizer_folder(tokenizer_model, tmp)
        tok = AutoTokenizer.from_pretrained(str(tmp))
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=1024, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False, initializer_range=0.02,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
        info = {"tokenizer_model": str(tokenizer_model), "tokenizer_sha256": sha256_file(tokenizer_model),
                "vocab_size": len(tok), "hidden_size": hidden, "layers": layers, "heads": heads,
                "intermediate_size": config.intermediate_size, "seed": seed,
                "parameters": sum(p.numel() for p in model.parameters()),
                "embedding_parameters": model.get_input_embeddings().weight.numel()
                + model.get_output_embeddings().weight.numel()}
        (tmp / "base_model_report.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.base_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, type=Path, help="base SentencePiece tokenizer.model")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    info = build(args.tokenizer, args.out, args.hidden, args.layers, args.heads, args.seed)
    print(f"[base_model] {info['parameters']:,} parameters ({info['embedding_parameters']:,} in embeddings), "
          f"vocab {info['vocab_size']} -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
