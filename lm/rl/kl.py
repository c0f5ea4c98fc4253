"""KL(policy || reference) estimated from tokens sampled from the policy (Schulman, "Approximating KL Divergence").

With log r = ref_logp - logp on a token x ~ policy:
  k1 = -log r            unbiased, can be negative, high variance;
  k2 = (log r)^2 / 2     biased (its mean is half the expected squared log ratio), low variance, >= 0;
  k3 = r - 1 - log r     unbiased and >= 0 (the GRPO default).
"""
import jax.numpy as jnp

ESTIMATORS = ("k1", "k2", "k3")


def estimate(logp, ref_logp, kind: str):
  log_r = ref_logp - logp
  if kind == "k1":
    return -log_r
  if kind == "k2":
    return 0.5 * jnp.square(log_r)
  if kind == "k3":
    return jnp.expm1(log_r) - log_r  # expm1 keeps it >= 0 to rounding when log r is tiny
  raise ValueError(f"unknown KL estimator {kind!r}; use one of {ESTIMATORS}")


class Controller:
  """Fixed coefficient, or Ziegler et al.'s (2019) adaptive one: steer the measured KL toward a target.

  beta <- beta * (1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon), with n the samples (rollout rows) the
  KL was measured on, as TRL and OpenRLHF count it: the horizon is in samples. (Counting rollouts instead, the
  default horizon of 10,000 moved the coefficient by x1.018 over a 900-rollout run.)
  """

  def __init__(self, coef: float, target: float = 0.0, horizon: float = 10000.0):
    self.coef, self.target, self.horizon = float(coef), float(target), float(horizon)

  def update(self, kl: float, n: int = 1):
    if self.target > 0:
      err = min(max(kl / self.target - 1.0, -0.2), 0.2)
      self.coef *= 1.0 + err * n / self.horizon
    return self.coef
