"""Model against independent references: NumPy cross-entropy, full forward vs KV-cache decoding, packing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model as model_lib
from lm import losses
from tests.conftest import cached_decode, tiny_config

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
  one = np.zeros_like(weights)
  one[2, 3] = 1.0  # a single target token: its own NLL
  loss, metrics = losses.lm_loss(jnp.asarray(logits), {"targets": jnp.asarray(targets), "weights": jnp.asarray(one)})
  np.testing.assert_allclose([float(loss), float(metrics["loss"]), float(metrics["tokens"])], [nll[2, 3], nll[2, 3], 1],
                             rtol=1e-5)


def test_train_loss_is_the_nll_plus_z_loss_and_uses_the_rng_for_dropout():
  model, params = build(GPT)
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, 256, size=(2, 9)).astype(np.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": np.broadcast_to(np.arange(8), (2, 8)),
           "segment_ids": np.ones((2, 8), np.int32), "weights": (rng.random((2, 8)) > 0.3).astype(np.float32)}
  logits = np.asarray(jitted(model)({"params": params}, jnp.asarray(batch["inputs"]))[0], np.float64)
  logz = np.log(np.exp(logits).sum(-1))
  nll = logz - np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
  w = batch["weights"]
  for z in (0.0, 0.1):
    loss, metrics = jax.jit(losses.token_loss_fn(model, z))(params, batch, None)
    want = (nll * w).sum() / w.sum() + z * (logz ** 2 * w).sum() / w.sum()
    assert float(loss) == pytest.approx(want, rel=1e-5), z
    if z:
      assert float(metrics["z_loss"]) == pytest.approx(z * (logz ** 2 * w).sum() / w.sum(), rel=1e-5)
    else:
      assert "z_loss" not in metrics
  # with dropout the train loss gets the step's rng: two keys, two losses
  model, params = build({"model.dropout": 0.5})
  loss_fn = jax.jit(losses.token_loss_fn(model))
  a, b = (float(loss_fn(params, batch, jax.random.PRNGKey(i))[0]) for i in (1, 2))
  assert a != b
  # and without one (evaluation) dropout is off: the logits of the deterministic model
  np.testing.assert_array_equal(jax.jit(lambda p: losses.apply_lm(model, p, batch))(params),
                                jitted(model)({"params": params}, jnp.asarray(batch["inputs"]))[0])


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
  steps = cached_decode(jitted(model), params, model.cfg, tokens, prefill=5, cache_len=16)
  np.testing.assert_allclose(steps, full, atol=2e-5, rtol=1e-4)


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


# ---- Options from the modded-nanogpt speedruns (configs/speedrun_shakespeare.py) ----

SPEEDRUN = {"model.qk_norm": True, "model.mlp": "relu2", "model.zero_init_out": True}


def _tree(params) -> list:
  return sorted((jax.tree_util.keystr(k), v.shape) for k, v in jax.tree_util.tree_leaves_with_path(params))


def test_defaults_give_the_model_of_before_the_speedrun_options():
  """Default options: the same params and logits as at commit 8511fe0 (values recorded there with this input),
  so runs and checkpoints made before these options existed mean what they meant."""
  model, params = build(GPT)
  tokens = jnp.asarray(np.arange(16).reshape(2, 8) * 7 % 256, jnp.int32)
  logits, _ = jitted(model)({"params": params}, tokens)
  assert len(_tree(params)) == 19
  np.testing.assert_allclose(float(jnp.abs(logits).sum()), 391.3132019042969, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(logits[1, 3, :4]), [0.0826855, 0.0589400, -0.1216348, -0.0128386], atol=1e-5)


def test_speedrun_options_add_no_params():
  """QK-norm, ReLU^2 and zero-initialised projections change no param's name or shape: checkpoints load across."""
  assert _tree(build(GPT)[1]) == _tree(build(SPEEDRUN)[1])


def _layernorm(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_zero_init_out_makes_every_block_the_identity_at_init():
  """With zero output projections the residual stream is the embeddings: logits = LN(tok + pos) @ E^T (NumPy)."""
  model, params = build({"model.zero_init_out": True})
  for name, layer in params.items():
    if name.startswith("layer_"):
      assert not np.any(np.asarray(layer["attn"]["o"])) and not np.any(np.asarray(layer["mlp"]["down"]["kernel"]))
      assert np.any(np.asarray(layer["attn"]["q"])) and np.any(np.asarray(layer["mlp"]["up"]["kernel"]))
  tokens = np.random.default_rng(0).integers(0, 256, size=(2, 8))
  logits, _ = jitted(model)({"params": params}, jnp.asarray(tokens, jnp.int32))
  emb, pos = np.asarray(params["embed"]["embedding"]), np.asarray(params["pos_embed"])
  expected = _layernorm(emb[tokens] + pos[:8]) @ emb.T
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


def test_qk_norm_attention_sees_only_the_directions_of_queries_and_keys():
  """QK-norm: scaling the query and key kernels by 100 leaves the logits unchanged (each attention logit is
  q.k / sqrt(d) of unit-RMS q and k, so |logit| <= sqrt(head_dim) whatever the weights); without it they change."""
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(2, 8)), jnp.int32)

  def logits_change(overrides):
    model, params = build(overrides)
    big = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 100.0 if jax.tree_util.keystr(p).endswith(("['q']", "['k']")) else x, params)
    a, _ = jitted(model)({"params": params}, tokens)
    b, _ = jitted(model)({"params": big}, tokens)
    return float(jnp.abs(a - b).max())

  assert logits_change({"model.qk_norm": True}) < 1e-4
  assert logits_change({}) > 1e-2


def test_relu2_mlp_matches_numpy():
  cfg = model_lib.ModelConfig.from_config(tiny_config(**{"model.mlp": "relu2"}).model)
  mlp = model_lib.Mlp(cfg)
  x = np.random.default_rng(2).normal(size=(2, 5, cfg.d_model)).astype(np.float32)
  import flax.linen as nn
  params = nn.unbox(mlp.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"])
  up, down = np.asarray(params["up"]["kernel"]), np.asarray(params["down"]["kernel"])
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": params}, jnp.asarray(x))),
                             np.maximum(x @ up, 0.0) ** 2 @ down, atol=1e-5)
