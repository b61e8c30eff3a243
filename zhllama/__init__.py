"""Shared plumbing for the zhllama phases: errors, content hashing, atomic outputs, configs.

The phases themselves live in the top-level packages ``vocab``, ``pretrain`` and ``sft``.
Nothing here imports torch, so the standalone tokenizer merge stays torch-free.
"""
