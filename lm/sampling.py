"""Batched generation with a KV cache: one prefill, then a jitted decode loop (lax.scan).

Prompts are left-padded to a common length, so the last prompt column is every row's last real token; padding
has segment id 0 and is never attended to. Returned log-probs are log softmax(logits / temperature) of the
chosen token (log softmax(logits) when greedy), before any top-k/top-p truncation: the policy's own
log-probability, which teacher forcing of the same tokens reproduces.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm import model as model_lib
from lm.errors import UserError


def sample_token(logits, rng, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """(token ids [B], their log-probs [B]) from logits [B, V]."""
  if temperature == 0.0:
    tok = jnp.argmax(logits, axis=-1)
    return tok, jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], -1)[:, 0]
  scaled = logits / temperature
  logp = jax.nn.log_softmax(scaled)
  filtered = scaled
  if top_k:
    kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
    filtered = jnp.where(scaled < kth, -jnp.inf, filtered)
  if top_p < 1.0:
    sorted_logits = jnp.sort(filtered, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits)
    # keep the smallest prefix whose mass reaches top_p (always at least the top token)
    cutoff_idx = jnp.sum(jnp.cumsum(probs, axis=-1) - probs < top_p, axis=-1, keepdims=True) - 1
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
    filtered = jnp.where(filtered < cutoff, -jnp.inf, filtered)
  tok = jax.random.categorical(rng, filtered, axis=-1)
  return tok, jnp.take_along_axis(logp, tok[:, None], -1)[:, 0]


def left_pad(prompts, pad_id: int, length: int | None = None):
  """list of 1-D token arrays -> (tokens, positions, segment_ids), each [B, P] (P = length or the longest)."""
  longest = max(len(x) for x in prompts)
  if longest == 0:
    raise UserError("sampling: every prompt is empty; give at least one token (e.g. BOS)")
  p = max(longest, length or 0)  # a fixed width lets callers reuse one compiled sampler for any prompt
  tokens = np.full((len(prompts), p), pad_id, np.int32)
  seg = np.zeros((len(prompts), p), np.int32)
  pos = np.zeros((len(prompts), p), np.int32)
  for i, x in enumerate(prompts):
    n = len(x)
    if n:
      tokens[i, p - n:] = x
      seg[i, p - n:] = 1
      pos[i, p - n:] = np.arange(n)
  return tokens, pos, seg


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "eos_id", "pad_id"))
def generate_tokens(model, params, tokens, positions, segment_ids, rng, *, max_new_tokens, temperature, top_k, top_p,
                    eos_id, pad_id):
  b, p = tokens.shape
  cache = model_lib.init_cache(model.cfg, b, p + max_new_tokens)
  logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache)
  next_pos = positions[:, -1] + 1

  def step(carry, rng_t):
    cache, logits, pos, done = carry
    tok, logp = sample_token(logits, rng_t, temperature, top_k, top_p)
    tok = jnp.where(done, pad_id, tok)
    valid = ~done
    done = done | (tok == eos_id)
    logits, cache = model.apply({"params": params}, tok[:, None], pos[:, None], valid[:, None].astype(jnp.int32),
                                cache=cache)
    return (cache, logits[:, 0], pos + 1, done), (tok, logp, valid)

  rngs = jax.random.split(rng, max_new_tokens)
  (_, _, _, done), (toks, logps, valid) = jax.lax.scan(step, (cache, logits[:, -1], next_pos,
                                                              jnp.zeros((b,), bool)), rngs)
  return toks.T, jnp.where(valid.T, logps.T, 0.0), valid.T, done


def generate(model, params, prompts, rng, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int = -1, pad_id: int = 0, prompt_len: int | None = None):
  """Sample continuations of `prompts` (list of 1-D int arrays).

  Returns dict: tokens [B, N] (pad after EOS), logprobs [B, N], mask [B, N] (True up to and including EOS),
  truncated [B] (no EOS within N tokens), and the padded prompt arrays used.
  """
  tokens, positions, segment_ids = left_pad(prompts, pad_id, prompt_len)
  longest = int(positions.max()) + 1 + max_new_tokens
  if model.cfg.position == "learned" and longest > model.cfg.max_len:
    raise UserError(f"sampling: prompt ({longest - max_new_tokens} tokens) + {max_new_tokens} new tokens exceeds "
                    f"model.max_len={model.cfg.max_len}; shorten the prompt or the generation")
  toks, logps, mask, done = generate_tokens(model, params, jnp.asarray(tokens), jnp.asarray(positions),
                                      jnp.asarray(segment_ids), rng, max_new_tokens=max_new_tokens,
                                      temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                      eos_id=int(eos_id), pad_id=int(pad_id))
  return {"tokens": toks, "logprobs": logps, "mask": mask, "truncated": ~done,
          "prompt_tokens": tokens, "prompt_positions": positions, "prompt_segment_ids": segment_ids}


def sample_text(model, params, tokenizer, prompt: str, n_tokens: int, rng, temperature=0.8, top_k=0) -> str:
  """Sample n_tokens after prompt; past the model's context, keep the last half-context as the prompt."""
  max_len = model.cfg.max_len
  ids = list(tokenizer.encode(prompt))
  out, chunk = [], max(1, max_len // 2)
  while len(out) < n_tokens:
    context = (ids + out)[-(max_len - chunk):]
    rng, sub = jax.random.split(rng)
    res = generate(model, params, [np.asarray(context, np.int32)], sub, min(chunk, n_tokens - len(out)),
                   temperature=temperature, top_k=top_k, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                   prompt_len=max_len - chunk)
    new = np.asarray(res["tokens"][0])[np.asarray(res["mask"][0])].tolist()
    out += new
    if not new or new[-1] == tokenizer.eos_id:
      break
  return prompt + tokenizer.decode(np.asarray(out, np.int32))
