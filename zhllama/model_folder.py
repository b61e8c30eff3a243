"""Read a Hugging Face model folder without building the model: config, safetensors headers, rows.

    from zhllama.model_folder import embedding_rows_match, list_tensors, weight_files
    ok, message = embedding_rows_match("runs/zh_resized", "runs/zh_tokenizer")

Shared by the resize (which copies tensors between safetensors files) and the training engine
(which refuses a model whose embedding rows do not cover its tokenizer before building anything).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .tokenizer_files import read_sp_proto, tokenizer_json_pieces

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Pickle formats: loading them runs arbitrary code, so they are refused, never read.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it."""

    name: str
    file: Path
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * _DTYPE_BYTES.get(self.dtype, 4)


def require_model_folder(model_dir: str | Path, what: str) -> Path:
    """``model_dir`` when it holds a whole model (config.json); otherwise one error that says what it is.
    A LoRA run's folder (adapter_config.json) is the common mistake: training, scoring, generating or
    converting it needs the adapter merged into its base first."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        return model_dir
    for folder in (model_dir, model_dir / "final"):
        if (folder / "adapter_config.json").is_file():
            raise UserError(f"{what} {model_dir} holds a LoRA adapter, not a whole model: merge it into its base "
                            f"first: python -m sft export --base BASE --adapter {model_dir} --out MERGED "
                            "(BASE: the model.path the run started from)")
    raise UserError(f"{what} {model_dir}: not a Hugging Face model folder (no config.json)")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder, in index order; a UserError for anything else."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{index}: not a safetensors index (expected a 'weight_map' object): {exc}") from None
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise UserError(f"{index} names shard files that do not exist: {', '.join(missing)}")
        return [model_dir / n for n in names]
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    loose = sorted(model_dir.glob("*.safetensors"))
    if len(loose) == 1:
        return loose
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in model_dir.glob(pattern)})
    if pickles:
        raise UserError(
            f"{model_dir} holds only pickle weights ({', '.join(pickles)}); they are refused because "
            "loading pickle runs arbitrary code. Convert them once to safetensors, e.g. "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) in a sandbox you trust"
        )
    if len(loose) > 1:
        raise UserError(f"{model_dir} holds several .safetensors files but no {INDEX_FILE} saying which is which")
    raise UserError(f"{model_dir} holds no model weights (expected {SINGLE_FILE} or {INDEX_FILE})")


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (a few KB read; no tensor data)."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100_000_000:
                raise ValueError("header length is implausible")
            return json.loads(fh.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None


def _check_length(path: Path, header: dict) -> None:
    """A truncated file (a copy or download cut short) has a whole header but not the data it describes."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
        end = max((int(m["data_offsets"][1]) for k, m in header.items() if k != "__metadata__"), default=0)
    except (OSError, KeyError, TypeError, ValueError, IndexError, struct.error) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    expected, actual = 8 + length + end, path.stat().st_size
    if actual < expected:
        raise UserError(f"{path}: truncated safetensors file ({actual:,} bytes, its header describes {expected:,}); "
                        "copy or download it again")


def list_tensors(files: list[Path]) -> list[TensorInfo]:
    """Every tensor of the checkpoint, in file order then header order."""
    infos: list[TensorInfo] = []
    for path in files:
        header = read_header(path)
        _check_length(path, header)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            infos.append(TensorInfo(name, path, meta["dtype"], tuple(meta["shape"])))
    return infos


def read_model_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} is not a model folder (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def vocab_holder(config: dict, where: Path) -> dict:
    """The config dict that carries vocab_size (top level, or text_config of multimodal models)."""
    if isinstance(config.get("vocab_size"), int):
        return config
    if isinstance(config.get("text_config"), dict) and isinstance(config["text_config"].get("vocab_size"), int):
        return config["text_config"]
    raise UserError(f"{where / 'config.json'}: no integer 'vocab_size' (top level or text_config)")


def tokenizer_size(folder: str | Path) -> int:
    """Number of ids a tokenizer folder can produce: tokenizer.json (vocab + added tokens) or tokenizer.model."""
    folder = Path(folder)
    hf, sp = folder / "tokenizer.json", folder / "tokenizer.model"
    if hf.is_file():
        pieces, added = tokenizer_json_pieces(hf)
        ids = list(pieces) + [int(t["id"]) for t in added]
        return max(ids) + 1 if ids else 0
    if sp.is_file():
        return len(read_sp_proto(sp).pieces)
    raise UserError(f"{folder} is not a tokenizer folder (no tokenizer.json or tokenizer.model)")


def embedding_rows_match(model_dir: str | Path, tokenizer_dir: str | Path) -> tuple[bool, str]:
    """Whether every id of the tokenizer has an embedding row (config.json + headers only).

    The training engine calls this before building a model: a partitioned (ZeRO-3) model must
    never be resized, so a mismatch is refused with the command that fixes it.
    """
    model_dir, tokenizer_dir = Path(model_dir), Path(tokenizer_dir)
    try:
        holder = vocab_holder(read_model_config(model_dir), model_dir)
        rows = holder["vocab_size"]
        infos = list_tensors(weight_files(model_dir))
        size = tokenizer_size(tokenizer_dir)
    except UserError as exc:
        return False, str(exc)
    for info in infos:
        if info.name.endswith(("embed_tokens.weight", "lm_head.weight")) and info.shape[0] != rows:
            return False, (f"{model_dir}: config.json says vocab_size {rows} but {info.name} has "
                           f"{info.shape[0]} rows; the folder is inconsistent")
    fix = (f"run `python -m vocab resize --model {model_dir} --tokenizer {tokenizer_dir} --out NEW_DIR` "
           "and train NEW_DIR")
    if rows < size:
        return False, (f"{model_dir} has {rows} embedding rows but the tokenizer in {tokenizer_dir} has "
                       f"{size} tokens (ids {rows}..{size - 1} have no row); {fix}")
    if rows > size:
        return True, f"{rows} embedding rows for {size} tokens ({rows - size} padding rows)"
    return True, f"{rows} embedding rows for {size} tokens"


def first_layer_numel(model_dir: str | Path) -> int:
    """Elements of the weights of the first decoder layer (tensors named ``*.layers.0.*``), read from
    the safetensors headers; 0 when the folder names no such tensors."""
    try:
        tensors = list_tensors(weight_files(Path(model_dir)))
    except UserError:
        return 0
    return sum(info.numel for info in tensors if ".layers.0." in f".{info.name}")
