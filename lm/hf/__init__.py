"""Hugging Face checkpoints in and out: convert.py (names, layouts, configs), load.py (import), export.py (CLI)."""
