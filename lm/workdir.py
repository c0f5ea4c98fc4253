"""A run directory (--workdir): the config it holds, its checkpoints, and the signals that stop a run in it.

`config.json` is written only once training really starts, so a launch that fails never blocks its own fix.
A rerun with a config that would change the run's results is refused, naming the keys; keys that cannot change
results (progress, logging, evaluation and checkpoint cadence, a longer train.steps when the schedule does
not depend on it) are not compared.
"""
import json
import os
import signal
import threading

import jax

from lm import checkpoint as ckpt_lib
from lm import config as config_lib
from lm.errors import Preempted, UserError


def _fs_error(what: str, path: str, e: OSError) -> UserError:
  return UserError(f"cannot {what} {path}: {e.strerror or e}; choose a --workdir you can write to")


class Workdir:

  def __init__(self, path: str, config, allow_change: bool = False):
    self.path, self.config = path, config
    self.flat_config = config_lib.to_flat(config)
    if os.path.exists(path) and not os.path.isdir(path):
      raise UserError(f"workdir {path} is a file, not a directory; choose another --workdir")
    file = os.path.join(path, "config.json")
    if os.path.exists(file) and not allow_change:
      try:
        with open(file) as f:
          old = config_lib.flatten(json.load(f))
      except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file} ({e}); move it away, or pass --override_config") from None
      diff = config_lib.result_diff(old, self.flat_config)
      if diff:
        raise UserError(f"workdir {path} holds a run with a different config ({'; '.join(diff)}); use another "
                        "--workdir for a new run, or pass --override_config to continue this one with the new "
                        "config")
    if jax.process_index() == 0:
      try:
        os.makedirs(path, exist_ok=True)
      except OSError as e:
        raise _fs_error("create workdir", path, e) from None
      if not os.access(path, os.W_OK):
        raise UserError(f"workdir {path} is not writable; choose a --workdir you can write to")

  def checkpointer(self, keep: int) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(self.path, "checkpoints"), keep=keep, best_metric="bits_per_byte")

  def write_config(self):
    if jax.process_index() != 0:
      return
    file = os.path.join(self.path, "config.json")
    try:
      with open(file + ".tmp", "w") as f:
        json.dump(self.config.to_dict(), f, indent=2, sort_keys=True, default=str)
      os.replace(file + ".tmp", file)
    except OSError as e:
      raise _fs_error("write", file, e) from None


class Interrupts:
  """SIGTERM (preemption) and SIGINT (Ctrl-C) set a flag; the loop saves a checkpoint at the next step boundary
  and stops, exiting 143 or 130. A second Ctrl-C stops at once."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._old.items():
      signal.signal(s, handler)
    self._old = {}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def stopped(self, message: str) -> Preempted:
    name = "Ctrl-C" if self.signum == signal.SIGINT else "SIGTERM"
    return Preempted(f"{name}: {message}", status=130 if self.signum == signal.SIGINT else 143)
