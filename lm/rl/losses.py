"""The policy-gradient loss (`policy_loss`, pure, over a RolloutBatch) and its per-token pieces: the clipped
surrogate, the clipped value loss, and the ways of averaging them over a batch that papers disagree on."""
import jax
import jax.numpy as jnp

from lm import losses as lm_losses
from lm.rl import algorithms
from lm.rl import common
from lm.rl import kl as kl_lib

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


def policy_loss(params, batch, rng, *, model, o):
  """The policy-gradient loss over one slice of a RolloutBatch: the (clipped) surrogate, plus the KL term (when
  objective.kl_in="loss"), an entropy bonus, PPO's value loss and the pretraining mix (PPO-ptx) as `o` (the
  objective's options) enables them. Pure and jit-able; returns (loss, metrics)."""
  del rng  # no dropout in policy-gradient updates
  algorithm = algorithms.get(o.algorithm)
  n_new = o.max_new_tokens
  mask = batch.mask
  group = o.group_size if o.share_prompts else 1
  logp_all, logp, hidden = common.forward(model, params, batch.tokens, batch.positions, batch.segment_ids, n_new,
                                          float(o.temperature), group)
  # On the first slice after sampling the policy is the sampler: use its own log-probs (stop-gradient) as
  # pi_old, so the ratio is exactly 1 rather than 1 up to the KV-cache's rounding.
  old = jnp.where(batch.fresh[:, None] > 0, jax.lax.stop_gradient(logp), batch.old_logprobs)
  clip = (o.clip_low, o.clip_high) if algorithm.clipped else (None, None)
  pg_tok, ratio, clipped_tok = policy_surrogate(logp, old, batch.advantages, *clip)
  loss = aggregate(pg_tok, mask, o.loss_agg, n_new)
  n_tok = jnp.maximum(mask.sum(), 1.0)
  tok_mean = lambda x: (x * mask).sum() / n_tok
  kl_now = {k: kl_lib.estimate(logp, batch.ref_logprobs, k) for k in kl_lib.ESTIMATORS}
  metrics = {"pg_loss": loss, "clip_frac": tok_mean(clipped_tok), "ratio_mean": tok_mean(ratio),
             "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf)),
             "ratio_min": jnp.min(jnp.where(mask > 0, ratio, jnp.inf)),
             **{f"kl_{k}": tok_mean(v) for k, v in kl_now.items()}}
  if o.kl_in == "loss":
    kl_term = aggregate(batch.kl_coef[:, None] * kl_now[o.kl_estimator], mask, o.loss_agg, n_new)
    loss = loss + kl_term
    metrics["kl_loss"] = kl_term
  entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
  metrics["entropy"] = tok_mean(jax.lax.stop_gradient(entropy))
  if o.entropy_coef:
    loss = loss - o.entropy_coef * aggregate(entropy, mask, o.loss_agg, n_new)
  if algorithm.critic:
    v = common.values(model, params, batch.tokens, batch.positions, batch.segment_ids, hidden, value=o.value, n=n_new,
                      group=group)
    v_tok, v_clipped = value_loss(v, batch.old_values, batch.returns, o.value_clip)
    v_loss = tok_mean(v_tok)
    loss = loss + o.value_coef * v_loss
    metrics.update(value_loss=v_loss, value_clip_frac=tok_mean(v_clipped))
  if o.ptx_coef:
    ptx_loss = lm_losses.lm_loss(lm_losses.apply_lm(model, params, batch.ptx), batch.ptx)[0]
    loss = loss + o.ptx_coef * ptx_loss
    metrics["ptx_loss"] = ptx_loss
  return loss, metrics
