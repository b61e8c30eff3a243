r"""Grow a causal LM's embeddings to a merged tokenizer, with informed initialisation of new rows.

    python -m vocab resize --model BASE_MODEL_DIR --tokenizer MERGED_DIR --out DIR \
        [--init subtoken-mean|spelling|mean|random] [--pad-to-multiple-of 64] [--max-shard-size 5GB]

The model is never built with weights: its safetensors tensors are copied shard by shard and only
the input/output embedding matrices are replaced, so memory stays near one shard plus the two
embeddings, the stored dtype is kept and every other tensor comes out byte-identical. The
architecture is instantiated on the meta device (no memory) only to learn which tensors are the
embeddings and whether they are tied. Only ``--init spelling`` loads the model with weights (once,
before the copy, then frees it): it runs the base model over each new piece's spelling.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import atomic_output_dir, describe_not_a_file, sha256_file, write_json_atomic
from zhllama.model_folder import INDEX_FILE, TensorInfo, embedding_rows_match, list_tensors, read_model_config, vocab_holder, weight_files  # noqa: F401 - embedding_rows_match re-exported
from zhllama.tokenizer_files import is_bbpe_extension

from zhllama.safetensors_io import parse_size, write_checkpoint
from .resize_rows import (METHODS, RowPlan, TokenizerInfo, base_processor, base_size_of, grow_rows, plan_rows,
                          read_tokenizer, special_token_ids)
from .resize_spelling import apply_spelling, calibration_ids, spell_with_base_model, spelling_summary

REPORT_FILE = "resize_report.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files of a tokenizer folder that are not the tokenizer's (it may itself be a model folder).
_NOT_TOKENIZER_FILES = ("config.json", "generation_config.json", REPORT_FILE, INDEX_FILE)


@dataclass
class ResizeConfig:
    model: Path
    """base model folder: config.json + safetensors weights (+ its own tokenizer, if any)"""
    tokenizer: Path
    """merged tokenizer folder (tokenizer.model / tokenizer.json, merge_report.json)"""
    out: Path
    """output model folder; must not exist"""
    init: Literal["subtoken-mean", "spelling", "mean", "random"] = "subtoken-mean"
    """how new rows start: base sub-token mean; spelling (input rows: sub-token mean, output rows:
    the base model's log-probability of the spelling); mean of all old rows; the model's initializer"""
    pad_to_multiple_of: int | None = None
    """round the new row count up to a multiple of this (extra rows get the mean)"""
    max_shard_size: str = "5GB"
    """weights are split into files no bigger than this"""
    trust_remote_code: bool = False
    """allow the model folder's own Python code to define the architecture"""
    seed: int = 0
    """seed of --init random"""
    calibration_text: list[Path] | None = None
    """UTF-8 text files, the new language first, then samples of what the model must keep reading
    (e.g. English); one paragraph per line, a few thousand tokens each. Needed by --init spelling"""
    device: str = "cpu"
    """where --init spelling runs the base model (cpu, cuda, cuda:1 ...)"""


@dataclass
class EmbeddingLayout:
    input: TensorInfo
    output: TensorInfo | None  # None when tied and stored once
    tied: bool


def find_embeddings(model_dir: Path, infos: list[TensorInfo], trust_remote_code: bool) -> EmbeddingLayout:
    """Which stored tensors are the input/output embeddings, learned from the meta-device model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        hint = "" if trust_remote_code else " (if the folder ships its own modeling code you trust, pass --trust-remote-code)"
        raise UserError(f"{model_dir}: cannot build the architecture from config.json: {exc}{hint}") from None
    module_names = {id(module): name for name, module in model.named_modules()}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is inp.weight
    by_name = {info.name: info for info in infos}
    vocab = inp.weight.shape[0]

    def stored(module) -> TensorInfo | None:
        name = module_names[id(module)] + ".weight"
        if name in by_name:
            return by_name[name]
        # Checkpoints saved with a prefix the module tree lacks (or the reverse): match the tail.
        tail = name.split(".", 1)[-1]
        hits = [i for i in infos if (i.name.endswith("." + tail) or i.name == tail) and i.shape[:1] == (vocab,)]
        return hits[0] if len(hits) == 1 else None

    input_info = stored(inp)
    if input_info is None:
        raise UserError(f"{model_dir}: the weights hold no input embedding tensor "
                        f"({module_names[id(inp)]}.weight) of {vocab} rows")
    output_info = stored(out) if out is not None else None
    if output_info is None and out is not None and not tied:
        raise UserError(f"{model_dir}: untied model but the weights hold no output embedding "
                        f"({module_names[id(out)]}.weight)")
    if out is not None and getattr(out, "bias", None) is not None:
        raise UserError(f"{model_dir}: output embeddings with a bias are not supported yet")
    return EmbeddingLayout(input_info, output_info, tied)


def check_base_ids(model_dir: Path, rows: int, tok: TokenizerInfo) -> tuple[int, str]:
    """Base vocabulary size N (ids kept from the model) and where it came from; UserError if unsafe.

    The model's own tokenizer, when its folder has one, is the authority: the merged pieces must
    start with exactly its pieces. Otherwise merge_report.json's base_vocab_size must equal the
    model's rows. Either way ids below N must mean what the model's rows were trained for.
    """
    problems: list[str] = []
    spare = _spare_rows(tok, rows)
    if spare is not None:  # byte-level BPE extension onto a model with spare rows: see vocab.bbpe_resize
        return spare, f"{tok.folder / 'merge_report.json'} base_vocab_size (rows {spare}..{rows - 1} are spare)"
    if tok.size < rows:
        problems.append(f"the tokenizer in {tok.folder} has {tok.size} tokens, fewer than the model's "
                        f"{rows} embedding rows: resizing only grows a vocabulary")
    if (model_dir / "tokenizer.model").is_file() or (model_dir / "tokenizer.json").is_file():
        own = read_tokenizer(model_dir)
        base_n, source = own.size, f"{model_dir}'s own tokenizer"
        if own.size > tok.size:
            problems.append(f"the model's own tokenizer ({model_dir}) has {own.size} tokens, more than the "
                            f"merged tokenizer's {tok.size}: the merged one is not an extension of it")
        else:
            changed = [i for i in range(own.size) if own.pieces[i] != tok.pieces[i]]
            for i in changed[:5]:
                problems.append(f"id {i} is {own.pieces[i]!r} in {model_dir} but {tok.pieces[i]!r} in "
                                f"{tok.folder}: the merge changed base ids")
            if len(changed) > 5:
                problems.append(f"... and {len(changed) - 5} more changed ids")
    elif base_size_of(tok) is not None:
        base_n, source = base_size_of(tok), f"{tok.folder / 'merge_report.json'} base_vocab_size"
    else:
        base_n, source = rows, "assumed equal to the model's rows (no merge_report.json, no model tokenizer)"
    if tok.size >= rows and base_n != rows:
        problems.append(f"the model has {rows} embedding rows but its tokenizer has {base_n} pieces "
                        f"({source}); new ids would land on rows that mean something else")
    raise_if_problems(f"tokenizer {tok.folder} does not fit model {model_dir}", problems)
    return base_n, source


def _spare_rows(tok: TokenizerInfo, rows: int) -> int | None:
    """A byte-level BPE extension's base_vocab_size when the model has more rows than that (its
    rows from there on belong to no token and are re-initialised), else None."""

    base_n = base_size_of(tok)
    if base_n is None or not is_bbpe_extension(tok.merge_report) or base_n >= rows:
        return None
    return base_n


def _validate_paths(cfg: ResizeConfig) -> None:
    problems = []
    if not Path(cfg.model).is_dir():
        problems.append(f"--model {cfg.model}: " + ("is a file, expected a model folder" if Path(cfg.model).exists() else "no such folder"))
    if not Path(cfg.tokenizer).is_dir():
        problems.append(f"--tokenizer {cfg.tokenizer}: " + ("is a file, expected a tokenizer folder" if Path(cfg.tokenizer).exists() else "no such folder"))
    if Path(cfg.out).exists():
        problems.append(f"--out {cfg.out} already exists; choose a new folder")
    if cfg.init not in METHODS:
        problems.append(f"--init {cfg.init!r}: expected one of {', '.join(METHODS)}")
    if cfg.pad_to_multiple_of is not None and cfg.pad_to_multiple_of <= 0:
        problems.append(f"--pad-to-multiple-of {cfg.pad_to_multiple_of}: must be a positive integer")
    if cfg.init == "spelling" and not cfg.calibration_text:
        problems.append("--init spelling needs --calibration-text NEW_LANGUAGE.txt [OTHER.txt ...] "
                        "(a few thousand tokens of each language the model should read)")
    for path in cfg.calibration_text or []:
        if not Path(path).is_file():
            problems.append(f"--calibration-text {path}: {describe_not_a_file(path)}")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            problems.append(f"--device {cfg.device}: no CUDA device here")
    raise_if_problems("cannot resize", problems)


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def resize_model(cfg: ResizeConfig, progress=None) -> dict:
    """Write the resized model folder ``cfg.out``; return the report (also saved in the folder)."""
    _validate_paths(cfg)
    model_dir, tok_dir, out_dir = Path(cfg.model), Path(cfg.tokenizer), Path(cfg.out)
    max_bytes = parse_size(cfg.max_shard_size)
    config = read_model_config(model_dir)
    holder = vocab_holder(config, model_dir)
    files = weight_files(model_dir)
    infos = list_tensors(files)
    layout = find_embeddings(model_dir, infos, cfg.trust_remote_code)
    rows = layout.input.shape[0]
    if holder["vocab_size"] != rows:
        raise UserError(f"{model_dir / 'config.json'}: vocab_size {holder['vocab_size']} but the stored "
                        f"embedding {layout.input.name} has {rows} rows")
    tok = read_tokenizer(tok_dir)
    base_n, base_source = check_base_ids(model_dir, rows, tok)
    new_rows = _round_up(tok.size, cfg.pad_to_multiple_of)
    first = base_n if base_n < rows else None  # spare rows: new ids land on them, so they are planned too
    new_rows = max(new_rows, rows) if first is not None else new_rows
    plan = plan_rows(tok, rows, new_rows, cfg.init, base_n, first)
    std = float(holder.get("initializer_range", config.get("initializer_range", 0.02)))
    spelling = _spell(cfg, layout, tok, plan, base_n, progress) if cfg.init == "spelling" else None

    replaced = _grow_embeddings(layout, plan, std, cfg.seed, spelling)
    tokenizer_files = [p for p in sorted(tok_dir.iterdir())
                       if p.is_file() and p.name not in _NOT_TOKENIZER_FILES
                       and not p.name.endswith(_WEIGHT_SUFFIXES)]
    report = {
        "inputs": {
            "model": str(model_dir),
            "tokenizer": str(tok_dir),
            "model_config_sha256": sha256_file(model_dir / "config.json"),
            "model_weights_sha256": {p.name: sha256_file(p) for p in files},
            "tokenizer_files_sha256": {p.name: sha256_file(p) for p in tokenizer_files},
            "calibration_text_sha256": ({Path(p).name: sha256_file(p) for p in cfg.calibration_text}
                                        if spelling is not None else None),
        },
        "old_vocab_size": rows,
        "tokenizer_size": tok.size,
        "new_vocab_size": new_rows,
        "pad_to_multiple_of": cfg.pad_to_multiple_of,
        "base_vocab_size": base_n,
        "base_vocab_size_from": base_source,
        "init": cfg.init,
        "initializer_range": std if cfg.init == "random" else None,
        "seed": cfg.seed if cfg.init == "random" else None,
        "rows_per_rule": plan.counts(),
        "reinitialised_spare_rows": [first, rows - 1] if first is not None else None,
        "mean_excludes_special_rows": len(plan.mean_excludes),
        "spelling": spelling_summary(spelling, cfg.device, cfg.calibration_text) if spelling is not None else None,
        "dtype": layout.input.dtype,
        "tied_embeddings": layout.tied,
        "input_embedding": layout.input.name,
        "output_embedding": layout.output.name if layout.output else layout.input.name,
    }
    with atomic_output_dir(out_dir) as tmp:
        report["weight_files"] = write_checkpoint(tmp, infos, replaced, max_bytes, progress)
        del replaced
        holder["vocab_size"] = new_rows
        # The merged tokenizer's <pad> (--add-pad-token) must reach the model config, where
        # generate() and serving runtimes look for it; BOS/EOS as the tokenizer names them.
        for key, value in special_token_ids(tok).items():
            if key == "pad_token_id" or holder.get(key) is None:
                holder[key] = value
        report["config_special_ids"] = {k: holder.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        extras = ["generation_config.json"] + ([p.name for p in model_dir.glob("*.py")] if cfg.trust_remote_code else [])
        for name in extras:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        for path in tokenizer_files:
            shutil.copy2(path, tmp / path.name)
        write_json_atomic(tmp / REPORT_FILE, report)
    return report


def _spell(cfg: ResizeConfig, layout: EmbeddingLayout, tok: TokenizerInfo, plan: RowPlan, base_n: int, progress):
    """Run the base model over every new piece's spelling (refused where it cannot apply)."""
    from .bbpe_resize import bbpe_reader

    problems = []
    if layout.tied:
        problems.append("--init spelling sets output rows apart from input rows, but this model ties them; "
                        "use --init subtoken-mean")
    if is_bbpe_extension(tok.merge_report):
        bos_id, encode = bbpe_reader(tok.folder, base_n, special_token_ids(tok))
        if bos_id is None:
            problems.append(f"--init spelling scores spellings after a document start, but {tok.folder} names "
                            "neither a BOS nor an EOS token (tokenizer_config.json)")
    else:
        bos_id = tok.sp_proto.trainer_spec.bos_id
        if bos_id < 0:
            problems.append(f"--init spelling scores spellings after BOS, but {tok.folder / 'tokenizer.model'} has no BOS")
        reader = base_processor(tok, base_n, for_pieces=False)
        encode = lambda text: reader.encode(text, out_type=int)  # noqa: E731
    raise_if_problems("cannot resize", problems)
    contexts, windows = calibration_ids(cfg.calibration_text, encode, bos_id)
    return spell_with_base_model(cfg.model, plan.sources, contexts, windows, cfg.device, cfg.trust_remote_code,
                                 progress)


def _grow_embeddings(layout: EmbeddingLayout, plan: RowPlan, std: float, seed: int, spelling=None) -> dict:
    import torch
    from safetensors import safe_open

    def grow(info: TensorInfo, stream: int):
        with safe_open(str(info.file), framework="pt") as fh:
            old = fh.get_tensor(info.name)
        bad = int((~torch.isfinite(old)).sum()) if old.is_floating_point() else 0
        if bad:  # new rows are means of old ones: NaN/inf would spread into them
            rows = torch.nonzero((~torch.isfinite(old)).reshape(old.shape[0], -1).any(dim=1)).flatten().tolist()
            raise UserError(f"{info.file}: {info.name} holds {bad} non-finite values (NaN/inf) in {len(rows)} rows "
                            f"(e.g. {rows[:5]}); the base model is broken, resize refuses to copy it")
        generator = torch.Generator().manual_seed(seed * 2 + stream)
        grown = grow_rows(old, plan, std, generator)
        if stream == 1 and spelling is not None:  # output rows only
            apply_spelling(grown, old, plan.sources, spelling)
        return grown

    replaced = {layout.input.name: grow(layout.input, 0)}
    if layout.output is not None and layout.output.name != layout.input.name:
        # A tied model stored twice keeps one matrix: the output copy is the grown input.
        replaced[layout.output.name] = (replaced[layout.input.name].clone() if layout.tied
                                        else grow(layout.output, 1))
    return replaced
