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
