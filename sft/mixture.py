"""From the ``data:`` section to the engine's train/eval datasets.

1. Every file is read and validated first (all malformed records of all files in one UserError),
   before any tokenizing or training.
2. Each record gets a key (BLAKE2b of its canonical JSON, as corpora manifests key documents);
   the key decides the held-out eval split (manifest ``holdout`` or ``eval_fraction``) and, for a
   fractional weight, whether the record is repeated — stable under reordering and resharding.
3. Each file is tokenized once through the content-keyed cache.
4. Training samples are repeated by weight, shuffled (so packed rows mix sources) and packed
   when asked. Eval samples are never packed or repeated.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from zhllama.errors import UserError
from zhllama.files import sha256_json

from .config import SFTData
from .data import parse_file, raise_record_problems
from .templates import TemplateSpec

_SFT_SALT = "zhllama-sft"


@dataclass
class SourceFile:
    name: str
    path: Path
    weight: float
    holdout_fraction: float
    holdout_salt: str
    # A manifest's exclude: list (corpora/exclude.py), keyed as corpora keys documents: the record's
    # text_fields joined, under the manifest's own salt.
    exclude: frozenset[bytes] = frozenset()
    text_fields: tuple[str, ...] = ()
    exclude_salt: str = ""


@dataclass
class MixReport:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_samples: int = 0  # after repetition by weight
    train_rows: int = 0  # dataset items (= samples unless packed)
    eval_samples: int = 0
    train_trainable_tokens: int = 0
    fingerprint: str = ""


def resolve_sources(data: SFTData, config_dir: Path | None = None) -> list[SourceFile]:
    """The files to read, from the manifest (validated, checksums checked) or the inline list."""
    if data.manifest is not None:
        from corpora.manifest import load_manifest

        manifest = load_manifest(data.manifest)
        upsampled = [s.name for s in manifest.sources if s.long_documents is not None]
        if upsampled:
            raise UserError(f"{data.manifest}: sources {upsampled} set long_documents, which weighs pretraining "
                            f"documents by length; sft repeats records by their source's weight only (remove it)")
        out = []
        for source in manifest.sources:
            for file in source.files:
                name = source.name if len(source.files) == 1 else f"{source.name}:{source.relative(file)}"
                out.append(SourceFile(name, file, source.weight, manifest.holdout.fraction,
                                      manifest.holdout.salt or _SFT_SALT, source.exclude, tuple(source.text_fields),
                                      manifest.holdout.salt))
        if not out:
            raise UserError(f"{data.manifest}: the manifest lists no files (hub sources are not read by sft)")
        return out
    out = []
    for i, f in enumerate(data.files):
        path = Path(f.path)
        name = path.name if sum(Path(g.path).name == path.name for g in data.files) == 1 else f"{i}:{path.name}"
        out.append(SourceFile(name, path, f.weight, data.eval_fraction, _SFT_SALT))
    return out


def _record_key(obj: Any, salt: str) -> bytes:
    from corpora.manifest import document_key

    return document_key(json.dumps(obj, sort_keys=True, ensure_ascii=False), salt)


def _excluded(obj: Any, source: SourceFile) -> bool:
    from corpora.manifest import document_key
    from corpora.readers import record_text

    text = record_text(obj, list(source.text_fields), str(source.path)) if source.text_fields else ""
    return document_key(text.strip(), source.exclude_salt) in source.exclude


def read_and_validate(sources: list[SourceFile], parse: Callable[[Any], Any] | None = None,
                      what: str = "instruction data"):
    """Parse every file; raise one UserError with every malformed record of every file.
    ``parse``: a record reader other than an instruction record's (sft.pairs.parse_pair)."""
    from corpora.manifest import is_held_out

    problems: list[str] = []
    parsed = []
    for source in sources:
        conversations, keys, held, excluded = [], [], [], []
        try:
            records, bad = parse_file(source.path, need_answer=True, parse=parse)
        except UserError as exc:  # unreadable JSON: report with the others
            records, bad = [], [str(exc)]
        problems += bad
        for conversation, obj in records:
            key = _record_key(obj, source.holdout_salt)
            conversations.append(conversation)
            keys.append(key)
            held.append(is_held_out(key, source.holdout_fraction))
            excluded.append(bool(source.exclude) and _excluded(obj, source))
        parsed.append((conversations, keys, held, excluded))
    raise_record_problems(f"malformed {what} (nothing was trained)", problems)
    return parsed


def build_datasets(data: SFTData, tokenizer: Any, spec: TemplateSpec, tok_fingerprint: str, order_seed: int,
                   validated: tuple[list[SourceFile], list] | None = None
                   ) -> tuple[Any, Any, MixReport]:
    """(train SFTDataset, eval SFTDataset or None, report). ``validated``: the result of
    resolve_sources + read_and_validate when the caller checked first."""
    from corpora.manifest import repeat_count

    from .cache import cached_tokenize  # torch/numpy only now: validation errors come back fast
    from .collate import SFTDataset, TokenizedSamples

    if validated is None:
        sources = resolve_sources(data)
        validated = sources, read_and_validate(sources)
    sources, parsed = validated
    report = MixReport()
    parts: list = []
    keys_all: list[tuple[list[bytes], list[bool]]] = []
    cache_keys = []
    for source, (conversations, keys, held, excluded) in zip(sources, parsed):
        samples, stats, key = cached_tokenize(source.path, conversations, tokenizer, spec, data.max_seq_length,
                                              data.cache_dir, tok_fingerprint)
        parts.append(samples)
        keys_all.append((keys, held, excluded))
        cache_keys.append({"name": source.name, "cache_key": key, "weight": source.weight,
                           "holdout": [source.holdout_fraction, source.holdout_salt],
                           **({"excluded": sha256_json(sorted(k.hex() for k in source.exclude))} if source.exclude else {})})
        report.files[source.name] = {"path": str(source.path), "weight": source.weight, **asdict(stats),
                                     "held_out_records": int(sum(held)), "excluded_records": int(sum(excluded))}
    merged, starts = TokenizedSamples.concat(parts)
    train_order, eval_order = [], []
    for part, start, (keys, held, excluded), source in zip(parts, starts, keys_all, sources):
        for i in range(len(part)):
            record = int(part.records[i])
            if excluded[record]:  # the manifest's exclude: list (e.g. near-duplicates)
                continue
            if held[record]:
                eval_order.append(start + i)
            else:
                train_order.extend([start + i] * repeat_count(source.weight, data.mix_seed, keys[record].hex()))
    if not train_order:
        raise UserError("no training samples left (all files empty, weight 0, held out, or dropped by truncation)")
    random.Random(order_seed).shuffle(train_order)
    if data.packing:
        train = SFTDataset.packed_from(merged, train_order, data.max_seq_length)
    else:
        train = SFTDataset.unpacked(merged, train_order)
    evaluation = SFTDataset.unpacked(merged, eval_order) if eval_order else None
    report.train_samples, report.train_rows = len(train_order), len(train)
    report.eval_samples = len(eval_order)
    report.train_trainable_tokens = train.trainable_tokens()
    report.fingerprint = sha256_json({"files": cache_keys, "mix_seed": data.mix_seed, "order_seed": order_seed,
                                      "packing": data.packing, "max_seq_length": data.max_seq_length})
    return train, evaluation, report
