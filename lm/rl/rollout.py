"""Rollouts: G samples per prompt from the KV-cache sampler, laid out as full sequences for teacher forcing.

A rollout row is [left-padded prompt | response]: `tokens`, `positions`, `segment_ids` [B, P + N] as the model
takes them, and for the N response slots `mask` (True up to and including EOS, so nothing after EOS ever
counts), `logprobs` (under the sampling policy) and `truncated` [B] (no EOS within N tokens).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm import chat
from lm import sampling


def rollout(model, params, prompts: list, rng, max_new_tokens: int, tokenizer, temperature: float = 1.0,
            top_k: int = 0, top_p: float = 1.0) -> dict:
  """prompts: list of 1-D prompt token arrays (already repeated G times). Returns numpy arrays (see above)."""
  out = jax.device_get(sampling.generate(model, params, prompts, rng, max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))
  mask = np.asarray(out["mask"], bool)
  last = out["prompt_positions"][:, -1:]
  return {
      "tokens": np.concatenate([out["prompt_tokens"], out["tokens"]], 1).astype(np.int32),
      "positions": np.concatenate([out["prompt_positions"], last + 1 + np.arange(max_new_tokens)], 1).astype(np.int32),
      "segment_ids": np.concatenate([out["prompt_segment_ids"], mask], 1).astype(np.int32),
      "mask": mask,
      "logprobs": np.asarray(out["logprobs"], np.float32),
      "truncated": np.asarray(out["truncated"], bool),
  }


def responses(tokenizer, rows: dict) -> list:
  return [chat.response_text(tokenizer, t, m) for t, m in zip(rows["tokens"][:, -rows["mask"].shape[1]:],
                                                               rows["mask"])]


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
