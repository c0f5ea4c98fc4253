"""One metrics schema for every stage: JSONL (one object per event) plus TensorBoard, written by process 0.

Every event has `step` and `split` ("train" or "eval"); `loss` is nats per token.
"""
import json
import os
import sys

import jax
import numpy as np


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "dtype"):
    v = np.asarray(v).item() if np.asarray(v).size == 1 else np.asarray(v).tolist()
  return v


class Writer:

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      truncate_after(self.path, resume_step)
    elif os.path.exists(self.path):
      os.remove(self.path)
    self._tb = _summary_writer()(os.path.join(workdir, "tb"))

  def write(self, step: int, split: str, metrics: dict):
    if not self.enabled:
      return
    event = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(event) + "\n")
    for k, v in event.items():
      if k not in ("step", "split") and isinstance(v, (int, float)):
        self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def close(self):
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError:  # disk full or gone: the run is already stopping with that error
        # tensorboardX closes its files again at exit; mark them closed so that does not print a traceback
        for w in self._tb.all_writers.values():
          w.event_writer._closed = True  # pylint: disable=protected-access


def _summary_writer():
  """tensorboardX's SummaryWriter (only process 0 needs it), imported without torch: tensorboardX imports torch
  when it is installed (it is, for the tests) only to accept torch tensors, and that took 3.4 s of every run's
  start here. A None entry in sys.modules makes its `import torch` fail as if torch were absent."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def truncate_after(path: str, step: int):
  """A resumed run drops the events logged after its checkpoint, so the file reads as one straight run."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)


def read(workdir: str, split: str | None = None) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    events = [json.loads(line) for line in f if line.strip()]
  return [e for e in events if split is None or e["split"] == split]
