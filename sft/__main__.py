"""python -m sft COMMAND — instruction tuning (SFT, DPO, KTO, GRPO), LoRA export, chat vectors, generation, chat, serving."""
from zhllama.cli import main_for

COMMANDS = {
    "train": "sft.train_cli",
    "export": "sft.export_cli",
    "export-checkpoint": "sft.export_checkpoint_cli",
    "chat-vector": "sft.chat_vector_cli",
    "modelfile": "sft.modelfile_cli",
    "generate": "sft.generate_cli",
    "chat": "sft.chat_cli",
    "serve": "sft.serve_cli",
}

if __name__ == "__main__":
    main_for("sft", COMMANDS, __doc__.splitlines()[0])
