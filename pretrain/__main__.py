"""python -m pretrain COMMAND — continued pretraining: prepare shards, train on DeepSpeed."""
from zhllama.cli import main_for

COMMANDS = {
    "prepare": "pretrain.prepare_cli",
    "train": "pretrain.train_cli",
    "export-checkpoint": "pretrain.export_checkpoint_cli",
}

if __name__ == "__main__":
    main_for("pretrain", COMMANDS, __doc__.splitlines()[0])
