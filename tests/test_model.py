"""Model against independent references: NumPy cross-entropy, full forward vs KV-cache decoding, packing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model as model_lib
from lm import losses
from tests.conftest import tiny_config

GPT = {}
LLAMA = {"model.norm": "rmsnorm", "model.mlp": "swiglu", "model.position": "rope", "model.n_kv_heads": 2,
         "model.tie_embeddings": False}
MISTRAL = {**LLAMA, "model.sliding_window": 5}


@functools.lru_cache(maxsize=None)
def jitted(model):
  """Compiled model.apply: eager Flax dispatches op by op, which is slow on 2 cores."""
  return jax.jit(model.apply)


def build(overrides):
  cfg = tiny_config(**overrides)
  model = model_lib.build(cfg.model)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"])(jax.random.PRNGKey(0))
  import flax.linen as nn
  return model, nn.unbox(params)


def test_loss_matches_numpy_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(3, 7))
  weights = (rng.random((3, 7)) > 0.3).astype(np.float32)
  loss, _ = losses.lm_loss(jnp.asarray(logits), {"targets": jnp.asarray(targets), "weights": jnp.asarray(weights)})
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), (nll * weights).sum() / weights.sum(), rtol=1e-5)


@pytest.mark.parametrize("overrides", [GPT, LLAMA, MISTRAL], ids=["gpt2", "llama", "mistral"])
def test_causal_mask_future_tokens_never_change_past_logits(overrides):
  """Changing token t+1 leaves the logits at positions <= t unchanged and changes later ones (every attention
  implementation that runs on CPU: the XLA path; full and sliding-window masks)."""
  model, params = build(overrides)
  rng = np.random.default_rng(7)
  tokens = rng.integers(0, 256, size=(1, 12)).astype(np.int32)
  base, _ = jitted(model)({"params": params}, jnp.asarray(tokens))
  for t in (0, 4, 10):
    changed = tokens.copy()
    changed[0, t + 1] = (changed[0, t + 1] + 1) % 256
    out, _ = jitted(model)({"params": params}, jnp.asarray(changed))
    np.testing.assert_array_equal(np.asarray(out)[0, :t + 1], np.asarray(base)[0, :t + 1])
    assert np.abs(np.asarray(out)[0, t + 1] - np.asarray(base)[0, t + 1]).max() > 1e-6


@pytest.mark.parametrize("overrides", [GPT, LLAMA, MISTRAL], ids=["gpt2", "llama", "mistral"])
def test_kv_cache_decoding_equals_full_forward(overrides):
  model, params = build(overrides)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(2, 12)), jnp.int32)
  full, _ = jitted(model)({"params": params}, tokens)
  cache = model_lib.init_cache(model.cfg, 2, 16)
  # prefill 5 tokens, then one at a time
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  seg = jnp.ones((2, 12), jnp.int32)
  logits, cache = jitted(model)({"params": params}, tokens[:, :5], pos[:, :5], seg[:, :5], cache=cache)
  steps = [logits]
  for t in range(5, 12):
    logits, cache = jitted(model)({"params": params}, tokens[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1],
                                cache=cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("overrides", [GPT, LLAMA], ids=["gpt2", "llama"])
def test_packed_segments_do_not_attend_to_each_other(overrides):
  model, params = build(overrides)
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, 256, size=7), rng.integers(0, 256, size=9)
  la, _ = jitted(model)({"params": params}, jnp.asarray(a[None], jnp.int32))
  lb, _ = jitted(model)({"params": params}, jnp.asarray(b[None], jnp.int32))
  packed = np.concatenate([a, b, [0, 0]])[None]
  positions = np.concatenate([np.arange(7), np.arange(9), [0, 0]])[None]
  segments = np.concatenate([np.ones(7), 2 * np.ones(9), [0, 0]])[None]
  lp, _ = jitted(model)({"params": params}, jnp.asarray(packed, jnp.int32), jnp.asarray(positions, jnp.int32),
                      jnp.asarray(segments, jnp.int32))
  assert np.all(np.isfinite(np.asarray(lp)))
  np.testing.assert_allclose(lp[0, :7], la[0], atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(lp[0, 7:16], lb[0], atol=2e-5, rtol=1e-4)


def test_sliding_window_limits_attention():
  model, params = build(MISTRAL)
  tokens = np.random.default_rng(3).integers(0, 256, size=(1, 12))
  other = tokens.copy()
  other[0, 0] = (other[0, 0] + 1) % 256  # position 0 is outside the window of positions >= 5 ... in layer 1
  l1, _ = jitted(model)({"params": params}, jnp.asarray(tokens, jnp.int32))
  l2, _ = jitted(model)({"params": params}, jnp.asarray(other, jnp.int32))
  # with 2 layers and window 5, information travels at most 2 * 4 = 8 positions
  np.testing.assert_allclose(l1[0, 9:], l2[0, 9:], atol=1e-6)
  assert not np.allclose(l1[0, 1:5], l2[0, 1:5])


def test_param_count_formula_mistral_7b():
  from configs import mistral_7b
  cfg = mistral_7b.get_config()
  model = model_lib.build(cfg.model)
  shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.PRNGKey(0))
  import flax.linen as nn
  assert model_lib.count_params(nn.unbox(shapes)) == 7_241_732_096


@pytest.mark.parametrize("overrides,tol", [({"model.remat": "dots"}, 1e-6), ({"model.dtype": "bfloat16"}, 3e-2)],
                         ids=["remat-dots", "bf16"])
def test_remat_and_bf16_match_the_plain_float32_loss_and_grads(overrides, tol):
  model, params = build(GPT)
  other, _ = build(overrides)
  rng = np.random.default_rng(4)
  toks = rng.integers(0, 256, size=(2, 17))
  batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": np.ones((2, 16), np.float32),
           "positions": np.broadcast_to(np.arange(16), (2, 16)), "segment_ids": np.ones((2, 16), np.int32)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  grad = lambda m: jax.jit(jax.value_and_grad(lambda p: losses.token_loss_fn(m)(p, batch, None)[0]))(params)
  (l0, g0), (l1, g1) = grad(model), grad(other)
  np.testing.assert_allclose(l1, l0, rtol=tol)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=tol * 10, atol=tol * 0.1)
