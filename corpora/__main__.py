"""python -m corpora COMMAND — corpus manifests: check what each source holds, find near-duplicates and low-quality documents."""
from zhllama.cli import main_for

COMMANDS = {
    "check": "corpora.check_cli",
    "near-dups": "corpora.near_dup_cli",
    "quality": "corpora.quality_cli",
    "perplexity": "corpora.perplexity_cli",
}

if __name__ == "__main__":
    main_for("corpora", COMMANDS, __doc__.splitlines()[0])
