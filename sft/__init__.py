"""zhllama sft phase."""
