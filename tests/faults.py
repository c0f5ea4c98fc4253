"""launch.py with one extra train-loop hook that kills the run at a chosen point, for the resume tests:

  python tests/faults.py FAULT --config=... --workdir=...
  FAULT: step:N  SIGKILL after step N, once every checkpoint before it is complete (so a rerun must resume)
         save:N  SIGKILL right after checkpoint N's asynchronous save started (a half-written checkpoint)
         term:N  SIGTERM after step N (the run saves a checkpoint at that step and exits 143)
         int:N   SIGINT (Ctrl-C) after step N (the same, exit 130)
"""
import functools
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import launch  # noqa: E402
from absl import app  # noqa: E402
from lm import hooks  # noqa: E402

SIGNALS = {"step": signal.SIGKILL, "save": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def fault(spec: str) -> hooks.Hook:
  where, _, n = spec.partition(":")
  n = int(n)

  def fn(info):
    if info.step == n:
      if where == "step":
        info.checkpointer.wait()
      os.kill(os.getpid(), SIGNALS[where])

  return hooks.Hook(fn, every=1, at_end=False, after_checkpoint=where == "save")


if __name__ == "__main__":
  spec = sys.argv.pop(1)
  app.run(functools.partial(launch.main, hooks=[fault(spec)]), flags_parser=launch.parse_flags)
