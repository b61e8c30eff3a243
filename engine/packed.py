"""Read the token shards written by ``python -m pretrain prepare`` as one map-style dataset.

The reader lives in the engine, not in pretrain/, because every phase reads these folders: pretraining
trains on them, and pretraining and SFT alike score the named held-out sets of ``eval.sets`` on them
(what the model forgets while it learns).

    from engine.packed import PackedDataset, named_eval_sets, read_prepare_report
    from zhllama.tokenizer_files import tokenizer_fingerprint
    ds = PackedDataset(data_dir, split="train")      # or "validation"; all --shard parts as one
    len(ds)                                          # number of blocks
    ds[i] -> {"input_ids": LongTensor[block_size], "position_ids": LongTensor[block_size],
              "labels": LongTensor[block_size]}
    ds.block_size, ds.tokens, ds.labelled_tokens, ds.characters, ds.documents
    ds.cache_key, ds.tokenizer_fingerprint           # compare with tokenizer_fingerprint(model_dir)
    read_prepare_report(data_dir) -> dict            # totals over all parts, plus each part's report
    named_eval_sets(cfg.eval.sets, model_dir)        # {name: (PackedDataset, characters)}, checked

The token stream. Every document is ``[START] + ids(text) + [EOS]``: START is the tokenizer's BOS
(LLaMA's ``<s>``), or its EOS when it has no BOS. The documents of one part and split are
concatenated into one stream of T tokens. Blocks overlap by one token: block b holds
``stream[b*(N-1) : b*(N-1)+N]`` (N = block size), so every token except a document's START is
a prediction target exactly once (the token at position 0 of a block is only context for it —
it was the target at position N-1 of the block before). The last block is padded.

The fields (labels follow Hugging Face's convention: the model shifts them, so ``labels[p]`` is
the target predicted from positions < p):

- ``position_ids`` count from 0 at position 0 of the block and restart at 0 at every document
  START and at the first padding position. A segment is a run of positions between resets;
  attention kept within segments (flash-attention varlen from position_ids, or a block-diagonal
  mask) never crosses a document.
- ``labels`` = ``input_ids`` except -100 at position 0, at every document START (predicting it
  would cross a document boundary) and on padding. Labelled tokens are therefore the text tokens
  and the EOS of every document, each once per split: ``ds.labelled_tokens`` = ``ds.tokens`` -
  ``ds.documents``, and ``ds.characters`` is the number of characters (code points, after the
  manifest's cleaning) of those documents' text, so bits per character are exact:
  ``sum(NLL over labels != -100) / ln 2 / ds.characters``.

Blocks are in corpus order (source after source); the training loader shuffles them.

On disk (``--out DIR``)::

    DIR/prepare_report.json                  totals, written when every part is present
    DIR/part-00000-of-00004/prepare_report.json   this part's report (cache key, counts, time)
    DIR/part-00000-of-00004/train/tokens-00000.bin   raw token ids (dtype in the report), a
                                                      fixed number of tokens per file but the last
    DIR/part-00000-of-00004/train/doc_starts.bin     int64 offset of each document's START
    DIR/part-00000-of-00004/train/doc_sources.bin    uint16 index into the report's "sources"
    DIR/part-00000-of-00004/validation/...
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from zhllama.errors import UserError, raise_if_problems

FORMAT = "zhllama-packed/1"
REPORT = "prepare_report.json"
SPLITS = ("train", "validation")
IGNORE_INDEX = -100


def part_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}"


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None


def list_parts(data_dir: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Complete parts under ``data_dir`` (a part is complete when its report exists)."""
    root = Path(data_dir)
    found = []
    for child in sorted(root.glob("part-*-of-*")):
        report = child / REPORT
        if child.is_dir() and report.is_file():
            found.append((child, _load_json(report)))
    return found


def read_prepare_report(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Totals over every part of a prepared folder; UserError when parts are missing or mixed."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"prepared data folder {root} " + ("is a file, expected a folder" if root.exists() else "does not exist")
                        + f" (run: python -m pretrain prepare --out {root})")
    parts = list_parts(root)
    if not parts:
        raise UserError(f"{root}: no prepared parts (part-*-of-*/{REPORT}); run python -m pretrain prepare "
                        f"--out {root} (an interrupted run leaves only hidden .partial folders)")
    keys = {r["cache_key"] for _, r in parts}
    if len(keys) > 1:
        listing = ", ".join(f"{p.name}: {r['cache_key'][:12]}" for p, r in parts)
        raise UserError(f"{root}: parts were prepared from different inputs or settings ({listing}); "
                        "re-run the stale parts with --overwrite or delete them")
    count = parts[0][1]["part"]["count"]
    present = {r["part"]["index"] for _, r in parts}
    missing = [i for i in range(count) if i not in present]
    if missing:
        listing = ", ".join(f"{i}/{count}" for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"{root}: {len(missing)} of {count} parts are missing or unfinished ({listing}); "
                        f"run python -m pretrain prepare --shard i/{count} for each")
    reports = [r for _, r in sorted(parts, key=lambda pr: pr[1]["part"]["index"])]
    first = reports[0]
    splits = {}
    for split in SPLITS:
        splits[split] = {k: sum(r["splits"][split][k] for r in reports)
                         for k in ("documents", "tokens", "labelled_tokens", "characters", "blocks")}
    return {
        "format": first["format"],
        "cache_key": first["cache_key"],
        "parts": count,
        "block_size": first["block_size"],
        "dtype": first["dtype"],
        "tokenizer": first["tokenizer"],
        "tokenizer_fingerprint": first["tokenizer_fingerprint"],
        "special_ids": first["special_ids"],
        "manifest": first["manifest"],
        "sources": first["sources"],
        "source_info": first.get("source_info", {}),  # folders prepared before it was recorded: {}
        "splits": splits,
        "documents": sum(s["documents"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "characters": sum(s["characters"] for s in splits.values()),
        "seconds": sum(r["time"]["seconds"] for r in reports),
        "part_reports": reports,
    }


def num_blocks(tokens: int, block_size: int) -> int:
    """Blocks of ``block_size`` overlapping by one token that cover every target of ``tokens``."""
    return 0 if tokens < 2 else -(-(tokens - 1) // (block_size - 1))


class _SplitPart:
    """One part's split: a token stream spread over files, plus document starts. Opened lazily."""

    def __init__(self, folder: Path, info: dict, dtype: str, block_size: int):
        self.folder = folder
        self.files = [(folder / f["name"], f["tokens"]) for f in info["files"]]
        self.tokens = info["tokens"]
        self.dtype = np.dtype(dtype)
        self.blocks = num_blocks(self.tokens, block_size)
        self.file_starts = np.cumsum([0] + [n for _, n in self.files])
        self._maps: list[np.memmap] | None = None
        self._starts: np.ndarray | None = None

    def _open(self) -> None:
        self._maps = [np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)) for path, n in self.files]
        starts = self.folder / "doc_starts.bin"
        self._starts = np.memmap(starts, dtype=np.int64, mode="r") if starts.stat().st_size else np.zeros(0, np.int64)

    def doc_starts(self) -> np.ndarray:
        if self._starts is None:
            self._open()
        return self._starts

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream (may span files)."""
        if self._maps is None:
            self._open()
        pieces = []
        first = int(np.searchsorted(self.file_starts, start, side="right")) - 1
        for f in range(first, len(self._maps)):
            lo = self.file_starts[f]
            if lo >= stop:
                break
            pieces.append(self._maps[f][max(start - lo, 0):stop - lo])
        return np.concatenate(pieces) if len(pieces) != 1 else np.asarray(pieces[0])

    def __getstate__(self) -> dict:  # DataLoader workers reopen the maps instead of copying them
        state = dict(self.__dict__)
        state["_maps"] = state["_starts"] = None
        return state


class PackedDataset:
    """All parts of one split of a prepared folder, as fixed-size blocks (see the module doc)."""

    def __init__(self, data_dir: str | os.PathLike, split: str = "train"):
        if split not in SPLITS:
            raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        report = read_prepare_report(data_dir)
        if report["format"] != FORMAT:
            raise UserError(f"{data_dir}: prepared with format {report['format']!r}, this code reads {FORMAT!r}; "
                            "prepare it again")
        self.data_dir = Path(data_dir)
        self.split = split
        self.report = report
        self.block_size: int = report["block_size"]
        self.cache_key: str = report["cache_key"]
        self.tokenizer_fingerprint: str = report["tokenizer_fingerprint"]
        totals = report["splits"][split]
        self.tokens: int = totals["tokens"]
        self.labelled_tokens: int = totals["labelled_tokens"]
        self.characters: int = totals["characters"]
        self.documents: int = totals["documents"]
        self.sources: list[str] = report["sources"]
        self.pad_id: int = report["special_ids"]["pad"]
        self._parts = [_SplitPart(self.data_dir / part_name(r["part"]["index"], r["part"]["count"]) / split,
                                  r["splits"][split], report["dtype"], self.block_size)
                       for r in report["part_reports"]]
        self._block_starts = np.cumsum([0] + [p.blocks for p in self._parts])

    def __len__(self) -> int:
        return int(self._block_starts[-1])

    def block_arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids, position_ids, labels) of block ``index`` as int64 numpy arrays."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        index %= len(self)
        p = int(np.searchsorted(self._block_starts, index, side="right")) - 1
        part, b = self._parts[p], index - int(self._block_starts[p])
        n = self.block_size
        start = b * (n - 1)
        stop = min(start + n, part.tokens)
        real = stop - start
        ids = np.full(n, self.pad_id, dtype=np.int64)
        ids[:real] = part.read(start, stop)
        starts = part.doc_starts()
        lo, hi = np.searchsorted(starts, [start, stop])
        local_starts = np.asarray(starts[lo:hi], dtype=np.int64) - start
        resets = np.unique(np.concatenate([[0], local_starts, [real] if real < n else []])).astype(np.int64)
        positions = np.arange(n, dtype=np.int64)
        positions -= resets[np.searchsorted(resets, positions, side="right") - 1]
        labels = ids.copy()
        labels[0] = IGNORE_INDEX
        labels[local_starts] = IGNORE_INDEX
        labels[real:] = IGNORE_INDEX
        return ids, positions, labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        ids, positions, labels = self.block_arrays(index)
        return {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(positions),
                "labels": torch.from_numpy(labels)}

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.data_dir)!r}, split={self.split!r}: {len(self)} blocks of "
                f"{self.block_size}, {self.tokens} tokens, {self.documents} documents)")


def named_eval_sets(sets, tokenizer_folder: str | os.PathLike | None) -> dict[str, tuple[PackedDataset, int]]:
    """``eval.sets`` -> {name: (PackedDataset, characters)}; every set checked, all problems in one error.

    Each must be a prepared folder made with the model's tokenizer (``tokenizer_folder``; None skips
    that check): other ids would be scored against the wrong embedding rows."""
    found, problems = {}, []
    for s in sets:
        try:
            ds = PackedDataset(s.dir, s.split)
        except UserError as exc:
            problems.append(f"eval.sets {s.name}: {exc}")
            continue
        if len(ds) == 0:
            problems.append(f"eval.sets {s.name}: split {s.split!r} of {s.dir} is empty")
        else:
            found[s.name] = ds
    if found and tokenizer_folder is not None:
        from zhllama.tokenizer_files import tokenizer_fingerprint

        mine = tokenizer_fingerprint(tokenizer_folder)
        problems += [f"eval.sets {name}: {ds.data_dir} was prepared with another tokenizer than the model's "
                     f"{tokenizer_folder}; prepare it with that one (python -m pretrain prepare --tokenizer "
                     f"{tokenizer_folder})" for name, ds in found.items() if ds.tokenizer_fingerprint != mine]
    raise_if_problems("cannot read the named held-out sets", problems)
    return {name: (ds, ds.characters) for name, ds in found.items()}
