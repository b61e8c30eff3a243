"""zhllama vocab phase."""
