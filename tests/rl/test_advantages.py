"""lm/rl/advantages.py against NumPy: group and batch baselines, GRPO normalisation, GAE, whitening."""
import jax.numpy as jnp
import numpy as np
import pytest

from lm.rl import advantages as adv_lib


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
  np.testing.assert_array_equal(adv_lib.group_normalised(jnp.asarray(r)),  # GRPO's default: the group's std
                                adv_lib.group_normalised(jnp.asarray(r), "group_std"))
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


@pytest.mark.parametrize("scale", ["group_std", "batch_std", "none"])
@pytest.mark.parametrize("value", [1.06, 0.1, -3.7, 1e6 + 0.3])
def test_grpo_advantages_of_an_all_equal_group_are_exactly_zero(scale, value):
  """A group with no reward spread carries no signal: exactly 0, not a float32 rounding error of its mean divided
  by the 1e-4 epsilon (a group of 1.06s gave |advantage| up to 2.4e-3)."""
  r = np.full((3, 8), value, np.float32)
  r[1] = np.arange(8, dtype=np.float32)  # one group with spread beside them
  adv = np.asarray(adv_lib.group_normalised(jnp.asarray(r), scale))
  assert np.all(adv[[0, 2]] == 0.0)
  assert np.any(adv[1] != 0.0)


def test_estimators_are_registered_by_name():
  assert {"batch_mean", "leave_one_out", "group_normalised", "gae"} <= set(adv_lib.ESTIMATORS)
  assert adv_lib.get("leave_one_out") is adv_lib.leave_one_out and adv_lib.get("gae") is adv_lib.gae
  with pytest.raises(ValueError, match="unknown advantage estimator 'nope'; registered: batch_mean, gae, "):
    adv_lib.get("nope")


def test_whiten_of_one_or_no_valid_entry_is_zero_not_nan():
  x = jnp.asarray([[3.0, -2.0, 7.0]])
  np.testing.assert_array_equal(adv_lib.whiten(x, jnp.asarray([[True, False, False]])), [[0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(adv_lib.whiten(x, jnp.zeros((1, 3), bool)), [[0.0, 0.0, 0.0]])


def test_an_unknown_grpo_scale_is_named():
  with pytest.raises(ValueError, match="unknown advantage scale 'std'; use group_std, batch_std or none"):
    adv_lib.group_normalised(jnp.ones((2, 4)), "std")
