"""Tokenize a manifest once into content-keyed, memory-mappable token shards packed by document.

    cfg = PrepareConfig(manifest="m.yaml", tokenizer="tok/", block_size=1024, out="data/pt")
    result = prepare(cfg)        # result.status: "prepared" or "up-to-date"

What goes in. Training documents are the manifest's weighted mix (``corpora.manifest.copies``: a
source of weight w contributes every document floor(w) times plus once more with probability
w - floor(w), repeats a whole pass apart; weight 0 leaves it out). The validation split is the
manifest's ``holdout`` slice (held out by document key, so no phase trained on it and duplicates
never straddle train and validation), every held-out document once, unweighted, for sources of
weight > 0. A manifest without a holdout gets an empty validation split (a warning says so).

The cache key is sha256 over: the manifest fingerprint (its content and every input file's
sha256), the sha256 of every tokenizer file (they decide the ids, the special tokens and the
token dtype), block size, --shard count, seed, the undecodable-bytes policy, tokens per file and
the format version. ``--num-proc`` is not in it: the output is the same for any number of
processes (tested). Library versions are recorded in the report, not keyed.

Re-running with the same key is a no-op that says so. A part already there with another key is
refused with what changed, unless ``--overwrite``; then it is replaced (atomically: a killed run
leaves only a hidden ``.partial`` folder, never a part with a report).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.packed import FORMAT, REPORT, SPLITS, part_name, read_prepare_report
from zhllama.errors import UserError, raise_if_problems
from zhllama.files import atomic_output_dir, sha256_file, sha256_json, write_json_atomic
from zhllama.locks import group_lock, output_lock
from zhllama.tokenizer_files import TOKENIZER_FILES, tokenizer_fingerprint

from .prepare_guard import check_out, check_sources_unchanged, remove_stale_partials, source_stats
from .shards import SplitWriter


@dataclasses.dataclass
class PrepareConfig:
    manifest: str  # corpus manifest (corpora/manifest.py format)
    tokenizer: str  # Hugging Face tokenizer folder (a fast tokenizer: tokenizer.json)
    block_size: int  # tokens per training block
    out: str  # output folder; parts go to OUT/part-i-of-n
    shard: tuple[int, int] = (0, 1)  # prepare the i-th of n disjoint parts
    num_proc: int = 1  # tokenizer processes (does not change the output)
    seed: int = 0  # decides fractional sampling weights
    on_decode_error: str | None = None  # fail | skip; None: the manifest's setting
    file_tokens: int = 1 << 28  # tokens per token file (1 GiB of uint32)
    overwrite: bool = False  # replace parts prepared with another cache key
    batch_chars: int = 1 << 18  # characters per tokenizer batch (small enough that no worker idles long at the end)
    progress: bool = True  # tqdm bar on stderr

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.block_size, int) or self.block_size < 2:
            problems.append(f"block_size: expected an integer >= 2, got {self.block_size!r}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            problems.append(f"shard: expected i/n with 0 <= i < n, got {i}/{n}")
        if self.num_proc < 1:
            problems.append(f"num_proc: expected >= 1, got {self.num_proc}")
        if self.file_tokens < 1:
            problems.append(f"file_tokens: expected >= 1, got {self.file_tokens}")
        if self.on_decode_error not in (None, "fail", "skip"):
            problems.append(f"on_decode_error: expected fail or skip, got {self.on_decode_error!r}")
        return problems


@dataclasses.dataclass
class PrepareResult:
    status: str  # "prepared" | "up-to-date"
    part_dir: Path
    report: dict[str, Any]


def parse_shard(text: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """'i/n' -> (i, n); 'slurm' -> this task of a Slurm job array (one part per array task)."""
    if text == "slurm":
        env = os.environ if env is None else env
        try:
            task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return task, int(env["SLURM_ARRAY_TASK_COUNT"])
        except (KeyError, ValueError):
            raise UserError("--shard slurm: needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                            "(run it inside `sbatch --array=0-N`)") from None
    i, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(i), int(n)
    except ValueError:
        raise UserError(f"--shard: expected i/n (e.g. 0/4) or slurm, got {text!r}") from None


@dataclasses.dataclass
class TokenizerInfo:
    backend_json: str
    start_id: int
    eos_id: int
    pad_id: int
    vocab_size: int
    dtype: str


def tokenizer_files(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file of a tokenizer folder that decides ids (part of the cache key)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"tokenizer folder {folder} " + ("is a file, expected a folder" if folder.exists() else "does not exist"))
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face tokenizer folder (no tokenizer.json or tokenizer_config.json); "
                        "export one first (python -m vocab merge writes one)")
    return {name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}


def load_tokenizer_info(folder: str | os.PathLike) -> TokenizerInfo:
    """Load a HF fast tokenizer folder; check it can mark document ends."""
    tokenizer_files(folder)
    plain = _plain_llama_info(Path(folder))
    if plain is not None:
        return plain
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for unreadable folders
        raise UserError(f"{folder}: cannot load the tokenizer: {exc}") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise UserError(f"{folder}: needs a fast (tokenizers-backed) tokenizer with a tokenizer.json")
    return _info(folder, tok.backend_tokenizer.to_str(), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok))


def _info(folder: Any, backend_json: str, bos: int | None, eos: int | None, pad: int | None,
          size: int) -> TokenizerInfo:
    if eos is None:
        raise UserError(f"{folder}: the tokenizer has no EOS token (eos_token in tokenizer_config.json); "
                        "documents need an end marker so packing can separate them")
    # START marks a document's beginning: BOS when the tokenizer has one (LLaMA), else EOS.
    start = bos if bos is not None else eos
    return TokenizerInfo(backend_json, start, eos, pad if pad is not None else eos, size,
                         "uint16" if size <= 1 << 16 else "uint32")


# What transformers 5's LlamaTokenizer.__init__ builds (models/llama/tokenization_llama.py).
_LLAMA_BPE = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False}
_LLAMA_SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None}


def _plain_llama_info(folder: Path) -> TokenizerInfo | None:
    """The ids ``AutoTokenizer.from_pretrained(folder)`` gives, read without transformers, or None.

    Importing transformers' tokenizers cost ~1.5 CPU-s and AutoTokenizer ~3 more (it imports
    torch): most of a small prepare's time. For a folder that ``save_pretrained`` of transformers 5's
    LlamaTokenizer writes (tokenizer_class LlamaTokenizer, no model config.json or remote code,
    tokenizer.json holding exactly the normalizer, pre-tokenizer and BPE settings that
    LlamaTokenizer rebuilds, every special token already in it) AutoTokenizer loads LlamaTokenizer,
    which keeps tokenizer.json's vocab, merges and added tokens: the ids are tokenizer.json's. A
    test checks the two agree on real data. Any other folder returns None (AutoTokenizer decides).
    """
    import json

    if (folder / "config.json").exists() or (folder / "special_tokens_map.json").exists():
        return None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        backend = json.loads(text)
    except (OSError, ValueError):
        return None  # let AutoTokenizer report what is wrong
    if not isinstance(config, dict) or config.get("tokenizer_class") not in ("LlamaTokenizer", "LlamaTokenizerFast"):
        return None
    if "auto_map" in config or "added_tokens_decoder" in config or config.get("additional_special_tokens"):
        return None
    add_prefix_space, legacy = config.get("add_prefix_space"), config.get("legacy", False)
    scheme = "never" if add_prefix_space is False else ("always" if legacy else "first")
    model = backend.get("model") or {}
    if (backend.get("normalizer") is not None
            or backend.get("pre_tokenizer") != {"type": "Metaspace", "replacement": "\u2581",
                                                "prepend_scheme": scheme, "split": False}
            or {k: model.get(k) for k in _LLAMA_BPE} != _LLAMA_BPE):
        return None
    added = {t["content"]: t["id"] for t in backend.get("added_tokens", [])}
    ids = {}
    for key, default in _LLAMA_SPECIAL_DEFAULTS.items():
        value = config.get(key, default)
        value = value.get("content") if isinstance(value, dict) else value
        if value is not None and value not in added:
            return None  # transformers would add it as a new token
        ids[key] = added.get(value)
    extra = config.get("extra_special_tokens") or []
    if not isinstance(extra, list) or any(t not in added for t in extra):
        return None
    vocab = model.get("vocab") or {}
    size = len(set(vocab.values()) | set(added.values()))
    return _info(folder, text, ids["bos_token"], ids["eos_token"], ids["pad_token"], size)


def prepare(cfg: PrepareConfig) -> PrepareResult:
    started = time.time()  # the report's time covers hashing inputs and loading the tokenizer too
    raise_if_problems("invalid prepare settings", cfg.validate())
    from corpora.manifest import load_manifest

    manifest = load_manifest(cfg.manifest, on_decode_error=cfg.on_decode_error)
    read_at_start = source_stats(manifest)  # right after the sha256 check: later changes are caught at the end
    index, count = cfg.shard
    # Everything that decides the output. The tokenizer's files decide its ids, specials and
    # dtype, so the key (and the no-op check) needs no tokenizer loading.
    key_inputs = {
        "format": FORMAT,
        "manifest": manifest.fingerprint(),
        "tokenizer_files": tokenizer_files(cfg.tokenizer),
        "tokenizer_fingerprint": tokenizer_fingerprint(cfg.tokenizer),
        "block_size": cfg.block_size,
        "shard_count": count,
        "seed": cfg.seed,
        "on_decode_error": manifest.on_decode_error,
        "file_tokens": cfg.file_tokens,
    }
    cache_key = sha256_json(key_inputs)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, expected a folder")
    name = part_name(index, count)
    # Sibling jobs of one --shard count share --out; a run of another count would delete their parts
    # (and they its): one count at a time. Two runs into one part would race (the later rename
    # silently wins): one writer per part.
    with group_lock(out, f"shard-count-{count}", f"--out {out}", "python -m pretrain prepare"), \
            output_lock(out / f".{name}.lock", f"--out {out / name}", "python -m pretrain prepare"):
        remove_stale_partials(out, name)
        return _prepare_part(cfg, manifest, key_inputs, cache_key, started, read_at_start)


def _prepare_part(cfg: PrepareConfig, manifest: Any, key_inputs: dict, cache_key: str, started: float,
                  read_at_start: dict) -> PrepareResult:
    index, count = cfg.shard
    out = Path(cfg.out)
    part_dir = out / part_name(index, count)
    existing = check_out(out, cache_key, key_inputs, index, count, cfg.overwrite)
    if existing is not None:
        _write_total_report(out)
        return PrepareResult("up-to-date", part_dir, existing)

    tok = load_tokenizer_info(cfg.tokenizer)
    try:
        with atomic_output_dir(part_dir, overwrite=True) as tmp:
            report = _tokenize_and_report(cfg, manifest, tok, key_inputs, cache_key, started, tmp)
            check_sources_unchanged(read_at_start)  # what was read is what the manifest's sha256 vouches for
    except OSError as exc:  # a full disk, a read-only --out: one line, not a traceback
        raise UserError(f"--out {out}: cannot write {exc.filename or ''}: {exc.strerror or exc}") from None
    _write_total_report(out)
    return PrepareResult("prepared", part_dir, report)


def _tokenize_and_report(cfg: PrepareConfig, manifest: Any, tok: TokenizerInfo, key_inputs: dict, cache_key: str,
                         started: float, tmp: Path) -> dict:
    index, count = cfg.shard
    splits, sources = _tokenize_part(manifest, tok, cfg, tmp)
    seconds = time.time() - started
    documents = sum(s["documents"] for s in splits.values())
    if documents == 0 and count == 1:
        raise UserError(_no_documents_message(cfg.manifest, sources))
    tokens = sum(s["tokens"] for s in splits.values())
    report = {
        "format": FORMAT,
        "cache_key": cache_key,
        "key_inputs": key_inputs,
        "part": {"index": index, "count": count},
        "block_size": cfg.block_size,
        "dtype": tok.dtype,
        "tokenizer": str(cfg.tokenizer),
        "tokenizer_fingerprint": key_inputs["tokenizer_fingerprint"],
        "special_ids": {"start": tok.start_id, "eos": tok.eos_id, "pad": tok.pad_id},
        "vocab_size": tok.vocab_size,
        "manifest": {"path": str(cfg.manifest), "name": manifest.name, "fingerprint": manifest.fingerprint(),
                     "holdout": dataclasses.asdict(manifest.holdout)},
        "sources": [s.name for s in manifest.sources],
        "source_info": {s.name: {"license": s.license, "language": s.language, "weight": s.weight}
                        for s in manifest.sources},  # the model card's data table (zhllama/model_card.py)
        "source_stats": sources,
        "splits": splits,
        "documents": documents,
        "tokens": tokens,
        "characters": sum(s["characters"] for s in splits.values()),
        "time": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                 "seconds": round(seconds, 3), "num_proc": cfg.num_proc,
                 "tokens_per_second": round(tokens / max(seconds, 1e-9)),
                 "documents_per_second": round(documents / max(seconds, 1e-9))},
        "versions": _versions(),
    }
    write_json_atomic(tmp / REPORT, report)
    return report


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("tokenizers", "transformers", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _no_documents_message(manifest: str, sources: dict[str, dict]) -> str:
    lines = [f"manifest {manifest}: no documents left after reading and cleaning:"]
    for name, st in sources.items():
        tr = st.get("train", {})
        lines.append(f"  {name}: {tr.get('records', 0)} records read; dropped {tr.get('empty', 0)} empty, "
                     f"{tr.get('undecodable', 0)} undecodable, {tr.get('too_short', 0)} too short (min_chars), "
                     f"{tr.get('duplicates', 0)} duplicates; weight {st['weight']}")
    return "\n".join(lines)


def _write_total_report(out: Path) -> None:
    """Write OUT/prepare_report.json once every part is there (idempotent, so racing jobs agree)."""
    try:
        totals = read_prepare_report(out)
    except UserError:
        return  # sibling parts still running or missing: the last one to finish writes it
    totals = {k: v for k, v in totals.items() if k != "part_reports"}
    totals["part_dirs"] = [part_name(i, totals["parts"]) for i in range(totals["parts"])]
    write_json_atomic(out / REPORT, totals)


def _tokenize_part(manifest: Any, tok: TokenizerInfo, cfg: PrepareConfig, folder: Path) -> tuple[dict, dict]:
    from tqdm import tqdm

    from .prepare_stream import EncoderPool, batches, document_stream

    writers = {split: SplitWriter(folder / split, np.dtype(tok.dtype), cfg.file_tokens, cfg.block_size)
               for split in SPLITS}
    stats: dict[str, dict] = {}
    stream = document_stream(manifest, cfg.shard, cfg.seed, stats)
    index, count = cfg.shard
    pool = EncoderPool(tok.backend_json, tok.start_id, tok.eos_id, tok.dtype, cfg.num_proc)  # before tqdm's thread
    bar = tqdm(desc=f"prepare part {index}/{count}", unit="doc", disable=not cfg.progress, file=sys.stderr,
               mininterval=1.0, dynamic_ncols=True)
    started, tokens = time.time(), 0
    try:
        for split, source, chars, flat, lengths in pool.encoded(batches(stream, cfg.batch_chars)):
            writers[split].add(flat, lengths, source, chars)
            stats[manifest.sources[source].name]["written"][split] += len(lengths)
            tokens += len(flat)
            bar.update(len(lengths))
            bar.set_postfix_str(f"{tokens / max(time.time() - started, 1e-9):,.0f} tokens/s", refresh=False)
    finally:
        pool.close()
        bar.close()
        splits = {split: w.close() for split, w in writers.items()}
    sources = {name: {"weight": st["weight"], "written": st["written"],
                      "train": dataclasses.asdict(st["train"]), "validation": dataclasses.asdict(st["validation"]),
                      **({"long_documents": st["long_documents"]} if "long_documents" in st else {})}
               for name, st in stats.items()}
    return splits, sources
