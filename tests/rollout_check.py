"""Run in a subprocess with 8 simulated devices in all (XLA_FLAGS set by the caller): one process, or one of two
(`--coordinator=host:port --process_id=i`, 4 devices each). Makes two GRPO rollouts of a tiny model (16 rows,
2 per device) and writes, from process 0, an npz with the global rollout (every RolloutBatch field and
statistic), which rows each process scored and each device sampled, and the sampler's collectives.

  python tests/rollout_check.py OUT.npz [--coordinator=127.0.0.1:PORT --process_id=0|1] [--num_devices=1]
"""
import argparse
import re
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

ROWS, GROUP, STEPS = 16, 2, 2


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_devices", type=int, default=0)
  args = parser.parse_args()
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, num_processes=2, process_id=args.process_id)
  from jax.experimental import multihost_utils
  from lm import train
  from lm.objectives import policy_gradient
  from lm.setup import Setup
  from tests.rl.pg_helpers import pg_config
  cfg = pg_config("grpo", group_size=GROUP)  # a tiny model, 6 new tokens
  cfg.train.batch_size = ROWS
  cfg.mesh.num_devices = args.num_devices
  setup = Setup(cfg)
  out, scored, sampled, collectives = {}, [], [], []
  with setup.use():
    obj = policy_gradient.build(setup)
    params = train.initial_params(setup, obj)
    rollout = obj.batches
    score_fn, sample_fn = rollout.score_fn, rollout._sample  # pylint: disable=protected-access

    def score(prompts, responses):  # the host's rewards: which rows did this process score?
      scored.append(len(prompts))
      return score_fn(prompts, responses)

    def sample(*a):
      r = sample_fn(*a)
      sampled.append(sorted((s.device.id, s.index[0].start or 0, s.data.shape[0])
                            for s in r["tokens"].addressable_shards))
      if not collectives:  # what the sampler's compiled program exchanges between devices
        hlo = sample_fn.lower(*a).compile().as_text()
        found = re.findall(r"= (\S+) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\(", hlo)
        collectives.append(sorted({f"{kind} of {shape}" for shape, kind in found}))
      return r

    rollout.score_fn, rollout._sample = score, sample  # pylint: disable=protected-access
    for step in range(STEPS):
      batch, stats = obj.batches(step, params)
      for k, v in vars(batch).items():
        if v is not None:
          out[f"{step}/{k}"] = multihost_utils.process_allgather(v, tiled=True)
      for k, v in stats.items():
        if not k.startswith("time_"):
          out[f"{step}/stat/{k}"] = np.asarray(v)
  # every process's record, gathered: rows scored, (device, first row, rows) sampled
  out["scored"] = multihost_utils.process_allgather(np.asarray(scored))
  out["sampled"] = multihost_utils.process_allgather(np.asarray(sampled))
  out["collectives"] = np.asarray(collectives[0], dtype=str)
  out["devices"] = np.asarray(setup.mesh.size)
  if jax.process_index() == 0:
    np.savez(args.out, **out)


if __name__ == "__main__":
  main()
