"""python -m corpora COMMAND — corpus manifests: check what each source holds."""
from zhllama.cli import main_for

COMMANDS = {
    "check": "corpora.check_cli",
    "near-dups": "corpora.near_dup_cli",
}

if __name__ == "__main__":
    main_for("corpora", COMMANDS, __doc__.splitlines()[0])
