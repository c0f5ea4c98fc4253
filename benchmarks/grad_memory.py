"""XLA's memory analysis of the gradient alone (no optimizer update) of configs/mistral_7b.py on one device,
scanned and unrolled layers, on whatever backend is present. Beside the dry run's figure for the whole train step
it shows where scanned layers' extra memory on a GPU comes from (experiments/SPEED_NOTES.md, "On a GPU").

  python benchmarks/grad_memory.py          # as run on one H200 by benchmarks/gpu_check.sh's second call

The CPU backend's figures are not a plan (its scheduler keeps every unrolled layer's buffers alive). Asserts nothing.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import mistral_7b  # noqa: E402
from lm import objectives, sharding  # noqa: E402
from lm.setup import Setup  # noqa: E402

for scan in (True, False):
  c = mistral_7b.get_config()
  c.mesh.update(fsdp=1, data=1)
  c.model.scan_layers = scan
  setup = Setup(c)
  with setup.use():
    objective = objectives.build(setup)
    params = setup.abstract_params(sharded=True)
    batch = sharding.abstract_batch(objective.batch_shapes(), setup.mesh)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    g = jax.jit(jax.grad(lambda p, b, r: objective.loss_fn(p, b, r)[0]))
    t0 = time.time()
    m = g.lower(params, batch, rng).compile().memory_analysis()
    print(f"scan_layers={scan}: grads only: temp {m.temp_size_in_bytes / 2**30:.2f} GiB, "
          f"args {m.argument_size_in_bytes / 2**30:.2f} GiB, out {m.output_size_in_bytes / 2**30:.2f} GiB, "
          f"compile {time.time() - t0:.1f} s", flush=True)
