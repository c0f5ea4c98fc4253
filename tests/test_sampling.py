"""Sampler against teacher forcing: the log-probs it reports are the model's log-probs of the tokens it chose."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import sampling
from tests.test_model import GPT, LLAMA, build, jitted


def teacher_forced_logprobs(model, params, prompt_tokens, prompt_pos, prompt_seg, out, temperature):
  """Log-probs of the sampled tokens from one full forward pass over prompt + sample."""
  toks = np.concatenate([prompt_tokens, np.asarray(out["tokens"])], 1)
  n = out["tokens"].shape[1]
  pos = np.concatenate([prompt_pos, prompt_pos[:, -1:] + 1 + np.arange(n)], 1)
  seg = np.concatenate([prompt_seg, np.asarray(out["mask"]).astype(np.int32)], 1)
  logits, _ = jitted(model)({"params": params}, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(seg))
  logits = np.asarray(logits, np.float64)[:, prompt_tokens.shape[1] - 1:-1]
  logits = logits / (temperature if temperature > 0 else 1.0)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
      logits.max(-1, keepdims=True)
  return np.take_along_axis(logp, np.asarray(out["tokens"])[..., None], -1)[..., 0], logp.argmax(-1)


@pytest.mark.parametrize("overrides,temperature", [(GPT, 1.0), (GPT, 0.7), (LLAMA, 1.0), (GPT, 0.0)],
                         ids=["gpt-t1", "gpt-t0.7", "llama-t1", "greedy"])
def test_sampled_logprobs_equal_teacher_forced(overrides, temperature):
  model, params = build(overrides)
  prompts = [np.array([1, 2, 3, 4, 5], np.int32), np.array([9, 8], np.int32), np.array([7], np.int32)]
  out = sampling.generate(model, params, prompts, jax.random.PRNGKey(0), max_new_tokens=10,
                          temperature=temperature, eos_id=-1, pad_id=0)
  ref, argmax = teacher_forced_logprobs(model, params, out["prompt_tokens"], out["prompt_positions"],
                                out["prompt_segment_ids"], out, temperature)
  np.testing.assert_allclose(np.asarray(out["logprobs"]), ref, atol=1e-4)
  if temperature == 0.0:  # greedy picks the teacher-forced argmax at every step
    np.testing.assert_array_equal(np.asarray(out["tokens"]), argmax)


def test_left_padding_does_not_change_a_prompts_samples():
  model, params = build(GPT)
  p = np.array([5, 6, 7], np.int32)
  alone = sampling.generate(model, params, [p], jax.random.PRNGKey(0), 8, temperature=0.0)
  padded = sampling.generate(model, params, [p, np.arange(1, 12, dtype=np.int32)], jax.random.PRNGKey(0), 8,
                             temperature=0.0)
  np.testing.assert_array_equal(alone["tokens"][0], padded["tokens"][0])


def test_eos_ends_the_mask_and_pads_after():
  model, params = build(GPT)
  # make EOS the greedy choice everywhere by boosting its embedding row (tied output layer)
  eos = 258
  emb = np.asarray(params["embed"]["embedding"]).copy()
  emb[eos] *= 50.0
  params = {**params, "embed": {"embedding": jnp.asarray(emb)}}
  out = sampling.generate(model, params, [np.array([eos], np.int32)], jax.random.PRNGKey(0), 6, temperature=0.0,
                          eos_id=eos, pad_id=0)
  toks, mask = np.asarray(out["tokens"][0]), np.asarray(out["mask"][0])
  first = int(np.argmax(toks == eos))
  assert toks[first] == eos and mask[:first + 1].all() and not mask[first + 1:].any()
  assert np.all(toks[first + 1:] == 0) and not bool(out["truncated"][0])


def test_top_k_and_top_p_restrict_the_support():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  for seed in range(30):
    tok, _ = sampling.sample_token(logits, jax.random.PRNGKey(seed), 1.0, top_k=2)
    assert int(tok[0]) in (0, 1)
    tok, _ = sampling.sample_token(logits, jax.random.PRNGKey(seed), 1.0, top_p=0.7)
    assert int(tok[0]) in (0, 1)


@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["t1", "greedy"])
def test_prefilling_each_prompt_once_per_group_samples_the_same(temperature):
  """group=G (G consecutive rows share a prompt): one prefill per prompt, the same tokens and log-probs."""
  model, params = build(LLAMA)
  prompts = [np.array([1, 2, 3, 4, 5], np.int32)] * 3 + [np.array([9, 8], np.int32)] * 3
  kw = dict(max_new_tokens=7, temperature=temperature, eos_id=260, pad_id=0)
  plain = sampling.generate(model, params, prompts, jax.random.PRNGKey(3), **kw)
  grouped = sampling.generate(model, params, prompts, jax.random.PRNGKey(3), group=3, **kw)
  np.testing.assert_array_equal(grouped["tokens"], plain["tokens"])
  np.testing.assert_array_equal(grouped["mask"], plain["mask"])
  np.testing.assert_allclose(grouped["logprobs"], plain["logprobs"], atol=1e-5)
  assert len(set(map(tuple, np.asarray(plain["tokens"])[:3]))) > 1 or temperature == 0.0  # the rows do differ
