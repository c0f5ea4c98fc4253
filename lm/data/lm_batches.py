"""Next-token batches from a text dataset: random training windows and contiguous eval windows.

Batch format shared by every token-level objective (pretrain, SFT): `inputs`, `targets`, `weights`,
`positions`, `segment_ids`, each [rows, seq_len]. Segment 0 is padding.

Training batch k is a pure function of (seed, k), built through a grain MapDataset, so resuming needs only
the step, and any number of processes read the same global batch (each its own rows).
"""
import grain
import numpy as np

from lm import sharding
from lm.data import sources
from lm.errors import UserError

FIELDS = ("inputs", "targets", "weights", "positions", "segment_ids")  # weights float32, the rest int32


def shapes(rows: int, seq_len: int) -> dict:
  """The batch format as ShapeDtypeStructs (global shapes), for compiling without data."""
  import jax
  import jax.numpy as jnp
  return {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.float32 if k == "weights" else jnp.int32) for k in FIELDS}


def split_tokens(data_cfg, split: str, tokenizer) -> np.ndarray:
  """All documents of a split as one token stream (EOS between documents)."""
  ds = grain.MapDataset.source(sources.source(data_cfg, split)).map(lambda ex: ex["text"])
  docs = [ds[i] for i in range(len(ds))]
  if not docs or not any(docs):
    raise UserError(f"dataset {data_cfg.name!r} split {split!r} is empty")
  if len(docs) == 1:
    return tokenizer.encode(docs[0])
  return np.concatenate([tokenizer.encode(d, eos=True) for d in docs])


def windows_to_batch(windows: np.ndarray, weights: np.ndarray | None = None) -> dict:
  """[rows, T+1] token windows -> the shared batch format."""
  rows, t1 = windows.shape
  w = np.ones((rows, t1 - 1), np.float32) if weights is None else weights.astype(np.float32)
  return {
      "inputs": windows[:, :-1].astype(np.int32),
      "targets": windows[:, 1:].astype(np.int32),
      "weights": w,
      "positions": np.broadcast_to(np.arange(t1 - 1, dtype=np.int32), (rows, t1 - 1)).copy(),
      "segment_ids": (w > 0).astype(np.int32) if weights is not None else np.ones((rows, t1 - 1), np.int32),
  }


class RandomWindows:
  """Uniformly random windows of seq_len + 1 tokens, as nanoGPT samples them."""

  def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int):
    if len(tokens) < seq_len + 2:
      raise UserError(f"training text has {len(tokens)} tokens, fewer than data.seq_len + 2 = {seq_len + 2}")
    self.tokens, self.seq_len, self.global_batch, self.seed = tokens, seq_len, global_batch, seed
    self.rows = sharding.local_rows(global_batch)
    self.dataset = grain.MapDataset.range(2**62).map(self._make)

  def _make(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, int(step)])
    starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.global_batch)[self.rows]
    return windows_to_batch(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)])

  def __call__(self, step: int, params=None) -> dict:
    return self.dataset[step]


def eval_batches(tokens: np.ndarray, seq_len: int, global_batch: int, max_batches: int = 0):
  """Contiguous windows predicting every token of the split (after the first) exactly once, padded rows last."""
  n_targets = len(tokens) - 1
  n_windows = -(-n_targets // seq_len)
  n_batches = -(-n_windows // global_batch)
  if max_batches:
    n_batches = min(n_batches, max_batches)
  rows = sharding.local_rows(global_batch)
  padded = np.concatenate([tokens, np.zeros(n_batches * global_batch * seq_len + 1 - len(tokens), tokens.dtype)]) \
      if n_batches * global_batch * seq_len + 1 > len(tokens) else tokens
  for b in range(n_batches):
    idx = (b * global_batch + np.arange(global_batch))[rows]
    starts = idx * seq_len
    windows = padded[starts[:, None] + np.arange(seq_len + 1)]
    pos = starts[:, None] + np.arange(1, seq_len + 1)  # index of each target in the stream
    yield windows_to_batch(windows, weights=(pos <= n_targets))
