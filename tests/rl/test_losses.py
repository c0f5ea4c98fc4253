"""lm/rl/losses.py against NumPy: PPO's clipped surrogate and clipped value loss on both sides of the clip range
and for both advantage signs, and the four aggregations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.rl import losses


def np_surrogate(ratio, adv, lo, hi):
  """-min(r A, clip(r, 1 - lo, 1 + hi) A), PPO's pessimistic objective, per token (Schulman et al. 2017, eq. 7)."""
  return -np.minimum(ratio * adv, np.clip(ratio, 1 - lo, 1 + hi) * adv)


def test_clipped_surrogate_matches_numpy_on_both_sides_of_the_clip_range():
  ratios = np.array([0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0], np.float64)
  for lo, hi in ((0.2, 0.2), (0.2, 0.28)):
    for adv in (1.5, -1.5):
      r = np.repeat(ratios, 1)
      a = np.full_like(r, adv)
      logp = jnp.asarray(np.log(r), jnp.float32)
      loss, ratio, clipped = losses.policy_surrogate(logp, jnp.zeros_like(logp), jnp.asarray(a, jnp.float32), lo, hi)
      np.testing.assert_allclose(ratio, r, rtol=1e-6)
      np.testing.assert_allclose(loss, np_surrogate(r, a, lo, hi), rtol=1e-6)
      # clipped exactly where the clipped term is the pessimistic one and differs
      want = np_surrogate(r, a, lo, hi) > -r * a + 1e-12
      np.testing.assert_array_equal(np.asarray(clipped) > 0, want)
      # the gradient: zero where clipped, -A r (d/dlogp of -r A) elsewhere
      g = jax.grad(lambda lp: losses.policy_surrogate(lp, jnp.zeros_like(lp), jnp.asarray(a, jnp.float32), lo,
                                                      hi)[0].sum())(logp)
      np.testing.assert_allclose(g, np.where(want, 0.0, -a * r), rtol=1e-5, atol=1e-7)
  # with A > 0 only a ratio above 1 + hi is clipped, with A < 0 only one below 1 - lo
  _, _, c_pos = losses.policy_surrogate(jnp.log(jnp.asarray(ratios)), jnp.zeros(7), jnp.ones(7), 0.2, 0.2)
  _, _, c_neg = losses.policy_surrogate(jnp.log(jnp.asarray(ratios)), jnp.zeros(7), -jnp.ones(7), 0.2, 0.2)
  assert np.asarray(c_pos).tolist() == [0, 0, 0, 0, 0, 1, 1] and np.asarray(c_neg).tolist() == [1, 1, 0, 0, 0, 0, 0]


def test_unclipped_surrogate_is_minus_ratio_times_advantage():
  rng = np.random.default_rng(0)
  lp, old, a = (rng.normal(size=10) * 0.3 for _ in range(3))
  loss, ratio, clipped = losses.policy_surrogate(jnp.asarray(lp), jnp.asarray(old), jnp.asarray(a))
  np.testing.assert_allclose(loss, -np.exp(lp - old) * a, rtol=1e-5)
  assert not np.any(np.asarray(clipped))


def np_value_loss(v, old, ret, clip):
  """0.5 max((V - R)^2, (old + clip(V - old, -c, c) - R)^2): PPO2's pessimistic value loss."""
  v_clip = old + np.clip(v - old, -clip, clip)
  return 0.5 * np.maximum((v - ret) ** 2, (v_clip - ret) ** 2)


@pytest.mark.parametrize("clip", [0.2, 0.5])
def test_clipped_value_loss_matches_numpy(clip):
  # the last two: V within the clip range of a large old value (clipping V + old instead of V - old would bind)
  old = np.array([0.3, -0.2, 0.5, 0.0, -0.4, 0.1, 0.6, -0.1, 0.2, 1.0, -1.0])
  v = old + np.array([-1.0, -0.3, -0.1, 0.0, 0.1, 0.3, 1.0, 0.9, -0.6, 0.1, -0.05])  # inside and outside the range
  ret = np.array([0.5, -1.0, 2.0, 0.0, -2.0, 1.0, -0.5, 0.8, -0.1, -1.0, 1.0])  # returns on either side
  got, clipped = losses.value_loss(jnp.asarray(v, jnp.float32), jnp.asarray(old, jnp.float32),
                                   jnp.asarray(ret, jnp.float32), clip)
  np.testing.assert_allclose(got, np_value_loss(v, old, ret, clip), rtol=1e-6, atol=1e-7)
  v_clip = old + np.clip(v - old, -clip, clip)
  np.testing.assert_array_equal(np.asarray(clipped) > 0, (v_clip - ret) ** 2 > (v - ret) ** 2)
  assert 0 < np.asarray(clipped).sum() < len(v)  # both branches exercised
  got, _ = losses.value_loss(jnp.asarray(v, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(ret, jnp.float32),
                             0.0)
  np.testing.assert_allclose(got, 0.5 * (v - ret) ** 2, rtol=1e-6)


def test_aggregations_match_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 5))
  mask = np.arange(5)[None] < np.array([[5], [2], [1]])
  agg = lambda how: float(losses.aggregate(jnp.asarray(x, jnp.float32), jnp.asarray(mask), how, 5))
  assert agg("token_mean") == pytest.approx((x * mask).sum() / mask.sum(), rel=1e-5)
  assert agg("seq_mean_token_mean") == pytest.approx(np.mean([(x[i] * mask[i]).sum() / mask[i].sum()
                                                              for i in range(3)]), rel=1e-5)
  assert agg("seq_mean_token_sum") == pytest.approx((x * mask).sum() / 3, rel=1e-5)
  assert agg("seq_mean_token_sum_norm") == pytest.approx((x * mask).sum() / 15, rel=1e-5)
  one = np.zeros((3, 5), bool)
  one[1, 2] = True  # a batch with a single answer token: its own value
  assert float(losses.aggregate(jnp.asarray(x, jnp.float32), jnp.asarray(one), "token_mean", 5)) == pytest.approx(
      x[1, 2], rel=1e-6)
  with pytest.raises(ValueError, match="unknown loss aggregation 'sum'; use one of"):
    agg("sum")
