"""Data: TFDS sources (sources.py), next-token batches (lm_batches.py), prompt/answer data (added per stage)."""
