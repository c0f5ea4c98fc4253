"""Per-token policy and value losses, and the ways of averaging them over a batch that papers disagree on."""
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate(x, mask, how: str, max_tokens: int):
  """[B, T] per-token values -> scalar.

  token_mean: over all valid tokens of the batch (DAPO); long answers weigh more.
  seq_mean_token_mean: each sequence's token mean, then the mean over sequences (GRPO as published).
  seq_mean_token_sum: each sequence's token sum, mean over sequences: the unbiased REINFORCE estimator of
    grad E[R] (log pi(y) is the sum of token log-probs).
  seq_mean_token_sum_norm: token sum over a constant, B * max_tokens (Dr. GRPO): no length bias.
  """
  mask = mask.astype(x.dtype)
  b = x.shape[0]
  if how == "token_mean":
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  if how == "seq_mean_token_mean":
    return ((x * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)).sum() / b
  if how == "seq_mean_token_sum":
    return (x * mask).sum() / b
  if how == "seq_mean_token_sum_norm":
    return (x * mask).sum() / (b * max_tokens)
  raise ValueError(f"unknown loss aggregation {how!r}; use one of {AGGREGATIONS}")


def policy_surrogate(logp, old_logp, advantages, clip_low: float | None = None, clip_high: float | None = None):
  """-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) per token, r = pi / pi_old; unclipped without clip_low.

  At r = 1 its gradient is -A grad log pi, the policy-gradient theorem's. Returns (loss, ratio, clipped).
  """
  ratio = jnp.exp(logp - old_logp)
  loss = -ratio * advantages
  if clip_low is None:
    return loss, ratio, jnp.zeros_like(ratio)
  clipped_loss = -jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
  return jnp.maximum(loss, clipped_loss), ratio, (clipped_loss > loss).astype(jnp.float32)


def value_loss(values, old_values, returns, clip: float | None):
  """0.5 max((V - R)^2, (V_clipped - R)^2), V_clipped kept within clip of the rollout's values (PPO2)."""
  unclipped = jnp.square(values - returns)
  if not clip:
    return 0.5 * unclipped, jnp.zeros_like(values)
  v_clip = old_values + jnp.clip(values - old_values, -clip, clip)
  clipped = jnp.square(v_clip - returns)
  return 0.5 * jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)
