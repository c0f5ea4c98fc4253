"""Where a short run's wall time goes: the train loop of a config, timed by a hook after every step.

  python benchmarks/loop_timeline.py                                          # configs/speedrun_shakespeare.py
  python benchmarks/loop_timeline.py --config=configs/pretrain_shakespeare.py --config.train.steps=300

Prints the time from lm.train.run's start to the first step's end (set-up, compiles), the evaluations (the steps
after which the gap is over 5x the median), the median step and what follows the last step. A cold compile each
time (no persistent compilation cache). Prints a table; asserts nothing.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
from lm import cpu  # noqa: E402

cpu.keep_freed_memory()  # as launch.py does, before anything allocates

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lm import hooks, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/speedrun_shakespeare.py", "Config to time.")


def main(argv):
  del argv
  config = _CONFIG.value
  config.train.progress = False
  config.eval.sample_tokens = 0
  config.checkpoint.every = 10**9
  ends = []
  timer = hooks.Hook(lambda info: ends.append(time.perf_counter()), every=1)  # runs after the evaluation hook
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    train.run(config, workdir, hooks=[timer])
    t1 = time.perf_counter()
  gaps = np.diff(ends)
  median = float(np.median(gaps))
  evals = [(i + 2, g) for i, g in enumerate(gaps) if g > 5 * median]
  rows = [("wall (lm.train.run)", f"{t1 - t0:.2f} s"), ("first step done", f"{ends[0] - t0:.2f} s"),
          ("median step", f"{median * 1e3:.1f} ms"),
          *[(f"step {s} + evaluation", f"{g:.2f} s") for s, g in evals],
          ("after the last step", f"{t1 - ends[-1]:.2f} s")]
  for name, value in rows:
    print(f"{name:24s} {value}")


if __name__ == "__main__":
  app.run(main)
