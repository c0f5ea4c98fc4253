"""Policy gradient against independent references: the policy-gradient theorem on a softmax bandit, NumPy
advantages and GAE, closed-form KL estimators, on-policy ratios, sampler vs teacher-forced log-probs, EOS
masking, and an exactly resumable PPO run through the train loop."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pg_addition
from lm import sharding
from lm import train
from lm.objectives import policy_gradient as pg
from lm.rl import advantages as adv_lib
from lm.rl import kl as kl_lib
from lm.rl import losses
from lm.rl import rollout as rollout_lib
from tests.conftest import tiny_config


def pg_config(algorithm="grpo", **objective):
  c = tiny_config()
  c.objective = pg_addition.objective(algorithm)
  c.train.update(batch_size=8, steps=2, lr=1e-3)
  c.objective.update(group_size=4, eval_examples=4, pass_n=0, max_new_tokens=6)
  if algorithm == "ppo":
    c.objective.update(epochs=2, minibatches=2)
  c.objective.update(objective)
  return c


def build(algorithm="grpo", **objective):
  c = pg_config(algorithm, **objective)
  setup = train.Setup(c)
  with sharding.use(setup.mesh, setup.rules):
    params = setup.init_params(jax.random.PRNGKey(0))
    obj = pg.build(c, setup.model, setup.tokenizer)
    params = obj.init_params(jax.random.PRNGKey(1), params)
  return setup, obj, params


@pytest.fixture(scope="module")
def grpo():
  """A tiny GRPO objective, its params and step 0's batch, shared by the model-side tests."""
  setup, obj, params = build("grpo")
  with sharding.use(setup.mesh, setup.rules):
    return setup, obj, params, obj.batches(0, params)


@pytest.fixture(scope="module")
def ppo(shakespeare):
  """PPO with a separate critic, an entropy bonus and the pretraining mix (2 epochs x 2 minibatches)."""
  setup, obj, params = build("ppo", value="critic", ptx_coef=0.1, ptx_rows=4, entropy_coef=0.01)
  with sharding.use(setup.mesh, setup.rules):
    return setup, obj, params, obj.batches(0, params)


# ---- KL estimators ----

def test_kl_estimators_equal_closed_forms_and_k3_is_nonnegative():
  rng = np.random.default_rng(0)
  p = jax.nn.log_softmax(jnp.asarray(rng.normal(size=20)))
  q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=20)))
  lp, lq = np.asarray(p, np.float64), np.asarray(q, np.float64)
  np.testing.assert_allclose(kl_lib.estimate(p, q, "k1"), lp - lq, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(kl_lib.estimate(p, q, "k2"), 0.5 * (lp - lq) ** 2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(kl_lib.estimate(p, q, "k3"), np.exp(lq - lp) - 1 - (lq - lp), rtol=1e-5, atol=1e-6)
  # expectations under x ~ p: k1 and k3 are unbiased for KL(p || q); k2's mean is half E[(log p/q)^2]
  w, kl_exact = np.exp(lp), np.sum(np.exp(lp) * (lp - lq))
  np.testing.assert_allclose(np.sum(w * np.asarray(kl_lib.estimate(p, q, "k1"))), kl_exact, rtol=1e-4)
  np.testing.assert_allclose(np.sum(w * np.asarray(kl_lib.estimate(p, q, "k3"))), kl_exact, rtol=1e-4)
  np.testing.assert_allclose(np.sum(w * np.asarray(kl_lib.estimate(p, q, "k2"))), 0.5 * np.sum(w * (lp - lq) ** 2),
                             rtol=1e-4)
  log_r = jnp.asarray(np.concatenate([rng.normal(size=1000) * 5, rng.normal(size=1000) * 1e-4, [0.0]]), jnp.float32)
  assert float(kl_lib.estimate(jnp.zeros_like(log_r), log_r, "k3").min()) >= 0.0


def test_adaptive_kl_controller_moves_toward_target():
  c = kl_lib.Controller(0.1, target=1.0, horizon=10)
  assert c.update(5.0) == pytest.approx(0.1 * 1.02)  # KL too high: error clipped to +0.2, coefficient up
  c = kl_lib.Controller(0.1, target=1.0, horizon=10)
  assert c.update(0.9) == pytest.approx(0.1 * (1 - 0.01))  # inside the clip: proportional
  assert kl_lib.Controller(0.1).update(100.0) == 0.1  # fixed


# ---- advantages ----

def test_group_advantages_match_numpy():
  rng = np.random.default_rng(1)
  r = rng.normal(size=(5, 4)).astype(np.float32)
  r[2] = 1.0  # a group with zero spread gets zero advantage, not a division by zero
  loo = np.empty_like(r)
  for i in range(5):
    for j in range(4):
      loo[i, j] = r[i, j] - np.mean([r[i, k] for k in range(4) if k != j])
  np.testing.assert_allclose(adv_lib.leave_one_out(jnp.asarray(r)), loo, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv_lib.batch_mean(jnp.asarray(r)), r - r.mean(), rtol=1e-5, atol=1e-6)
  mean, std = r.mean(1, keepdims=True), r.std(1, ddof=1, keepdims=True)
  np.testing.assert_allclose(adv_lib.group_normalised(jnp.asarray(r), "group_std"), (r - mean) / (std + 1e-4),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv_lib.group_normalised(jnp.asarray(r), "batch_std"), (r - mean) / (r.std(ddof=1) + 1e-4),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv_lib.group_normalised(jnp.asarray(r), "none"), r - mean, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(adv_lib.group_normalised(jnp.asarray(r), "group_std"))[2] == 0)


def test_gae_matches_numpy():
  rng = np.random.default_rng(2)
  b, t, gamma, lam = 4, 7, 0.9, 0.8
  rewards, values = rng.normal(size=(b, t)), rng.normal(size=(b, t))
  lengths = np.array([7, 3, 1, 5])
  mask = np.arange(t)[None] < lengths[:, None]
  want_adv, want_ret = np.zeros((b, t)), np.zeros((b, t))
  for i in range(b):
    gae = 0.0
    for s in reversed(range(lengths[i])):
      next_v = values[i, s + 1] if s + 1 < lengths[i] else 0.0
      delta = rewards[i, s] + gamma * next_v - values[i, s]
      gae = delta + gamma * lam * gae
      want_adv[i, s], want_ret[i, s] = gae, gae + values[i, s]
  adv, ret = adv_lib.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(mask),
                         gamma, lam)
  np.testing.assert_allclose(adv, want_adv, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ret, want_ret, rtol=1e-4, atol=1e-5)
  w = adv_lib.whiten(adv, jnp.asarray(mask))
  np.testing.assert_allclose([np.asarray(w)[mask].mean(), np.asarray(w)[mask].std()], [0, 1], atol=1e-4)


# ---- the policy-gradient theorem on a softmax bandit ----

@pytest.mark.parametrize("algorithm,option,shrink", [
    ("reinforce", {"baseline": "leave_one_out"}, 0.0),
    ("reinforce", {"baseline": "batch_mean"}, 1.0),  # the sample's own reward in its baseline: (1 - 1/n) bias
    ("rloo", {}, 0.0),
    ("grpo", {"adv_scale": "none"}, 1.0),  # Dr. GRPO's group-centred reward: (1 - 1/G) bias
])
def test_estimator_expected_gradient_equals_exact_gradient(algorithm, option, shrink):
  k, prompts, g, batches = 5, 2, 4, 4000
  theta = jnp.asarray(np.random.default_rng(3).normal(size=k), jnp.float32)
  arm_reward = jnp.asarray([1.0, 0.0, 0.5, 2.0, -1.0])
  o = types.SimpleNamespace(**{"algorithm": algorithm, "baseline": "leave_one_out", "adv_scale": "group_std", **option})

  def loss(th, key):
    a = jax.random.categorical(key, th, shape=(prompts, g))
    noise = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (prompts, g))
    adv = pg.sequence_advantages(arm_reward[a] + noise, o).reshape(-1, 1)
    logp = jax.nn.log_softmax(th)[a].reshape(-1, 1)
    per_tok, _, _ = losses.policy_surrogate(logp, jax.lax.stop_gradient(logp), adv)
    return losses.aggregate(per_tok, jnp.ones_like(logp), "seq_mean_token_sum", 1)

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, jax.random.split(jax.random.PRNGKey(4), batches))
  pi = jax.nn.softmax(theta)
  exact = pi * (arm_reward - jnp.sum(pi * arm_reward))  # d/dtheta of E_pi[r]
  n = prompts * g if o.algorithm == "reinforce" else g
  want = -(1.0 - shrink / n) * exact
  mean, se = grads.mean(0), grads.std(0) / np.sqrt(batches)
  assert np.all(np.abs(mean - want) < 4 * se + 1e-4), (mean, want, se)


# ---- the model side: ratios, log-probs, EOS masking ----

def test_rollout_logprobs_equal_teacher_forced_logprobs(grpo):
  setup, _, params, _ = grpo
  tok = setup.tokenizer
  from lm import chat
  prompts = [chat.prompt_ids(tok, p) for p in ("1+2=", "345+6789=", "12+3=")]
  with sharding.use(setup.mesh, setup.rules):
    for temperature, top_k in ((1.0, 0), (0.7, 20)):
      r = rollout_lib.rollout(setup.model, params, prompts, jax.random.PRNGKey(5), 6, tok, temperature, top_k)
      tf = rollout_lib.token_logprobs(setup.model, params, r["tokens"], r["positions"], r["segment_ids"], n=6,
                                      temperature=temperature)
      np.testing.assert_allclose(np.asarray(tf)[r["mask"]], r["logprobs"][r["mask"]], atol=2e-5)
  m = r["mask"]
  assert np.all(np.diff(m.astype(int), axis=1) <= 0)  # a prefix: nothing after EOS counts
  assert np.all(r["logprobs"][~m] == 0)


def _first_slice(batch, obj):
  n = len(batch["fresh"]) // obj.updates_per_step
  return {k: jnp.asarray(v[:n]) for k, v in batch.items()}


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_ratio_is_exactly_one_on_first_on_policy_update(algorithm, request):
  setup, obj, params, batch = request.getfixturevalue(algorithm)
  with sharding.use(setup.mesh, setup.rules):
    first = _first_slice(batch, obj)
    _, m = jax.jit(obj.loss_fn)(params, first, None)
    assert float(m["ratio_mean"]) == 1.0 and float(m["ratio_max"]) == 1.0 and float(m["ratio_min"]) == 1.0
    assert float(m["clip_frac"]) == 0.0
    # with the sampler's log-probs as pi_old instead, the ratio is 1 up to the KV cache's rounding
    _, m = jax.jit(obj.loss_fn)(params, {**first, "fresh": jnp.zeros_like(first["fresh"])}, None)
    assert abs(float(m["ratio_max"]) - 1) < 1e-4 and abs(float(m["ratio_min"]) - 1) < 1e-4


def test_tokens_after_eos_get_no_gradient(grpo):
  setup, obj, params, batch = grpo
  with sharding.use(setup.mesh, setup.rules):
    batch = _first_slice(batch, obj)
    b, n = batch["mask"].shape
    rng = np.random.default_rng(6)
    # make rows end at EOS after 1..n tokens, with random advantages
    lengths = rng.integers(1, n + 1, size=b)
    mask = np.arange(n)[None] < lengths[:, None]
    tokens = np.asarray(batch["tokens"]).copy()
    tokens[np.arange(b), tokens.shape[1] - n + lengths - 1] = setup.tokenizer.eos_id
    seg = np.asarray(batch["segment_ids"]).copy()
    seg[:, -n:] = mask
    base = {**batch, "tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(seg),
            "mask": jnp.asarray(mask, jnp.float32), "advantages": jnp.asarray(rng.normal(size=(b, n)), jnp.float32)}
    garbage = tokens.copy()
    after = np.zeros_like(tokens, bool)
    after[:, -n:] = ~mask
    garbage[after] = rng.integers(0, 256, size=after.sum())
    grad = jax.jit(jax.grad(lambda p, bt: obj.loss_fn(p, bt, None)[0]))
    g1 = grad(params, base)
    g2 = grad(params, {**base, "tokens": jnp.asarray(garbage)})
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(x, y, atol=1e-7)
  # and the per-token surrogate passes no gradient to masked slots
  logp = jnp.asarray(rng.normal(size=(b, n)), jnp.float32)
  d = jax.grad(lambda lp: losses.aggregate(losses.policy_surrogate(lp, jax.lax.stop_gradient(lp), base["advantages"],
                                                                   0.2, 0.2)[0], base["mask"], "token_mean", n))(logp)
  assert np.all(np.asarray(d)[~mask] == 0) and np.any(np.asarray(d)[mask] != 0)


@pytest.mark.parametrize("algorithm,options", [
    ("reinforce", {"baseline": "batch_mean", "kl_in": "reward", "kl_estimator": "k1", "truncated": "mask"}),
    ("grpo", {"adv_scale": "batch_std", "loss_agg": "seq_mean_token_sum_norm", "truncated": "penalty"}),
    ("ppo", None),
])
def test_every_algorithm_gives_a_finite_update(algorithm, options, request):
  if options is None:
    setup, obj, params, batch = request.getfixturevalue(algorithm)
  else:
    setup, obj, params = build(algorithm, **options)
    with sharding.use(setup.mesh, setup.rules):
      batch = obj.batches(0, params)
  with sharding.use(setup.mesh, setup.rules):
    assert len(batch["fresh"]) == 8 * (2 if algorithm == "ppo" else 1)
    (loss, m), grads = jax.jit(jax.value_and_grad(obj.loss_fn, has_aux=True))(params, _first_slice(batch, obj),
                                                                              None)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for key in ("reward_mean", "reward_std", "zero_spread_frac", "kl_k1", "kl_k2", "kl_k3", "entropy", "clip_frac",
              "ratio_mean", "answer_len", "truncated_frac", "time_rollout_s"):
    assert key in m, key
  if algorithm == "ppo":
    assert "value_loss" in m and "ptx_loss" in m and "critic" in params


def test_ppo_run_resumes_exactly(tmp_path, shakespeare):
  """2 rollouts straight, then the same run resumed from its step-1 checkpoint: identical step-2 metrics.

  Each rollout is 2 epochs x 2 minibatches (4 updates) and the KL coefficient is adaptive, so this covers the
  loop's updates_per_step and the objective's checkpointed state."""
  import shutil
  from lm import metrics
  cfg = pg_config("ppo", kl_target=0.01, kl_horizon=2)
  cfg.eval.update(every=100, max_batches=1)
  cfg.checkpoint.update(every=1, keep=5)
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.run(cfg, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
  train.run(cfg, resumed)
  a, b = (metrics.read(d, "train") for d in (straight, resumed))
  assert [e["step"] for e in b] == [1, 2]
  for key in ("loss", "reward_mean", "kl_coef", "rollout_kl_k1", "value_loss", "ratio_max"):
    assert a[1][key] == b[1][key], (key, a[1][key], b[1][key])
  assert a[1]["kl_coef"] != a[0]["kl_coef"]  # the controller moved, and its state survived the restart
