"""Extend a byte-level BPE base (Llama-3, Qwen, Mistral Tekken) with Chinese tokens: ``extend_bbpe``.

Learns new merges from text under the base's own pre-tokenizer (vocab.bbpe_train), appends them
after every base merge, and writes atomically: the HF folder (tokenizer.json,
tokenizer_config.json, carried chat template), the base's original format extended the same way
(tiktoken rank file / tekken.json) when it had one, and merge_report.json. ``verify`` runs the six
guarantees (vocab.bbpe_verify) inside the temporary folder; a failure writes nothing.
Never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from zhllama.errors import UserError
from zhllama.files import atomic_output_dir, write_json_atomic

from . import bbpe_verify as checks
from .bbpe_base import ByteBPEBase, load_bbpe_base
from .bbpe_hf import build_tokenizer
from .bbpe_train import TrainSettings, char_rule, learn_tokens
from .bbpe_write import load_rank_encoder, write_hf_folder, write_original

GUARANTEES = [
    "1 base ids 0..N-1 and every special token keep their ids and bytes; new ids start at next_id",
    "2 text without allowed characters tokenizes exactly as with the base",
    "3 no text gets longer: new merges rank after every base merge",
    "4 decode(encode(x)) == x (or the base's own normalized result)",
    "5 the HF folder and the original-format file give identical ids",
    "6 every added token's own text encodes to that token",
]


def _original_encoder(base: ByteBPEBase, folder: Path, name: str | None):
    if name is None:
        return None
    enc, offset = load_rank_encoder(folder / name, base.fmt, base.pattern)
    if enc is None:
        return None
    return lambda text: [i + offset for i in enc.encode_ordinary(text)]


def verify_folder(base: ByteBPEBase, folder: Path, new: list[bytes], original: str | None, allowed: str,
                  extra_non_han: list[str] = (), extra_lines: list[str] = ()) -> dict[str, Any]:
    """Run the six checks on an extended folder (the built-in samples plus any given lines)."""
    from tokenizers import Tokenizer

    non_han, everything = checks.sample_lines()
    ok_char = char_rule(allowed)
    return checks.run_checks(base, build_tokenizer(base), Tokenizer.from_file(str(folder / "tokenizer.json")), new,
                             non_han + list(extra_non_han), everything + list(extra_non_han) + list(extra_lines),
                             lambda x: any(ok_char(c) for c in x), _original_encoder(base, folder, original))


def extend_bbpe(base_path: str | Path, texts: Iterable[str], out: str | Path, settings: TrainSettings, *,
                text_record: dict[str, Any] | None = None, pattern: str | None = None, overwrite: bool = False,
                verify: bool = True) -> dict[str, Any]:
    """Learn up to ``settings.new_tokens`` tokens from ``texts``, write ``out``; returns the report."""
    base = load_bbpe_base(base_path, pattern)
    problems = settings.problems()
    if Path(out).exists() and not overwrite:
        problems.append(f"output folder {out} already exists (pass --overwrite to replace it)")
    if problems:
        raise UserError("cannot extend the base", problems)
    new, training = learn_tokens(base, texts, settings)
    report: dict[str, Any] = {
        "base": base.record(base_path),
        "training_text": text_record or {},
        "settings": dataclasses.asdict(settings),
        "method": "continued byte-level BPE under the base pre-tokenizer; new merges appended after every base "
                  "merge (lowest priority); a new token decodes to allowed characters only",
        "base_vocab_size": base.next_id,
        "added": len(new),
        "vocab_size": base.next_id + len(new),
        "new_ids": [base.next_id, base.next_id + len(new) - 1] if new else None,
        "training": training,
        "guarantees": GUARANTEES,
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        report["files"] = write_hf_folder(base, new, tmp)
        original = write_original(base, new, tmp)
        report["original_format_file"] = original
        if verify:
            report["checks"] = verify_folder(base, tmp, new, original, settings.allowed)
            failed = [f"{name}: {json.dumps(c, ensure_ascii=False)[:300]}" for name, c in report["checks"].items()
                      if not c["ok"]]
            if failed:
                raise UserError(f"--verify failed; nothing was written to {out} (pass --no-verify to write it anyway)",
                                failed)
        else:
            report["checks"] = {"skipped": "verify=False (--no-verify)"}
        write_json_atomic(tmp / "merge_report.json", report)
    return report


def manifest_texts(manifest_path: str | Path, seed: int = 0, split: str = "train"
                   ) -> tuple[Iterable[str], dict[str, Any]]:
    """A split of a corpus manifest (``train`` or ``holdout``), streamed, and its record for the report.

    The one place the byte-level BPE path (and its benchmark) touches the manifest modules."""
    from corpora.manifest import iter_weighted, load_manifest

    manifest = load_manifest(manifest_path)
    record = {"manifest": str(manifest.path), "name": manifest.name, "fingerprint": manifest.fingerprint(),
              "split": split, "seed": seed, "files": {s.name: s.sha256 for s in manifest.sources}}
    return (doc.text for doc in iter_weighted(manifest, seed=seed, split=split)), record


def run_from_manifest(base: str | Path, manifest: str | Path, out: str | Path, new_tokens: int, *,
                      allowed: str = "han", jieba: bool = False, min_count: int = 2, pattern: str | None = None,
                      seed: int = 0, overwrite: bool = False, verify: bool = True) -> int:
    """What ``vocab merge`` and ``vocab train --merge-into`` run for a byte-level BPE base."""
    settings = TrainSettings(new_tokens, allowed=allowed, jieba=jieba, min_count=min_count)
    load_bbpe_base(base, pattern)  # a bad base fails before the manifest is read
    texts, record = manifest_texts(manifest, seed)
    report = extend_bbpe(base, texts, out, settings, text_record=record, pattern=pattern, overwrite=overwrite,
                         verify=verify)
    summary = {k: report[k] for k in ("base_vocab_size", "added", "vocab_size", "new_ids")}
    summary["checks"] = {n: c.get("ok") for n, c in report["checks"].items()} if verify else "skipped"
    summary["seconds"] = report["training"]["seconds"]
    print(json.dumps(summary, ensure_ascii=False))
    print(f"wrote {out} (details in {out}/merge_report.json)")
    return 0
