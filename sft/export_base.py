"""Is ``--base`` the model the LoRA run was trained on? A same-shape wrong base merges without error.

The run's ``train_report.json`` (in RUN/final) records ``base_model_fingerprint``
(``zhllama.model_fingerprint``: config settings + every weight file's sha256). Older runs record
only the base's path (``base_model`` / the adapter's ``base_model_name_or_path``): when that
folder still exists it is fingerprinted instead. ``--force`` merges anyway; the report says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from zhllama.errors import UserError
from zhllama.model_fingerprint import config_differences, model_fingerprint


def _recorded(run_dir: Path) -> tuple[str | None, str | None]:
    """(fingerprint, path) of the base the run recorded, each None when unknown."""
    fingerprint = path = None
    report = run_dir / "train_report.json"
    if report.is_file():
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
            fingerprint, path = data.get("base_model_fingerprint"), data.get("base_model")
        except ValueError:
            pass
    if path is None and (run_dir / "adapter_config.json").is_file():
        try:
            path = json.loads((run_dir / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        except ValueError:
            pass
    return fingerprint, path


def check_base(base: Path, run_dir: Path, force: bool) -> list[str]:
    """Notes for the export report; UserError when ``base`` is not the run's base (unless ``force``)."""
    fingerprint, path = _recorded(run_dir)
    if fingerprint is None and path and Path(path).is_dir() and (Path(path) / "config.json").is_file():
        fingerprint = model_fingerprint(path)
    if fingerprint is None:
        return [f"the run does not record its base model, so --base {base} could not be verified"]
    if model_fingerprint(base) == fingerprint:
        return [f"--base {base} verified: it is the model the adapter was trained on"]
    differs = config_differences(path, base) if path and Path(path).is_dir() else []
    detail = f" (config differs: {'; '.join(differs)})" if differs else " (other weights or settings)"
    message = (f"--base {base} is not the model the adapter in {run_dir} was trained on (that was {path or 'unknown'}, "
               f"fingerprint {fingerprint[:12]}){detail}; merging into it would give a wrong model. Pass the run's "
               f"base, or --force to merge anyway")
    if not force:
        raise UserError(message)
    return [f"--force: merged into a base that is not the run's: {message}"]
