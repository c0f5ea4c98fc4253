"""Train-step throughput: compile time, steady-state step time, tokens/s and (on a known accelerator) MFU.

  python benchmarks/throughput.py                                   # the default nanoGPT-CPU config
  python benchmarks/throughput.py --config=configs/pretrain_shakespeare_gpu.py --steps=50
  python benchmarks/throughput.py --config.model.remat=full         # any config override

Synthetic tokens (no data loading), the real jitted, donated train step. Prints a table; asserts nothing.
"""
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

from lm import losses, optim, sharding, step as step_lib  # noqa: E402
from lm import model as model_lib  # noqa: E402
from lm.data import lm_batches  # noqa: E402
from lm.setup import Setup  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pretrain_shakespeare.py", "Config to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps after warm-up.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")

# Dense bf16 peak FLOP/s per device, by device_kind substring (vendor datasheets).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v5 lite": 197e12,
             "TPU v5": 459e12, "TPU v4": 275e12}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_BF16.items():
    if name.lower() in kind.lower():
      return peak
  return None


def main(argv):
  del argv
  config = _CONFIG.value
  t_setup = time.perf_counter()
  setup = Setup(config)
  t, seq = config.train, config.data.seq_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, size=max(1_000_000, 4 * t.batch_size * (seq + 1))).astype(np.int32)
  source = lm_batches.RandomWindows(tokens, seq, t.batch_size, seed=0)
  with setup.use():
    optimizer, schedule = optim.make_optimizer(t)
    loss_fn = losses.token_loss_fn(setup.model, t.z_loss)
    state = step_lib.init_state(setup, optimizer, setup.init_params(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)), config.seed)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step = step_lib.jit_train_step(step_lib.make_train_step(loss_fn, optimizer, schedule, t.grad_accum), shardings,
                                   setup.mesh)
    batch = sharding.global_batch(source(0), setup.mesh)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    setup_s = t0 - t_setup
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for i in range(_WARMUP.value):
      state, m = compiled(state, sharding.global_batch(source(i), setup.mesh))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(_STEPS.value):
      state, m = compiled(state, sharding.global_batch(source(i), setup.mesh))
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / _STEPS.value

  cfg = setup.model.cfg
  tokens_per_step = t.batch_size * seq
  flops_per_step = model_lib.flops_per_token(cfg, seq) * tokens_per_step
  device = jax.devices()[0]
  peak = peak_flops(device)
  rows = [
      ("device", f"{device.device_kind} x {setup.mesh.size} ({jax.default_backend()})"),
      ("params", f"{model_lib.count_params(state.params):,}"),
      ("batch x seq", f"{t.batch_size} x {seq} = {tokens_per_step:,} tokens/step"),
      ("dtype / remat", f"{cfg.dtype} / {cfg.remat}"),
      ("setup time", f"{setup_s:.2f} s (mesh, params, optimizer state)"),
      ("compile time", f"{compile_s:.2f} s"),
      ("step time", f"{dt * 1e3:.2f} ms (mean of {_STEPS.value})"),
      ("tokens/s", f"{tokens_per_step / dt:,.0f}"),
      ("model TFLOP/s", f"{flops_per_step / dt / 1e12:.3f}"),
      ("MFU", f"{100 * flops_per_step / dt / (peak * setup.mesh.size):.1f}%" if peak else "n/a (unknown peak)"),
  ]
  stats = device.memory_stats()  # None on the CPU backend
  if stats and "peak_bytes_in_use" in stats:
    rows.append(("peak device memory", f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"))
  width = max(len(r[0]) for r in rows)
  for name, value in rows:
    print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
  app.run(main)
