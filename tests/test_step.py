"""lm/step.py: gradient accumulation equals the full batch, and updates_per_step runs consecutive slices."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import losses
from lm import optim
from lm import step as step_lib
from lm.data import lm_batches
from lm.setup import Setup
from tests.conftest import tiny_config


def _state_and_batch(c):
  setup = Setup(c)
  tokens = np.random.default_rng(0).integers(0, 256, size=4000).astype(np.int32)
  batch = lm_batches.RandomWindows(tokens, c.data.seq_len, c.train.batch_size, seed=0)(0)
  optimizer, schedule = optim.make_optimizer(c.train)
  state = step_lib.init_state(setup, optimizer, setup.init_params(jax.random.PRNGKey(0)), 0)
  return setup, optimizer, schedule, state, batch


def test_grad_accum_equals_the_full_batch():
  """Mean loss over equal micro-batches = the full batch's mean loss (every row has the same weight), so loss,
  gradient norm and the params after one AdamW step agree with grad_accum=1."""
  c = tiny_config()
  c.train.update(batch_size=8, warmup_steps=0, grad_clip=0.0)
  setup, optimizer, schedule, state, batch = _state_and_batch(c)
  loss_fn = losses.token_loss_fn(setup.model)
  results = {}
  for accum in (1, 2, 4):
    step = jax.jit(step_lib.make_train_step(loss_fn, optimizer, schedule, grad_accum=accum))
    fresh = jax.tree.map(jnp.copy, state)
    new, m = step(fresh, batch)
    results[accum] = (float(m["loss"]), float(m["grad_norm"]), jax.tree.leaves(new.params))
  micro = jax.tree.map(lambda x: x.reshape(2, 4, *x.shape[1:]), batch)
  g_full = jax.grad(lambda p: loss_fn(p, batch, None)[0])(state.params)
  g_half = [jax.grad(lambda p: loss_fn(p, jax.tree.map(lambda x: x[i], micro), None)[0])(state.params)
            for i in range(2)]
  for a, b0, b1 in zip(jax.tree.leaves(g_full), *map(jax.tree.leaves, g_half)):
    np.testing.assert_allclose((b0 + b1) / 2, a, rtol=1e-4, atol=1e-7)  # the identity accumulation relies on
  loss1, norm1, params1 = results[1]
  for accum in (2, 4):
    loss, norm, params = results[accum]
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    np.testing.assert_allclose(norm, norm1, rtol=1e-4)
    for a, b in zip(params, params1):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert abs(norm1) > 0


def test_updates_per_step_applies_one_update_per_consecutive_slice():
  """Two updates per step on [A; B] = a step on A, then a step on B (plain SGD, so the update is -lr * grad)."""
  def loss_fn(params, batch, rng):
    return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2), {}

  opt = optax.sgd(0.1)
  rng = np.random.default_rng(1)
  batch = {"x": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=6), jnp.float32)}
  params = {"w": jnp.zeros(3)}
  state = step_lib.TrainState(params=params, opt_state=opt.init(params), step=jnp.zeros((), jnp.int32),
                              rng=jax.random.PRNGKey(0))
  two = jax.jit(step_lib.make_train_step(loss_fn, opt, lambda s: 0.1, updates_per_step=2))
  new, _ = two(state, batch)
  w = np.zeros(3)
  for part in (slice(0, 3), slice(3, 6)):
    x, y = np.asarray(batch["x"])[part], np.asarray(batch["y"])[part]
    w = w - 0.1 * 2 * x.T @ (x @ w - y) / len(y)
  np.testing.assert_allclose(new.params["w"], w, rtol=1e-5)
  assert int(new.step) == 1  # the loop counts batches, not updates
