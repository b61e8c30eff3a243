"""Merge a Chinese SentencePiece model into a LLaMA-family base: ``merge_tokenizers``.

Writes an HF tokenizer folder (tokenizer.model, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, merge_report.json) atomically. Pieces 0..N-1 are the base's, byte for
byte; appended Chinese pieces follow; then the optional ``<pad>`` and the ``<reserved_K>``
padding pieces (CONTROL: never produced from text by either backend). Never imports torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as pb

from zhllama.errors import UserError, raise_if_problems
from zhllama.files import atomic_output_dir, sha256_file, write_json_atomic

from . import verify as invariants
from .hf_export import build_backend, write_hf_folder
from .merge_policy import DEFAULT_POLICY, POLICIES, select_pieces
from .merge_reach import Appended, append_reachable, assemble
from .spm_proto import CONTROL, LoadedModel, check_base_supported, new_piece, resolve_sentencepiece

PAD_PIECE = "<pad>"
RESERVED_FORMAT = "<reserved_{}>"


def _input_record(model: LoadedModel, given: str | Path) -> dict[str, Any]:
    return {
        "path": str(given),
        "model_file": str(model.path),
        "sha256": sha256_file(model.path),
        "vocab_size": len(model.proto.pieces),
        "model_type": model.model_type,
    }


def _base_folder_config(base: LoadedModel) -> tuple[dict[str, Any], Path | None]:
    """The base folder's tokenizer_config.json (special tokens, chat template), checked."""
    if base.folder is None or not (base.folder / "tokenizer_config.json").is_file():
        return {}, None
    path = base.folder / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    n = len(base.proto.pieces)
    beyond = {int(i): tok.get("content") for i, tok in config.get("added_tokens_decoder", {}).items() if int(i) >= n}
    if beyond:
        raise UserError(f"{path}: added tokens beyond the SentencePiece model ({beyond}) would collide with the "
                        "appended Chinese pieces; merging such a folder is not supported yet (use --add-pad-token "
                        "for <pad>)")
    template = base.folder / "chat_template.jinja"
    return config, template if template.is_file() else None


def _append_specials(proto: pb.ModelProto, add_pad_token: bool, multiple: int | None) -> dict[str, Any]:
    """``<pad>`` right after the real pieces (Chinese-Alpaca's 49953), then reserved padding."""
    have = {p.piece for p in proto.pieces}
    info: dict[str, Any] = {"pad_token": None, "reserved": {"count": 0, "first_id": None}}
    if add_pad_token:
        if PAD_PIECE in have:
            raise UserError(f"--add-pad-token: the vocabulary already has {PAD_PIECE}")
        # trainer_spec is left as the base's (pad_id -1 for LLaMA) so that truncating the pieces
        # gives back the base file byte for byte (see base_model_bytes); HF gets pad_token.
        proto.pieces.append(new_piece(PAD_PIECE, 0.0, CONTROL))
        info["pad_token"] = {"piece": PAD_PIECE, "id": len(proto.pieces) - 1}
    if multiple:
        first, k = len(proto.pieces), 0
        while len(proto.pieces) % multiple:
            name = RESERVED_FORMAT.format(k)
            k += 1
            if name not in have:
                proto.pieces.append(new_piece(name, 0.0, CONTROL))
        info["reserved"] = {"count": len(proto.pieces) - first, "first_id": first if len(proto.pieces) > first else None,
                            "format": RESERVED_FORMAT, "type": "CONTROL"}
    return info


def base_model_bytes(merged_dir: str | Path) -> bytes:
    """The base tokenizer.model a merged folder was built from, byte for byte.

    Pieces 0..N-1 and trainer/normalizer specs are untouched by the merge, so dropping the
    appended pieces restores the base file exactly; its sha256 equals the report's base.sha256.
    """
    from .spm_proto import load_model_proto

    merged_dir = Path(merged_dir)
    report = json.loads((merged_dir / "merge_report.json").read_text(encoding="utf-8"))
    proto = load_model_proto(merged_dir / "tokenizer.model")
    del proto.pieces[report["base_vocab_size"]:]
    return proto.SerializeToString()


def _setting_problems(policy: str, pad_to_multiple_of: int | None) -> list[str]:
    problems = []
    if policy not in POLICIES:
        problems.append(f"--policy {policy!r}: choose one of {', '.join(POLICIES)}")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        problems.append(f"--pad-to-multiple-of {pad_to_multiple_of}: must be a positive integer")
    return problems


def _load_inputs(base: str | Path, add: str | Path, out: str | Path, overwrite: bool, problems: list[str]):
    """Load both models, reporting every problem (``problems`` from the settings included) at once,
    before the slow merge."""
    models = []
    for path, role in ((base, "base"), (add, "add")):
        try:
            model = resolve_sentencepiece(path, role)
            if role == "base":
                check_base_supported(model)
            models.append(model)
        except UserError as exc:
            problems.append(str(exc).replace("\n", "\n    "))
    if Path(out).exists() and not overwrite:
        problems.append(f"output folder {out} already exists (pass --overwrite to replace it)")
    raise_if_problems("cannot merge", problems)
    return models[0], models[1]


def merge_tokenizers(base: str | Path, add: str | Path, out: str | Path, *, policy: str = DEFAULT_POLICY,
                     pad_to_multiple_of: int | None = None, add_pad_token: bool = False,
                     overwrite: bool = False, verify: bool = True) -> dict[str, Any]:
    """Merge ``add`` into ``base`` and write the folder ``out``; returns merge_report.json's dict."""
    base_model, add_model = _load_inputs(base, add, out, overwrite, _setting_problems(policy, pad_to_multiple_of))
    base_config, chat_template = _base_folder_config(base_model)

    selection = select_pieces(base_model.proto, add_model.proto, policy)
    if selection.tied_zero_scores:
        appended = Appended(assemble(base_model.proto, selection.pieces, tied_zero=True), len(selection.pieces))
    else:
        appended = append_reachable(base_model.proto, selection.pieces, repair=selection.fix_reachability)
    merged = appended.proto
    n_base, n_real = len(base_model.proto.pieces), len(merged.pieces)
    if not selection.fix_reachability:  # still say how many pieces BPE cannot produce
        backends = invariants.Backends(merged, build_backend(merged, add_bos=False))
        appended.unreachable_found = len(invariants.unreachable_pieces(backends, range(n_base, n_real)))
    specials = _append_specials(merged, add_pad_token, pad_to_multiple_of)

    report: dict[str, Any] = {
        "base": _input_record(base_model, base),
        "add": _input_record(add_model, add),
        "policy": policy,
        "base_vocab_size": n_base,
        "real_vocab_size": n_real,
        "vocab_size": len(merged.pieces),
        "added": n_real - n_base,
        "added_breakdown": {
            "from_add_model": len(set(selection.pieces) - set(appended.dropped)),
            "required_characters": len(appended.required_characters),
            "intermediate_pieces": len(appended.intermediates),
        },
        "skipped_duplicate": selection.skipped_duplicate,
        "skipped_by_policy": len(selection.skipped_by_policy),
        "skipped_by_policy_examples": selection.skipped_by_policy[:20],
        "unreachable": {
            "action": "made reachable with intermediate pieces; the rest dropped" if selection.fix_reachability
            else "none: kept as the policy appends them (sentencepiece or HF cannot produce them)",
            "found": appended.unreachable_found,
            "made_reachable": appended.unreachable_found - len(appended.dropped) if selection.fix_reachability else 0,
            "dropped": len(appended.dropped),
            "dropped_pieces": appended.dropped[:50],
        },
        "scores": {"appended": "all 0 (tied)" if selection.tied_zero_scores else
                   "unique, strictly decreasing, below every base score",
                   "lowest_base": min(p.score for p in base_model.proto.pieces)},
        "special_ids": {k: getattr(merged.trainer_spec, f"{k}_id") for k in ("unk", "bos", "eos")},
        "pad_to_multiple_of": pad_to_multiple_of,
        **specials,
        "hf_guarantee": invariants.HF_GUARANTEE,
    }
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        (tmp / "tokenizer.model").write_bytes(merged.SerializeToString())
        write_hf_folder(merged, tmp, base_config, pad_token=PAD_PIECE if add_pad_token else None,
                        chat_template_file=chat_template)
        if verify:
            english = invariants.SAMPLE_ENGLISH + invariants.python_source_lines()
            checks = invariants.run_checks(base_model.proto, merged, tmp / "tokenizer.json",
                                           range(n_base, n_real), english, english + invariants.SAMPLE_CHINESE)
            report["checks"] = checks
            failed = [f"{name}: {json.dumps(c, ensure_ascii=False)[:300]}" for name, c in checks.items() if not c["ok"]]
            if failed:
                raise UserError(f"--verify failed for policy {policy!r}; nothing was written to {out} "
                                "(pass --no-verify to write it anyway)", failed)
        else:
            report["checks"] = {"skipped": "verify=False (--no-verify)"}
        write_json_atomic(tmp / "merge_report.json", report)
    return report
