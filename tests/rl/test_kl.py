"""lm/rl/kl.py: the k1/k2/k3 estimators against closed forms and exact expectations; the KL controller."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.rl import kl as kl_lib


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


def test_unknown_estimator_names_the_known_ones():
  with pytest.raises(ValueError, match="k4.*k1, k2, k3|k1.*k2.*k3"):
    kl_lib.estimate(jnp.zeros(2), jnp.zeros(2), "k4")


def test_adaptive_kl_controller_moves_toward_target():
  c = kl_lib.Controller(0.1, target=1.0, horizon=10)
  assert c.update(5.0) == pytest.approx(0.1 * 1.02)  # KL too high: error clipped to +0.2, coefficient up
  c = kl_lib.Controller(0.1, target=1.0, horizon=10)
  assert c.update(0.9) == pytest.approx(0.1 * (1 - 0.01))  # inside the clip: proportional
  assert kl_lib.Controller(0.1).update(100.0) == 0.1  # fixed


def test_adaptive_kl_controller_error_is_relative_to_the_target_and_clipped_both_ways():
  c = kl_lib.Controller(0.1, target=0.5, horizon=100)
  assert c.update(0.55) == pytest.approx(0.1 * (1 + 0.1 / 100))  # error 0.55 / 0.5 - 1 = +0.1
  c = kl_lib.Controller(0.1, target=0.5, horizon=100)
  assert c.update(0.0) == pytest.approx(0.1 * (1 - 0.2 / 100))  # far below target: clipped at -0.2
  assert kl_lib.Controller(0.1, target=0.5).horizon == 10000.0  # the default horizon, in samples


def test_adaptive_kl_controller_advances_by_samples():
  """Ziegler et al.'s controller as TRL/OpenRLHF run it: one update of n samples moves the coefficient as n
  updates of one sample would (to first order), so the horizon counts samples, not rollouts."""
  c = kl_lib.Controller(0.1, target=1.0, horizon=10000)
  assert c.update(2.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
  # 900 rollouts of 64 samples with KL twice the target: x ~3.2, where counting rollouts gave x1.018
  c = kl_lib.Controller(0.1, target=1.0, horizon=10000)
  for _ in range(900):
    c.update(2.0, 64)
  assert c.coef / 0.1 == pytest.approx((1 + 0.2 * 64 / 10000) ** 900) and c.coef / 0.1 > 3.0
