"""lm/cpu.py: the CPU speed settings change speed only, not results."""
import platform

import jax
import numpy as np
import pytest

from lm import cpu, losses, optim
from lm import step as step_lib
from lm.data import lm_batches
from lm.setup import Setup
from tests.conftest import tiny_config


def test_cpu_compiler_options_give_the_default_compilers_losses_and_params():
  """Five train steps compiled with and without lm.cpu's options agree to float32 rounding."""
  c = tiny_config()
  setup = Setup(c)
  tokens = np.random.default_rng(0).integers(0, 256, size=5000).astype(np.int32)
  source = lm_batches.RandomWindows(tokens, c.data.seq_len, c.train.batch_size, seed=0)
  optimizer, schedule = optim.make_optimizer(c.train)
  loss_fn = losses.token_loss_fn(setup.model, c.train.z_loss)
  step = step_lib.make_train_step(loss_fn, optimizer, schedule)
  assert cpu.compiler_options() == cpu.COMPILER_OPTIONS  # the tests run on CPU
  new_state = lambda: step_lib.init_state(setup, optimizer, setup.init_params(jax.random.PRNGKey(1)), c.seed)
  shardings = jax.tree.map(lambda x: x.sharding, new_state())
  runs = []
  for jitted in (jax.jit(step), step_lib.jit_train_step(step, shardings, setup.mesh)):
    state, seen = new_state(), []
    for i in range(5):
      state, m = jitted(state, source(i))
      seen.append(float(m["loss"]))
    runs.append((seen, jax.tree.leaves(state.params)))
  (losses_a, params_a), (losses_b, params_b) = runs
  np.testing.assert_allclose(losses_b, losses_a, rtol=1e-5)
  for a, b in zip(params_a, params_b):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model", [{}, {"position": "rope", "qk_norm": True, "mlp": "swiglu", "zero_init_out": True}])
def test_init_params_at_o1_equal_the_default_compiles(model):
  """Setup.init_params compiles at LLVM -O1 (lm/cpu.py: INIT_COMPILER_OPTIONS): the same params, bit for bit."""
  c = tiny_config()
  c.model.update(model)
  setup = Setup(c)
  init = lambda options: jax.jit(setup._fresh, out_shardings=setup.param_shardings(),
                                 compiler_options=options)(jax.random.PRNGKey(3))
  with setup.use():
    default, at_o1, used = init(None), init(cpu.INIT_COMPILER_OPTIONS), setup.init_params(jax.random.PRNGKey(3))
  assert cpu.init_compiler_options() == cpu.INIT_COMPILER_OPTIONS
  for params in (at_o1, used):
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(default), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_on_glibc():
  assert cpu.keep_freed_memory()
