"""Supervised fine-tuning rows: chat-formatted examples packed into fixed-length rows.

An example is `BOS <user> prompt <assistant> answer EOS` (lm/chat.py), loss on `answer EOS` only. It fills
len(ids) - 1 slots of a row (inputs ids[:-1], targets ids[1:]), with its own segment id and positions from 0,
so the model's segment mask keeps examples from attending to each other; unused slots are segment 0.

The packed rows are built once; training batch k is rows [kB, (k+1)B) of the rows shuffled afresh each epoch
with the seed (a grain MapDataset), a pure function of (seed, k), so resuming needs only the step.
"""
import logging

import grain
import numpy as np

from lm import chat
from lm import sharding
from lm.data import lm_batches
from lm.errors import UserError

log = logging.getLogger(__name__)

OVERLONG = ("truncate", "drop")
MAX_OPEN = 64


def example_ids(tokenizer, rec: dict, system: str = "") -> tuple:
  """{"prompt", "answer"} or {"messages"} -> (ids, loss mask), both int32 [n]."""
  if rec.get("messages"):
    messages = list(rec["messages"])
    if system and messages[0]["role"] != "system":
      messages = [{"role": "system", "content": system}] + messages
    return chat.messages_ids(tokenizer, messages)
  p = chat.prompt_ids(tokenizer, rec["prompt"], system or None)
  a = chat.answer_ids(tokenizer, rec["answer"])
  return np.concatenate([p, a]).astype(np.int32), np.concatenate([np.zeros_like(p), np.ones_like(a)]).astype(np.int32)


def fit(ids, mask, seq_len: int, overlong: str, where: str):
  """(ids, mask, status) with status "ok", "truncated" or "dropped" (ids None) for a row of seq_len slots.

  A prompt that leaves no room for one answer token is an error under either policy: truncating it would
  train on nothing, and dropping it would silently hide data that can never fit this context.
  """
  first = int(np.argmax(mask > 0)) if mask.any() else len(ids)
  if first > seq_len:
    raise UserError(f"{where}: the prompt is {first} tokens (with the chat template), longer than the context "
                    f"data.seq_len={seq_len}; shorten it, or fine-tune a model with a longer model.max_len")
  if len(ids) - 1 <= seq_len:
    return ids, mask, "ok"
  if overlong == "drop":
    return None, None, "dropped"
  return ids[:seq_len + 1], mask[:seq_len + 1], "truncated"


def prepare(tokenizer, records, seq_len: int, overlong: str = "truncate", system: str = "", name: str = "SFT data"):
  """Records (any random-access sequence, e.g. a TFDS source mapped to dicts) -> (list of (ids, mask), counts)."""
  if overlong not in OVERLONG:
    raise UserError(f"objective.overlong={overlong!r} must be one of {', '.join(OVERLONG)}")
  ds = grain.MapDataset.source(records).map(lambda r: (r.get("where", ""), *example_ids(tokenizer, r, system)))
  out, counts = [], {"examples": 0, "truncated": 0, "dropped": 0}
  for i in range(len(ds)):
    where, ids, mask = ds[i]
    ids, mask, status = fit(ids, mask, seq_len, overlong, where or f"{name} example {i}")
    counts["examples"] += 1
    if status != "ok":
      counts[status] += 1
    if ids is not None:
      out.append((ids, mask))
  if not out:
    raise UserError(f"{name} is empty" + (f" after dropping {counts['dropped']} examples longer than "
                                          f"data.seq_len={seq_len}" if counts["dropped"] else ""))
  log.info("%s: %d examples, %d truncated, %d dropped (longer than data.seq_len=%d, objective.overlong=%s)",
           name, counts["examples"], counts["truncated"], counts["dropped"], seq_len, overlong)
  return out, counts


def pack(examples, seq_len: int) -> dict:
  """First-fit packing of (ids, mask) examples, in the given order, into rows of the shared batch format."""
  lengths = np.array([len(ids) - 1 for ids, _ in examples])
  if (lengths > seq_len).any():
    raise ValueError("pack: an example is longer than seq_len; run fit() first")
  # Rows that can no longer take the shortest example are closed, and at most MAX_OPEN rows stay open (oldest
  # closed first), so packing stays linear in the number of examples whatever their lengths.
  shortest = int(lengths.min()) if len(lengths) else 1
  remaining, open_rows, row_of = [], [], np.empty(len(examples), np.int64)
  for i, n in enumerate(lengths):
    r = next((r for r in open_rows if remaining[r] >= n), None)
    if r is None:
      r = len(remaining)
      remaining.append(seq_len)
      open_rows.append(r)
    row_of[i] = r
    remaining[r] -= n
    if remaining[r] < shortest:
      open_rows.remove(r)
    elif len(open_rows) > MAX_OPEN:
      open_rows.pop(0)
  n_rows = len(remaining)
  rows = {k: np.zeros((n_rows, seq_len), np.float32 if k == "weights" else np.int32) for k in lm_batches.FIELDS}
  fill, segments = np.zeros(n_rows, np.int64), np.zeros(n_rows, np.int32)
  for (ids, mask), r in zip(examples, row_of):
    n, s = len(ids) - 1, fill[r]
    segments[r] += 1
    rows["inputs"][r, s:s + n] = ids[:-1]
    rows["targets"][r, s:s + n] = ids[1:]
    rows["weights"][r, s:s + n] = mask[1:]
    rows["positions"][r, s:s + n] = np.arange(n)
    rows["segment_ids"][r, s:s + n] = segments[r]
    fill[r] += n
  return rows


class PackedBatches:
  """step -> this process's rows of global batch `step`, from fixed rows (any dict of arrays with rows first:
  packed SFT rows, preference pairs) reshuffled every epoch."""

  def __init__(self, rows: dict, global_batch: int, seed: int):
    n = len(next(iter(rows.values())))
    if n < global_batch:
      log.info("only %d packed rows for a batch of %d: rows repeat within a batch", n, global_batch)
    self.rows, self.local = rows, sharding.local_rows(global_batch)
    ds = grain.MapDataset.range(n).shuffle(seed=seed % 2**32).repeat()
    self.dataset = ds.batch(global_batch, drop_remainder=True).map(self._gather)

  def _gather(self, idx) -> dict:
    idx = np.asarray(idx)[self.local]
    return {k: v[idx] for k, v in self.rows.items()}

  def __call__(self, step: int, params=None) -> dict:
    return self.dataset[step]


def eval_batches(rows: dict, global_batch: int):
  """Every row once, in order; the last batch padded with empty rows (weight 0)."""
  n = len(next(iter(rows.values())))
  local = sharding.local_rows(global_batch)
  for start in range(0, n, global_batch):
    batch = {}
    for k, v in rows.items():
      part = v[start:start + global_batch]
      if len(part) < global_batch:
        part = np.concatenate([part, np.zeros((global_batch - len(part),) + v.shape[1:], v.dtype)])
      batch[k] = part[local]
    yield batch


def utilization(rows: dict) -> float:
  return float((rows["segment_ids"] > 0).mean())
