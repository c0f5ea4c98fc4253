"""Plan a run without allocating it: abstract params (jax.eval_shape), then lower and compile the train step of the
objective the config names for the mesh, and read XLA's memory analysis. `launch.py --config=... --dry_run`.

Per-device figures: params and optimizer state from their shardings; activations and temporaries from the
compiled step's temp buffers (what XLA must hold on top of the inputs while the step runs).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import lora
from lm import model as model_lib
from lm import objectives
from lm import optim
from lm import sharding
from lm import step as step_lib
from lm.setup import Setup

GB = 1024**3


def _size(n: int) -> str:
  return f"{n / GB:.2f} GiB" if n >= GB else f"{n / 2**20:.2f} MiB"


def _per_device_bytes(abstract_tree) -> int:
  total = 0
  for x in jax.tree.leaves(abstract_tree):
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
  return total


def plan(config) -> dict:
  setup = Setup(config)
  mesh, t = setup.mesh, config.train
  with setup.use():
    objective = objectives.build(setup)  # cheap: objectives read their data on the first batch
    optimizer, schedule = optim.make_optimizer(t)
    state = step_lib.abstract_state(setup, objective, optimizer)
    params, opt = state.params, state.opt_state
    trainable = lora.split(params)[0]
    batch = sharding.abstract_batch(objective.batch_shapes(), mesh)
    step = step_lib.jit_train_step(
        step_lib.make_train_step(objective.loss_fn, optimizer, schedule, t.grad_accum,
                                 updates_per_step=objective.updates_per_step),
        step_lib.shardings(state), mesh)
    t0 = time.time()
    compiled = step.lower(state, batch).compile()
    compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  cfg = setup.model.cfg
  n_params = model_lib.count_params(params)
  b, s = t.batch_size, config.data.seq_len
  return {
      "mesh": dict(mesh.shape), "devices": mesh.size, "params": n_params,
      "trainable_params": model_lib.count_params(trainable),
      "flops_per_token": model_lib.flops_per_token(cfg, s), "tokens_per_step": b * s,
      "params_bytes_per_device": _per_device_bytes(params),
      "opt_state_bytes_per_device": _per_device_bytes(opt),
      "temp_bytes_per_device": int(getattr(mem, "temp_size_in_bytes", 0)),
      "argument_bytes_per_device": int(getattr(mem, "argument_size_in_bytes", 0)),
      "output_bytes_per_device": int(getattr(mem, "output_size_in_bytes", 0)),
      "alias_bytes_per_device": int(getattr(mem, "alias_size_in_bytes", 0)),
      "compile_s": compile_s,
  }


def run(config):
  p = plan(config)
  total = p["argument_bytes_per_device"] + p["temp_bytes_per_device"] + p["output_bytes_per_device"] \
      - p["alias_bytes_per_device"]
  rows = [
      ("mesh", " x ".join(f"{k}={v}" for k, v in p["mesh"].items()) + f"  ({p['devices']} devices)"),
      ("parameters", f"{p['params']:,}" + (f"  ({p['trainable_params']:,} trainable: LoRA adapters, heads, "
                                            "trained tables)" if p["trainable_params"] != p["params"] else "")),
      ("training FLOPs / token", f"{p['flops_per_token']:.3e}"),
      ("tokens / step", f"{p['tokens_per_step']:,} (batch {config.train.batch_size} x seq {config.data.seq_len})"),
      ("FLOPs / step", f"{p['flops_per_token'] * p['tokens_per_step']:.3e}"),
      ("params / device", _size(p['params_bytes_per_device'])),
      ("optimizer state / device", _size(p['opt_state_bytes_per_device'])),
      ("activations + temporaries / device", _size(p['temp_bytes_per_device']) + "  (XLA memory analysis)"),
      ("peak estimate / device", _size(total) + "  (arguments + temporaries + outputs - donated)"),
      ("compile time", f"{p['compile_s']:.1f} s"),
  ]
  width = max(len(r[0]) for r in rows)
  for name, value in rows:
    print(f"{name:<{width}}  {value}")
  return p
