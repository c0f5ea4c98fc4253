"""The typed batch a policy-gradient update trains on, and the teacher-forced passes that score rollout rows.

A rollout row is [left-padded prompt | response]: `tokens`, `positions`, `segment_ids` [B, P + N] as the model
takes them; every other field is per response slot [B, N] (or per row [B]).
"""
import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from lm import heads


@flax.struct.dataclass
class RolloutBatch:
  tokens: jax.Array  # [B, P + N] int32
  positions: jax.Array  # [B, P + N] int32
  segment_ids: jax.Array  # [B, P + N] int32: 0 for prompt padding and response slots after EOS
  mask: jax.Array  # [B, N] float32: 1 for response tokens that count (up to and including EOS)
  old_logprobs: jax.Array  # [B, N] under the sampling policy
  ref_logprobs: jax.Array  # [B, N] under the frozen reference
  advantages: jax.Array  # [B, N]
  returns: jax.Array  # [B, N] (PPO's value targets; 0 otherwise)
  old_values: jax.Array  # [B, N] (PPO's values at rollout time; 0 otherwise)
  kl_coef: jax.Array  # [B] the KL coefficient when the rollout was made
  fresh: jax.Array  # [B] 1 on the first update's rows, which are exactly on-policy
  ptx: Optional[dict] = None  # pretraining rows (the next-token batch format) for PPO-ptx, or None


def forward(model, params, tokens, positions, segment_ids, n: int, temperature: float = 1.0):
  """Teacher-forced (log-softmax [B, N, V], token log-probs [B, N], final hidden [B, N, D]) for the last n slots.

  Slot t's distribution is read at the position before it; logits are divided by the sampling temperature so
  these are the same log-probs the sampler reports.
  """
  logits, _, hidden = model.apply({"params": params}, tokens, positions, segment_ids, return_hidden=True)
  logits, hidden = logits[:, -n - 1:-1], hidden[:, -n - 1:-1]
  logp_all = jax.nn.log_softmax(logits / temperature if temperature > 0 else logits)
  logp = jnp.take_along_axis(logp_all, tokens[:, -n:, None], -1)[..., 0]
  return logp_all, logp, hidden


@functools.partial(jax.jit, static_argnames=("model", "n", "temperature"))
def token_logprobs(model, params, tokens, positions, segment_ids, *, n: int, temperature: float = 1.0):
  return forward(model, params, tokens, positions, segment_ids, n, temperature)[1]


def values(model, params, tokens, positions, segment_ids, hidden, *, value: str, n: int):
  """PPO's value per response slot: a linear head on the policy's final hidden states (`hidden`), or a separate
  critic, which runs its own trunk (`hidden` unused)."""
  if value == "critic":
    hidden = forward(model, params["critic"]["trunk"], tokens, positions, segment_ids, n)[2]
    head = params["critic"]["head"]
  else:
    head = params["value_head"]
  return heads.apply(head, hidden)
