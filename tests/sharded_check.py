"""Run in a subprocess with 8 simulated devices (XLA_FLAGS set by the caller): train a tiny model for 5 steps on
several meshes and report losses and whether every param / optimizer-state array has its rule's sharding."""
import json
import sys
import tempfile

import jax
from jax.sharding import PartitionSpec as P

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from lm import metrics, optim, train  # noqa: E402
from lm import step as step_lib  # noqa: E402
from lm.setup import Setup  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

MESHES = {"single": (1, 1, 1, 1), "data8": (8, 1, 1, 0), "fsdp8": (1, 8, 1, 0), "tensor8": (1, 1, 8, 0),
          "2x2x2": (2, 2, 2, 0)}


def config(mesh):
  data, fsdp, tensor, n = MESHES[mesh]
  return tiny_config(**{"model.d_model": 64, "model.n_heads": 8, "model.d_ff": 128, "train.steps": 5,
                        "train.batch_size": 8, "eval.every": 1000, "eval.batch_size": 8, "eval.max_batches": 1,
                        "checkpoint.every": 1000, "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor,
                        "mesh.num_devices": n})


def expected_spec(logical, rules):
  table = dict(rules)
  return P(*[table.get(name) for name in logical])


def check_shardings(cfg):
  import flax.linen as nn
  setup = Setup(cfg)
  with setup.use():
    opt, _ = optim.make_optimizer(cfg.train)
    state = step_lib.init_state(setup, opt, setup.init_params(jax.random.PRNGKey(1)), cfg.seed).to_dict()
    logical = nn.get_partition_spec(setup.abstract_params(boxed=True))
    bad = []
    flat_state = jax.tree_util.tree_leaves_with_path(state["params"])
    flat_logical = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
    for (path, arr), spec in zip(flat_state, flat_logical):
      want = expected_spec(spec, setup.rules)
      if arr.sharding.spec != want and tuple(arr.sharding.spec) + (None,) * (len(want) - len(arr.sharding.spec)) != tuple(want):
        bad.append(f"param {jax.tree_util.keystr(path)}: {arr.sharding.spec} != {want}")
    # Adam moments: every leaf shaped like a param must carry that param's sharding.
    by_path = {jax.tree_util.keystr(p): a.sharding.spec for p, a in flat_state}
    checked = 0
    for path, arr in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
      key = jax.tree_util.keystr(path)
      for pkey, spec in by_path.items():
        if key.endswith(pkey):
          checked += 1
          if arr.sharding.spec != spec:
            bad.append(f"opt {key}: {arr.sharding.spec} != {spec}")
          break
    if checked != 2 * len(by_path):  # Adam's mu and nu for every param
      bad.append(f"checked {checked} moment arrays for {len(by_path)} params")
    sharded_dims = sum(arr.sharding.shard_shape(arr.shape) != arr.shape for _, arr in flat_state)
    return bad, sharded_dims


def layout(cfg):
  """What the test compares with tables written by hand: every param's PartitionSpec, and how a batch of 8 rows
  is laid out (its spec, and the rows each device holds)."""
  import numpy as np
  from lm import sharding
  setup = Setup(cfg)
  with setup.use():
    params = setup.init_params(jax.random.PRNGKey(0))
    specs = {jax.tree_util.keystr(p): [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
             for p, x in jax.tree_util.tree_leaves_with_path(params)}
    batch = sharding.global_batch({"inputs": np.zeros((8, 32), np.int32)}, setup.mesh)["inputs"]
    rows = sorted({s.data.shape[0] for s in batch.addressable_shards})
    spec = [list(a) if isinstance(a, tuple) else a for a in batch.sharding.spec]
  return {"param_specs": specs, "batch_spec": spec, "rows_per_device": rows,
          "batch_devices": len(batch.addressable_shards)}


def es_run(mesh):
  """Two ES steps on a tiny model: the population (8 members) is evaluated over the mesh's batch axes."""
  from lm import objectives
  cfg = config(mesh)
  cfg.objective = objectives.config("es", task="addition", task_options={"digits": 2}, population=8, prompts=4,
                                    max_new_tokens=4, sigma=0.5, eval_examples=4, pass_n=0, kl_prompts=0,
                                    rewards="format:1.0", reward_args={"format_pattern": "(?s).*[a-z].*"})
  cfg.train.update(batch_size=8, steps=2, optimizer="sgd", lr=0.01, warmup_steps=0, schedule="constant",
                   weight_decay=0.0, grad_clip=0.0)
  with tempfile.TemporaryDirectory() as d:
    train.run(cfg, d)
    return [{k: e[k] for k in ("loss", "update_norm", "fitness_mean", "fitness_std")}
            for e in metrics.read(d, "train")]


def main():
  out = {}
  for mesh in MESHES:
    cfg = config(mesh)
    with tempfile.TemporaryDirectory() as d:
      train.run(cfg, d)
      losses = [e["loss"] for e in metrics.read(d, "train")]
    bad, sharded_params = check_shardings(cfg)
    out[mesh] = {"losses": losses, "bad_shardings": bad, "sharded_params": sharded_params,
                 "devices": Setup(cfg).mesh.size, **layout(cfg)}
  out["es"] = {mesh: es_run(mesh) for mesh in ("single", "data8")}
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
