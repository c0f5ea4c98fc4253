"""Evolution strategies (lm/es.py, lm/objectives/es.py): the estimate points along the true gradient on a
quadratic and a bandit and the loop converges; noise regenerates bit for bit; antithetic pairs cancel the
zero-order term; low-rank noise has the rank and scale it claims; an ES run trains and resumes exactly."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import es
from lm import metrics
from lm import train
from tests.rl.pg_helpers import pg_config


def cosine(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def estimate(theta, fitness_fn, n, sigma, seed=0, antithetic=True, shaping="none", **kw):
  keys, signs = es.member_keys(seed, 0, n, antithetic)
  params = {"w": theta}
  members = [es.perturb(params, k, s, sigma, **kw)["w"] for k, s in zip(keys, signs)]
  f = es.shape_fitness(np.array([fitness_fn(m) for m in members]), shaping)
  return es.gradient(params, jnp.asarray(f), jnp.asarray(keys), jnp.asarray(signs), sigma, **kw)["w"], f


def quadratic(seed: int, d: int):
  """(target, f) with f(w) = -|w - target|^2, whose gradient at w is 2 (target - w)."""
  target = jnp.asarray(np.random.default_rng(seed).normal(size=d), jnp.float32)
  return target, lambda w: -float(jnp.sum((w - target) ** 2))


def test_estimate_on_a_quadratic_points_along_the_gradient_and_the_loop_converges():
  target, f = quadratic(0, 12)
  theta = jnp.zeros(12)
  g, _ = estimate(theta, f, 2000, 0.05)
  assert cosine(g, 2 * (target - theta)) > 0.9
  for step in range(60):  # theta += lr * g with centred-rank shaping, as the objective runs it
    keys, signs = es.member_keys(1, step, 64, True)
    params = {"w": theta}
    fit = es.shape_fitness([f(es.perturb(params, k, s, 0.1)["w"]) for k, s in zip(keys, signs)], "centered_rank")
    theta = theta + 0.2 * es.gradient(params, jnp.asarray(fit), jnp.asarray(keys), jnp.asarray(signs), 0.1)["w"]
  assert float(jnp.sum((theta - target) ** 2)) < 0.05 * float(jnp.sum(target ** 2))


def test_estimate_on_a_softmax_bandit_matches_the_exact_gradient():
  reward = jnp.asarray([1.0, 0.0, 0.5, 2.0, -1.0])
  theta = jnp.asarray(np.random.default_rng(1).normal(size=5), jnp.float32)
  value = lambda w: float(jnp.sum(jax.nn.softmax(w) * reward))
  exact = jax.grad(lambda w: jnp.sum(jax.nn.softmax(w) * reward))(theta)
  g, _ = estimate(theta, value, 3000, 0.02)
  assert cosine(g, exact) > 0.9
  np.testing.assert_allclose(g, exact, atol=0.1 * float(jnp.abs(exact).max()))


def test_noise_regenerates_bit_for_bit_from_seed_step_and_member():
  params = {"a": jnp.zeros((5, 7)), "b": jnp.zeros(3)}
  k1, s1 = es.member_keys(3, 11, 8, True)
  k2, s2 = es.member_keys(3, 11, 8, True)
  np.testing.assert_array_equal(k1, k2)
  np.testing.assert_array_equal(s1, s2)
  for kind in ("full", "lowrank"):
    e1 = es.noise(params, jnp.asarray(k1[3]), kind=kind, rank=2)
    e2 = es.noise(params, jnp.asarray(k2[3]), kind=kind, rank=2)
    for x, y in zip(jax.tree.leaves(e1), jax.tree.leaves(e2)):
      np.testing.assert_array_equal(x, y)
  assert not np.array_equal(es.member_keys(3, 12, 8, True)[0], k1)  # another step, other noise
  np.testing.assert_array_equal(k1[0], k1[1])  # an antithetic pair shares its noise...
  assert s1[0] == -s1[1]  # ...with opposite signs


def test_antithetic_pairs_cancel_the_zero_order_term():
  _, f = quadratic(2, 10)
  theta = jnp.zeros(10)
  g, _ = estimate(theta, f, 64, 0.05)
  g_shift, _ = estimate(theta, lambda w: f(w) + 1000.0, 64, 0.05)  # f(theta) + c: the same estimate
  np.testing.assert_allclose(g_shift, g, atol=1e-3 * float(jnp.abs(g).max()))
  plain, _ = estimate(theta, f, 64, 0.05, antithetic=False)
  plain_shift, _ = estimate(theta, lambda w: f(w) + 1000.0, 64, 0.05, antithetic=False)
  assert float(jnp.abs(plain_shift - plain).max()) > 10 * float(jnp.abs(plain).max())  # without pairs it doesn't


def test_lowrank_noise_has_its_rank_and_unit_scale():
  params = {"m": jnp.zeros((64, 48)), "t": jnp.zeros((16, 4, 8)), "v": jnp.zeros(32)}
  eps = es.noise(params, jax.random.PRNGKey(0), kind="lowrank", rank=3)
  assert np.linalg.matrix_rank(np.asarray(eps["m"])) == 3
  assert np.linalg.matrix_rank(np.asarray(eps["t"]).reshape(16, 32)) == 3
  big = es.noise({"m": jnp.zeros((400, 400))}, jax.random.PRNGKey(1), kind="lowrank", rank=4)["m"]
  assert abs(float(jnp.var(big)) - 1.0) < 0.1  # per-entry variance 1, as full noise


def test_lowrank_noise_of_scanned_layers_is_low_rank_per_layer():
  # model.scan_layers stacks each layer's matrices ([n_layers, m, n]) and vectors ([n_layers, d]) on a leading axis
  params = {"layers": {"w": jnp.zeros((3, 16, 12)), "scale": jnp.zeros((3, 12))}}
  eps = es.noise(params, jax.random.PRNGKey(0), kind="lowrank", rank=2)["layers"]
  assert [np.linalg.matrix_rank(np.asarray(eps["w"][i])) for i in range(3)] == [2, 2, 2]
  assert not np.allclose(eps["w"][0], eps["w"][1])  # each layer its own noise
  assert np.linalg.matrix_rank(np.asarray(eps["scale"])) == 3  # a stack of vectors gets full noise, as unrolled

def test_selection_perturbs_only_the_chosen_params():
  params = {"layer_0": {"w": jnp.zeros(4)}, "layer_1": {"w": jnp.zeros(4)}}
  mask = es.selection(params, "layer_1/*")
  eps = es.noise(params, jax.random.PRNGKey(0), mask=mask)
  assert not np.any(np.asarray(eps["layer_0"]["w"])) and np.all(np.asarray(eps["layer_1"]["w"]) != 0)


def es_config(**objective):
  c = pg_config()
  from lm import objectives
  c.objective = objectives.config("es", **{**dict(task="addition", task_options={"digits": 2}, population=4,
                                                  prompts=3, max_new_tokens=4, sigma=0.05, eval_examples=4,
                                                  pass_n=0, kl_prompts=2), **objective})
  c.train.update(batch_size=4, steps=2, optimizer="sgd", lr=0.01, warmup_steps=0, schedule="constant",
                 weight_decay=0.0, grad_clip=0.0)
  return c


def test_es_run_trains_logs_and_resumes_exactly(tmp_path, shakespeare):
  # an untrained model answers junk: score "has a lower-case letter", which its members do differently
  cfg = es_config(rewards="format:1.0", reward_args={"format_pattern": "(?s).*[a-z].*"}, sigma=0.5, prompts=8)
  cfg.eval.update(every=2, max_batches=1)
  cfg.checkpoint.update(every=1, keep=5)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  result = train.run(cfg, straight)
  assert "kl_to_start" in result and result["kl_to_start"] >= -1e-3
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
  train.run(cfg, resumed)
  a, b = (metrics.read(d, "train") for d in (straight, resumed))
  assert [e["step"] for e in b] == [1, 2]
  for key in ("loss", "fitness_mean", "fitness_max", "update_norm", "grad_norm"):
    assert a[1][key] == b[1][key], key
  assert a[0]["fitness_std"] > 0 and a[0]["update_norm"] > 0


def test_es_options_are_checked():
  from lm.errors import UserError
  from lm.objectives import es as es_objective
  from lm.setup import Setup
  c = es_config()
  c.objective.population = 5
  c.train.batch_size = 6
  setup = Setup(c)
  with setup.use(), pytest.raises(UserError, match="population=5 must be even.*must equal objective.population"):
    es_objective.build(setup)
