"""lm/rl/rollout.py and lm/rl/common.py on a tiny model: sampled log-probs equal teacher-forced ones, the first
update is exactly on-policy, nothing after EOS gets a gradient, every algorithm updates finitely, the reference
is the starting policy, and a PPO run resumes exactly."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import step as step_lib
from lm import train
from lm.rl import common
from lm.rl import losses
from lm.rl import rollout as rollout_lib
from tests.rl.pg_helpers import build, pg_config


@pytest.fixture(scope="module")
def grpo():
  """A tiny GRPO objective, its params and step 0's batch, shared by the model-side tests."""
  setup, obj, params = build("grpo")
  with setup.use():
    return setup, obj, params, obj.batches(0, params).rows


@pytest.fixture(scope="module")
def ppo(shakespeare):
  """PPO with a separate critic, an entropy bonus and the pretraining mix (2 epochs x 2 minibatches)."""
  setup, obj, params = build("ppo", value="critic", ptx_coef=0.1, ptx_rows=4, entropy_coef=0.01)
  with setup.use():
    return setup, obj, params, obj.batches(0, params).rows


def test_rollout_logprobs_equal_teacher_forced_logprobs(grpo):
  setup, _, params, _ = grpo
  tok = setup.tokenizer
  from lm import chat
  prompts = [chat.prompt_ids(tok, p) for p in ("1+2=", "345+6789=", "12+3=")]
  with setup.use():
    for temperature, top_k in ((1.0, 0), (0.7, 20)):
      r = rollout_lib.sample(setup.model, params, prompts, jax.random.PRNGKey(5), 6, tok, temperature, top_k)
      tf = common.token_logprobs(setup.model, params, r["tokens"], r["positions"], r["segment_ids"], n=6,
                                      temperature=temperature)
      np.testing.assert_allclose(np.asarray(tf)[r["mask"]], r["logprobs"][r["mask"]], atol=2e-5)
  m = r["mask"]
  assert np.all(np.diff(m.astype(int), axis=1) <= 0)  # a prefix: nothing after EOS counts
  assert np.all(r["logprobs"][~m] == 0)


def _first_slice(batch, obj):
  """The rows of the first optimizer update of a rollout (what the train step's first slice sees)."""
  return jax.tree.map(lambda x: jnp.asarray(x[0]), step_lib.slices(batch, obj.updates_per_step))


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_ratio_is_exactly_one_on_first_on_policy_update(algorithm, request):
  setup, obj, params, batch = request.getfixturevalue(algorithm)
  with setup.use():
    first = _first_slice(batch, obj)
    _, m = jax.jit(obj.loss_fn)(params, first, None)
    assert float(m["ratio_mean"]) == 1.0 and float(m["ratio_max"]) == 1.0 and float(m["ratio_min"]) == 1.0
    assert float(m["clip_frac"]) == 0.0
    # with the sampler's log-probs as pi_old instead, the ratio is 1 up to the KV cache's rounding
    _, m = jax.jit(obj.loss_fn)(params, first.replace(fresh=jnp.zeros_like(first.fresh)), None)
    assert abs(float(m["ratio_max"]) - 1) < 1e-4 and abs(float(m["ratio_min"]) - 1) < 1e-4


def test_shared_prompts_keep_groups_whole_and_the_loss(grpo):
  """share_prompts: minibatch slices hold whole groups, the ratio is exactly 1 on the first update, and the loss
  and its gradient equal the full forward's on the same rows."""
  setup, obj, params = build("grpo", share_prompts=True, minibatches=2)
  g = obj.batches.o.group_size
  with setup.use():
    batch = obj.batches(0, params).rows
    groups = np.asarray(batch.tokens).reshape(-1, g, batch.tokens.shape[1])[:, :, :-obj.batches.o.max_new_tokens]
    assert (groups == groups[:, :1]).all()  # each run of G rows shares one prompt
    first = _first_slice(batch, obj)
    shared = jax.jit(jax.value_and_grad(obj.loss_fn, has_aux=True))
    full = jax.jit(jax.value_and_grad(build("grpo", minibatches=2)[1].loss_fn, has_aux=True))
    (l1, m1), g1 = shared(params, first, None)
    (l2, _), g2 = full(params, first, None)
  assert float(m1["ratio_max"]) == 1.0 and float(m1["ratio_min"]) == 1.0
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5, atol=1e-7)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_tokens_after_eos_get_no_gradient(grpo):
  setup, obj, params, batch = grpo
  with setup.use():
    batch = _first_slice(batch, obj)
    b, n = batch.mask.shape
    rng = np.random.default_rng(6)
    # make rows end at EOS after 1..n tokens, with random advantages
    lengths = rng.integers(1, n + 1, size=b)
    mask = np.arange(n)[None] < lengths[:, None]
    tokens = np.asarray(batch.tokens).copy()
    tokens[np.arange(b), tokens.shape[1] - n + lengths - 1] = setup.tokenizer.eos_id
    seg = np.asarray(batch.segment_ids).copy()
    seg[:, -n:] = mask
    base = batch.replace(tokens=jnp.asarray(tokens), segment_ids=jnp.asarray(seg), mask=jnp.asarray(mask, jnp.float32),
                         advantages=jnp.asarray(rng.normal(size=(b, n)), jnp.float32))
    garbage = tokens.copy()
    after = np.zeros_like(tokens, bool)
    after[:, -n:] = ~mask
    garbage[after] = rng.integers(0, 256, size=after.sum())
    grad = jax.jit(jax.grad(lambda p, bt: obj.loss_fn(p, bt, None)[0]))
    g1 = grad(params, base)
    g2 = grad(params, base.replace(tokens=jnp.asarray(garbage)))
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(x, y, atol=1e-7)
  # and the per-token surrogate passes no gradient to masked slots
  logp = jnp.asarray(rng.normal(size=(b, n)), jnp.float32)
  d = jax.grad(lambda lp: losses.aggregate(losses.policy_surrogate(lp, jax.lax.stop_gradient(lp), base.advantages,
                                                                   0.2, 0.2)[0], base.mask, "token_mean", n))(logp)
  assert np.all(np.asarray(d)[~mask] == 0) and np.any(np.asarray(d)[mask] != 0)


@pytest.mark.parametrize("algorithm,options", [
    ("reinforce", {"baseline": "batch_mean", "kl_in": "reward", "kl_estimator": "k1", "truncated": "mask"}),
    ("grpo", {"adv_scale": "batch_std", "loss_agg": "seq_mean_token_sum_norm", "truncated": "penalty"}),
    ("ppo", None),
])
def test_every_algorithm_gives_a_finite_update(algorithm, options, request):
  if options is None:
    setup, obj, params, batch = request.getfixturevalue(algorithm)
    with setup.use():
      stats = obj.batches(1, params).stats
  else:
    setup, obj, params = build(algorithm, **options)
    with setup.use():
      batch, stats = obj.batches(0, params)
  with setup.use():
    assert len(batch.fresh) == 8 * (2 if algorithm == "ppo" else 1)
    (loss, m), grads = jax.jit(jax.value_and_grad(obj.loss_fn, has_aux=True))(params, _first_slice(batch, obj),
                                                                              None)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for key in ("kl_k1", "kl_k2", "kl_k3", "entropy", "clip_frac", "ratio_mean"):
    assert key in m, key
  for key in ("reward_mean", "reward_std", "zero_spread_frac", "answer_len", "truncated_frac", "time_rollout_s"):
    assert key in stats and isinstance(stats[key], float), key
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
