"""python -m vocab COMMAND — Chinese vocabulary: train, merge, stats, resize, manifest checks."""
from zhllama.cli import main_for

# One registry; tests check every entry imports and has add_arguments/run.
COMMANDS = {
    "merge": "vocab.merge_cli",
    "train": "vocab.train_cli",
    "stats": "vocab.stats_cli",
    "resize": "vocab.resize_cli",
    "manifest": "vocab.manifest_cli",  # alias of `python -m corpora check`,
}

if __name__ == "__main__":
    main_for("vocab", COMMANDS, __doc__.splitlines()[0])
