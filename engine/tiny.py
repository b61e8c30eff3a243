"""A tiny LLaMA + SentencePiece tokenizer built from nothing, for tests, benchmarks and CPU demos.

    python -c "from engine.tiny import make_tiny_model; make_tiny_model('outputs/tiny')"

The tokenizer is trained in memory on the given text (no download); the model is random.
"""
from __future__ import annotations

import io
from pathlib import Path

DEFAULT_TEXT = [
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "The quick brown fox jumps over the lazy dog.",
    "LLaMA learns Chinese: 中文词表扩充，继续预训练，指令精调。",
    "大语言模型在中文语料上继续预训练，可以更好地理解中文。",
] * 20


def make_tiny_tokenizer(out: str | Path, texts: list[str] | None = None, vocab_size: int = 512) -> Path:
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts or DEFAULT_TEXT), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    sp_path = out / "tokenizer.model"
    sp_path.write_bytes(buf.getvalue())
    tok = LlamaTokenizer(**LlamaTokenizer.convert_to_native_format(vocab_file=str(sp_path)), add_bos_token=True)
    tok.save_pretrained(out)
    return out


def make_tiny_model(out: str | Path, tokenizer_dir: str | Path | None = None, hidden: int = 32, layers: int = 2,
                    heads: int = 4, seed: int = 0) -> Path:
    """A random LlamaForCausalLM whose vocab equals the tokenizer's, saved with the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else make_tiny_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    if tok_dir != out:
        tok.save_pretrained(out)
        if (tok_dir / "tokenizer.model").is_file():
            (out / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    return out


def make_tiny_moe_model(out: str | Path, tokenizer_dir: str | Path, hidden: int = 32, layers: int = 2, heads: int = 4,
                        experts: int = 8, top_k: int = 2, seed: int = 0) -> Path:
    """A random Qwen3-MoE (routed experts in every layer) whose vocab equals the tokenizer's, saved with it."""
    import torch
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    out, tok_dir = Path(out), Path(tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = Qwen3MoeConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, moe_intermediate_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
        num_experts=experts, num_experts_per_tok=top_k, norm_topk_prob=True, decoder_sparse_step=1,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    Qwen3MoeForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


class TinyPacked:
    """A few documents of DEFAULT_TEXT as packed blocks, the shape of ``engine.packed.PackedDataset``
    (positions restart per document; labels -100 on each block's first token and document starts)."""

    def __init__(self, tok_dir: str, first_doc: int, n_docs: int, block: int = 32, texts: list[str] | None = None):
        import torch
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir)
        ids, pos = [], []
        texts = (texts or DEFAULT_TEXT)[first_doc:first_doc + n_docs]
        for text in texts:
            doc = tok(text).input_ids + [tok.eos_token_id]
            ids += doc
            pos += list(range(len(doc)))
        self.items = []
        for start in range(0, len(ids) - block, block - 1):
            x, p = torch.tensor(ids[start:start + block]), torch.tensor(pos[start:start + block])
            lead = next((i for i in range(1, block) if p[i] == 0), block)
            p[:lead] = torch.arange(lead)  # a block starts at position 0 (its first token is context only)
            y = x.clone()
            y[p == 0] = -100
            self.items.append({"input_ids": x, "position_ids": p, "labels": y})
        self.characters = sum(len(t) + 1 for t in texts)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
