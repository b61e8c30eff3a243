"""zhllama pretrain phase."""
