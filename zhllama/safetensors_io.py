"""Safetensors model folders written tensor by tensor (never the whole model at once).

    write_checkpoint(out_dir, infos, replaced={"model.embed_tokens.weight": rows}, max_bytes=parse_size("5GB"))
    write_checkpoint(out_dir, infos, {}, max_bytes, transform=lambda name, stored: stored + delta(name))

The vocabulary resize touches two matrices of a model whose other tensors must come out byte-identical,
and a chat vector changes every tensor of a model a few at a time; both copy tensors between safetensors
files instead of building the model: memory stays at one output shard (plus what ``replaced`` holds), and
the stored dtype and shape are never changed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .errors import UserError
from .model_folder import INDEX_FILE, SINGLE_FILE, TensorInfo


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB', '1000000' -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not match:
        raise UserError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000")
    number, unit = float(match.group(1)), match.group(2).rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    size = int(number * scale)
    if size <= 0:
        raise UserError(f"--max-shard-size {text!r}: must be positive")
    return size


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Greedy packing in checkpoint order; a tensor bigger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def write_checkpoint(
    out_dir: Path,
    infos: list[TensorInfo],
    replaced: dict,
    max_bytes: int,
    progress: Callable | None = None,
    transform: Callable | None = None,
) -> list[str]:
    """Write all tensors (``replaced[name]`` instead of the stored one, else ``transform(name, stored)``
    when given: same shape and dtype) as sharded safetensors.

    Returns the file names written. Only one output shard is in memory at a time.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    def nbytes(info: TensorInfo) -> int:
        tensor = replaced.get(info.name)
        return tensor.numel() * tensor.element_size() if tensor is not None else info.nbytes

    by_name = {info.name: info for info in infos}
    shards = plan_shards([(info.name, nbytes(info)) for info in infos], max_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    weight_map: dict[str, str] = {}
    iterator = zip(names, shards)
    if progress is not None:
        iterator = progress(list(iterator), desc="writing shards", unit="shard")
    for file_name, members in iterator:
        tensors = {}
        handles: dict[Path, object] = {}
        for name in members:
            if name in replaced:
                tensors[name] = replaced[name]
                continue
            info = by_name[name]
            if info.file not in handles:
                handles[info.file] = safe_open(str(info.file), framework="pt")
            stored = handles[info.file].get_tensor(name)
            tensors[name] = stored if transform is None else transform(name, stored)
        for name in members:
            weight_map[name] = file_name
        # transformers refuses safetensors files without format metadata.
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
        del tensors, handles
    if len(names) > 1:
        total = sum(nbytes(info) for info in infos)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return names
