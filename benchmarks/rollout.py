"""Policy-gradient step time: the rollout (sampling + reference scoring on the devices, rewards on the host,
advantages) against the update, and sampled tokens/s.

  python benchmarks/rollout.py --config.checkpoint.init_from=runs/sft_addition_mix    # the headline GRPO run
  python benchmarks/rollout.py --config=configs/pg_addition_ppo.py --steps=20
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/rollout.py      # rows split over 4 devices

The objective's real rollout (lm/rl/rollout.py) and the real jitted, donated train step, as lm/train.py runs
them, after `--warmup` untimed steps. Wall and CPU (process) seconds are both printed: on a shared machine the
CPU time is the steadier of the two. Prints a table; asserts nothing.
"""
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lm import cpu  # noqa: E402

cpu.keep_freed_memory()  # as launch.py does, before anything allocates

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lm import objectives, optim, sharding, train  # noqa: E402
from lm import step as step_lib  # noqa: E402
from lm.setup import Setup  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pg_addition.py", "Policy-gradient config.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps (rollout + update) after warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation).")


class Clock:
  """Wall and process-CPU seconds of named parts, each part waited for (block_until_ready) before it stops."""

  def __init__(self):
    self.wall, self.cpu = collections.defaultdict(list), collections.defaultdict(list)

  def wrap(self, name, fn):
    def timed(*args, **kwargs):
      w, c = time.perf_counter(), time.process_time()
      out = jax.block_until_ready(fn(*args, **kwargs))
      self.wall[name].append(time.perf_counter() - w)
      self.cpu[name].append(time.process_time() - c)
      return out
    return timed

  def clear(self):
    self.wall.clear()
    self.cpu.clear()


def main(argv):
  del argv
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
  config = _CONFIG.value
  if config.objective.name != "policy_gradient":
    raise app.UsageError(f"{config.objective.name!r} is not a policy-gradient config")
  setup = Setup(config)
  clock = Clock()
  with setup.use():
    objective = objectives.build(setup)
    rollout = objective.batches
    optimizer, schedule = optim.make_optimizer(config.train)
    state = step_lib.init_state(setup, optimizer, train.initial_params(setup, objective), config.seed)
    step_fn = step_lib.jit_train_step(
        step_lib.make_train_step(objective.loss_fn, optimizer, schedule, config.train.grad_accum,
                                 updates_per_step=objective.updates_per_step),
        jax.tree.map(lambda x: x.sharding, state), setup.mesh)
    # The rollout's compiled programs, timed apart from the host work between them (rewards).
    rollout._sample = clock.wrap("sample (device)", rollout._sample)  # pylint: disable=protected-access
    rollout._score = clock.wrap("reference log-probs (device)", rollout._score)  # pylint: disable=protected-access
    rollout._finish = clock.wrap("advantages, stats (device)", rollout._finish)  # pylint: disable=protected-access
    make_rollout, update = clock.wrap("rollout", rollout), clock.wrap("update", step_fn)
    answer_tokens = []
    for step in range(_WARMUP.value + _STEPS.value):
      if step == _WARMUP.value:
        clock.clear()
        answer_tokens.clear()
      data = make_rollout(step, state.params)
      answer_tokens.append(data.stats["answer_len"] * config.train.batch_size)
      state, _ = update(state, sharding.global_batch(data.rows, setup.mesh))

  med = lambda xs: float(np.median(xs)) if xs else 0.0
  total_wall = med(clock.wall["rollout"]) + med(clock.wall["update"])
  total_cpu = med(clock.cpu["rollout"]) + med(clock.cpu["update"])
  o, rows = config.objective, config.train.batch_size
  print(f"{config.objective.algorithm}: {rows} rows x {o.max_new_tokens} new tokens, {setup.mesh.size} device(s) "
        f"({jax.process_count()} process(es)), median of {_STEPS.value} steps after {_WARMUP.value} warm-up")
  print(f"{'part':<32}{'wall ms':>10}{'cpu ms':>10}{'share':>8}")
  device = ("sample (device)", "reference log-probs (device)", "advantages, stats (device)")
  host = [r - sum(p) for r, *p in zip(clock.wall["rollout"], *(clock.wall[d] for d in device))]
  parts = [("rollout", clock.wall["rollout"], clock.cpu["rollout"]),
           *[("  " + d, clock.wall[d], clock.cpu[d]) for d in device[:2]],
           ("  rewards, host, transfers", host, []),
           ("  " + device[2], clock.wall[device[2]], clock.cpu[device[2]]),
           ("update", clock.wall["update"], clock.cpu["update"])]
  for name, wall, cpu_s in parts:
    share = f"{100 * med(wall) / total_wall:.0f}%" if name.strip() in ("rollout", "update") else ""
    print(f"{name:<32}{1000 * med(wall):>10.1f}{1000 * med(cpu_s) if cpu_s else float('nan'):>10.1f}{share:>8}")
  print(f"{'step':<32}{1000 * total_wall:>10.1f}{1000 * total_cpu:>10.1f}")
  sampled = med(answer_tokens)
  print(f"sampled tokens/s: {sampled / med(clock.wall['rollout']):,.0f} per rollout wall second "
        f"({sampled:.0f} answer tokens per rollout; {rows * o.max_new_tokens} slots)")


if __name__ == "__main__":
  app.run(main)
