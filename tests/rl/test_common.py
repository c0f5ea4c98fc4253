"""lm/rl/common.py: teacher-forced log-probs read slot t's distribution at the position before it, at the
sampling temperature (a direct reference: the model's full-sequence logits)."""
import jax
import jax.numpy as jnp
import numpy as np

from lm import model as model_lib
from lm.rl import common
from tests.conftest import tiny_config


def test_forward_logprobs_equal_the_models_shifted_log_softmax():
  cfg = tiny_config()
  model = model_lib.build(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 12)), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
  seg = jnp.ones((2, 12), jnp.int32)
  logits, _ = model.apply({"params": params}, tokens, pos, seg)
  for temperature in (1.0, 0.7):
    want = jax.nn.log_softmax(np.asarray(logits, np.float64)[:, 7:11] / temperature)
    want = np.take_along_axis(np.asarray(want), np.asarray(tokens)[:, 8:12, None], -1)[..., 0]
    got = common.token_logprobs(model, params, tokens, pos, seg, n=4, temperature=temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shared_prompt_forward_equals_the_full_forward_with_gradients_and_critic_values():
  """group=G: each prompt runs once for its G rows (rows of a group share the prompt, answers differ and end at
  different EOS); log-probs, hidden states, critic values and the gradient of a loss on them match the full pass.
  Rope and a sliding window reach across the prompt/answer boundary."""
  cfg = tiny_config(**{"model.position": "rope", "model.norm": "rmsnorm", "model.sliding_window": 6})
  model = model_lib.build(cfg.model)
  params = jax.jit(lambda r: model.init(r, jnp.zeros((1, 8), jnp.int32))["params"])(jax.random.PRNGKey(0))
  rng = np.random.default_rng(1)
  g, prompts, p, n = 3, 2, 7, 5
  prompt = np.repeat(rng.integers(1, 256, size=(prompts, p)), g, axis=0)
  prompt[:g, :2] = 0  # the first prompt is left-padded
  seg_p = np.repeat(np.r_[[[0, 0] + [1] * (p - 2)], [[1] * p]], g, axis=0)
  pos_p = np.maximum(np.cumsum(seg_p, 1) - 1, 0)
  lengths = rng.integers(1, n + 1, size=prompts * g)
  seg_r = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
  tokens = jnp.asarray(np.concatenate([prompt, rng.integers(1, 256, size=(prompts * g, n))], 1), jnp.int32)
  pos = jnp.asarray(np.concatenate([pos_p, pos_p[:, -1:] + 1 + np.arange(n)], 1), jnp.int32)
  seg = jnp.asarray(np.concatenate([seg_p, seg_r], 1), jnp.int32)
  head = {"kernel": jnp.ones((32,)) * 0.1, "bias": jnp.zeros(())}

  def outputs(params, group):
    logp_all, logp, hidden = common.forward(model, params, tokens, pos, seg, n, 0.7, group)
    v = common.values(model, {"critic": {"trunk": params, "head": head}}, tokens, pos, seg, None, value="critic",
                      n=n, group=group)
    return logp, hidden, v, (logp_all[..., 0] * seg_r).sum() + (logp * seg_r).sum() + (v * seg_r).sum()

  full, shared = (jax.jit(outputs, static_argnums=1)(params, group) for group in (1, g))
  valid = seg_r.astype(bool)  # slots after EOS attend to nothing: what they hold is unused either way
  for a, b in zip(full[:3], shared[:3]):
    np.testing.assert_allclose(np.asarray(b)[valid], np.asarray(a)[valid], rtol=1e-5, atol=1e-5)
  grads = [jax.jit(jax.grad(lambda q, group=group: outputs(q, group)[3]))(params) for group in (1, g)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
