"""Advantage estimators, registered by name: baselines over a group or batch (REINFORCE, RLOO, GRPO) and GAE (PPO).

Outcome estimators take sequence rewards [prompts, G] (G samples of each prompt) and return advantages of
the same shape; GAE works on per-token rewards [B, T] with a response mask that is a prefix of each row (it ends
at EOS). lm/rl/algorithms.py says which algorithm uses which.
"""
import jax
import jax.numpy as jnp

ESTIMATORS = {}


def register(name: str):
  def add(fn):
    ESTIMATORS[name] = fn
    return fn
  return add


def get(name: str):
  if name not in ESTIMATORS:
    raise ValueError(f"unknown advantage estimator {name!r}; registered: {', '.join(sorted(ESTIMATORS))}")
  return ESTIMATORS[name]


def batch_mean(rewards):
  """REINFORCE with the batch mean as baseline (includes the sample itself: E[grad] is (1 - 1/n) x the true one)."""
  r = rewards.reshape(-1)
  return (r - r.mean()).reshape(rewards.shape)


def leave_one_out(rewards):
  """RLOO: each sample's baseline is the mean of the other G - 1 samples of its prompt (unbiased)."""
  g = rewards.shape[-1]
  return rewards - (rewards.sum(-1, keepdims=True) - rewards) / (g - 1)


def group_normalised(rewards, scale: str = "group_std", eps: float = 1e-4):
  """GRPO: reward minus its group's mean, divided by the group's std, the batch's std, or nothing (Dr. GRPO).

  Stds are unbiased (ddof=1), as torch.std computes them in the reference implementations. A group whose
  rewards are all equal gets exactly 0: in float32 its mean can differ from the rewards by a rounding error,
  which the group-std scale would blow up by 1 / eps (1.06s gave |advantages| of 2.4e-3).
  """
  same = rewards.max(-1, keepdims=True) == rewards.min(-1, keepdims=True)
  centred = jnp.where(same, 0.0, rewards - rewards.mean(-1, keepdims=True))
  if scale == "group_std":
    return centred / (rewards.std(-1, ddof=1, keepdims=True) + eps)
  if scale == "batch_std":
    return centred / (rewards.std(ddof=1) + eps)
  if scale == "none":
    return centred
  raise ValueError(f"unknown advantage scale {scale!r}; use group_std, batch_std or none")


def gae(rewards, values, mask, gamma: float, lam: float):
  """Generalised advantage estimation over [B, T] (Schulman et al. 2016); the state after the last valid token is
  terminal (value 0). Returns (advantages, returns = advantages + values), zero where mask is 0."""
  mask = mask.astype(jnp.float32)
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], 1)
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], 1) * next_mask
  deltas = (rewards + gamma * next_values - values) * mask

  def body(carry, xs):
    delta, m_next = xs
    adv = delta + gamma * lam * m_next * carry
    return adv, adv

  _, adv = jax.lax.scan(body, jnp.zeros(rewards.shape[0]), (deltas.T, next_mask.T), reverse=True)
  adv = adv.T * mask
  return adv, (adv + values) * mask


# Registered here rather than by decorator: mutmut (make mutmut) skips decorated functions, and these four are the
# math the mutation run exists for. A new estimator in another file can still use @register.
for _name, _fn in (("batch_mean", batch_mean), ("leave_one_out", leave_one_out), ("group_normalised", group_normalised),
                   ("gae", gae)):
  register(_name)(_fn)


def whiten(x, mask, eps: float = 1e-8):
  """Zero mean, unit variance over the masked entries (PPO's advantage normalisation)."""
  mask = mask.astype(jnp.float32)
  n = jnp.maximum(mask.sum(), 1.0)
  mean = (x * mask).sum() / n
  var = (jnp.square(x - mean) * mask).sum() / n
  return (x - mean) * jax.lax.rsqrt(var + eps) * mask
