"""Plan a run without allocating it: abstract params (jax.eval_shape), then lower and compile the train step for
the mesh and read XLA's memory analysis. `launch.py --config=... --dry_run`.

Per-device figures: params and optimizer state from their shardings; activations and temporaries from the
compiled step's temp buffers (what XLA must hold on top of the inputs while the step runs).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import model as model_lib
from lm import sharding
from lm import train
from lm.data import lm_batches
from lm.objectives import pretrain

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
  setup = train.Setup(config)
  mesh, t = setup.mesh, config.train
  with sharding.use(mesh, setup.rules):
    optimizer, schedule = train.make_optimizer(t)
    p_shard = setup.param_shardings()
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), setup.abstract_params(),
                          p_shard)
    opt_shard = sharding.opt_state_shardings(optimizer, params, p_shard, mesh)
    opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       jax.eval_shape(optimizer.init, params), opt_shard)
    rep = sharding.replicated(mesh)
    state = {"params": params, "opt_state": opt, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
             "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)}
    b, s = t.batch_size, config.data.seq_len
    bsh = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((b, s), jnp.float32 if k == "weights" else jnp.int32, sharding=bsh)
             for k in lm_batches.FIELDS}
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    step = train.jit_train_step(train.make_train_step(pretrain.token_loss_fn(setup.model, t.z_loss), optimizer,
                                                      schedule, t.grad_accum), state_shardings, mesh)
    t0 = time.time()
    compiled = step.lower(state, batch).compile()
    compile_s = time.time() - t0
  mem = compiled.memory_analysis()
  cfg = setup.model.cfg
  n_params = model_lib.count_params(params)
  return {
      "mesh": dict(mesh.shape), "devices": mesh.size, "params": n_params,
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
      ("parameters", f"{p['params']:,}"),
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
