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
from lm import model as model_lib


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


def forward(model, params, tokens, positions, segment_ids, n: int, temperature: float = 1.0, group: int = 1):
  """Teacher-forced (log-softmax [B, N, V], token log-probs [B, N], final hidden [B, N, D]) for the last n slots.

  Slot t's distribution is read at the position before it; logits are divided by the sampling temperature so
  these are the same log-probs the sampler reports. With `group` > 1, rows come in consecutive groups of that
  many samples of one prompt (the first T - n slots): the prompt runs once per group and the group's responses
  attend to its KV cache. The same function, with fewer tokens through the model, in other roundings.
  """
  if group == 1:
    logits, _, hidden = model.apply({"params": params}, tokens, positions, segment_ids, return_hidden=True)
    logits, hidden = logits[:, -n - 1:-1], hidden[:, -n - 1:-1]
  else:
    b, t = tokens.shape
    first = lambda x: x[:, :t - n].reshape(b // group, group, t - n)[:, 0]
    cache = model_lib.init_cache(model.cfg, b // group, t)
    prompt_logits, cache, prompt_hidden = model.apply({"params": params}, first(tokens), first(positions),
                                                      first(segment_ids), cache=cache, return_hidden=True)
    logits, _, hidden = model.apply({"params": params}, tokens[:, -n:], positions[:, -n:], segment_ids[:, -n:],
                                    cache=model_lib.repeat_cache(model.cfg, cache, group), return_hidden=True)
    last = lambda x: model_lib.repeat_rows(x[:, -1:], group)  # the prompt's last slot predicts the first token
    logits = jnp.concatenate([last(prompt_logits), logits[:, :-1]], 1)
    hidden = jnp.concatenate([last(prompt_hidden), hidden[:, :-1]], 1)
  logp_all = jax.nn.log_softmax(logits / temperature if temperature > 0 else logits)
  logp = jnp.take_along_axis(logp_all, tokens[:, -n:, None], -1)[..., 0]
  return logp_all, logp, hidden


@functools.partial(jax.jit, static_argnames=("model", "n", "temperature"))
def token_logprobs(model, params, tokens, positions, segment_ids, *, n: int, temperature: float = 1.0):
  return forward(model, params, tokens, positions, segment_ids, n, temperature)[1]


def values(model, params, tokens, positions, segment_ids, hidden, *, value: str, n: int, group: int = 1):
  """PPO's value per response slot: a linear head on the policy's final hidden states (`hidden`), or a separate
  critic, which runs its own trunk (`hidden` unused)."""
  if value == "critic":
    hidden = forward(model, params["critic"]["trunk"], tokens, positions, segment_ids, n, group=group)[2]
    head = params["critic"]["head"]
  else:
    head = params["value_head"]
  return heads.apply(head, hidden)
