"""Evaluation that guards the model: held-out bits per character, C-Eval/CMMLU/MMLU by letter logits,
and the forgetting report. Shared by the engine (in-training evaluation) and ``python -m evaluation``.
Importing this package does not import torch."""
