"""lm/rl/algorithms.py: each registered algorithm's sequence advantages give the policy-gradient theorem's
gradient on a softmax bandit (in expectation, up to each baseline's known shrinkage)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.rl import algorithms
from lm.rl import losses


def test_registry():
  assert set(algorithms.ALGORITHMS) == {"reinforce", "rloo", "grpo", "ppo"}
  assert algorithms.get("ppo").critic and algorithms.get("grpo").clipped and not algorithms.get("rloo").clipped
  with pytest.raises(ValueError, match="per-token"):
    algorithms.sequence_advantages(jnp.zeros((2, 4)), types.SimpleNamespace(algorithm="ppo"))


@pytest.mark.parametrize("algorithm,option,shrink", [
    ("reinforce", {"baseline": "leave_one_out"}, 0.0),
    ("reinforce", {"baseline": "batch_mean"}, 1.0),  # the sample's own reward in its baseline: (1 - 1/n) bias
    ("rloo", {}, 0.0),
    ("grpo", {"adv_scale": "none"}, 1.0),  # Dr. GRPO's group-centred reward: (1 - 1/G) bias
])
def test_estimator_expected_gradient_equals_exact_gradient(algorithm, option, shrink):
  k, prompts, g, batches = 5, 2, 4, 4000
  theta = jnp.asarray(np.random.default_rng(3).normal(size=k), jnp.float32)
  arm_reward = jnp.asarray([1.0, 0.0, 0.5, 2.0, -1.0])
  o = types.SimpleNamespace(**{"algorithm": algorithm, "baseline": "leave_one_out", "adv_scale": "group_std", **option})

  def loss(th, key):
    a = jax.random.categorical(key, th, shape=(prompts, g))
    noise = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (prompts, g))
    adv = algorithms.sequence_advantages(arm_reward[a] + noise, o).reshape(-1, 1)
    logp = jax.nn.log_softmax(th)[a].reshape(-1, 1)
    per_tok, _, _ = losses.policy_surrogate(logp, jax.lax.stop_gradient(logp), adv)
    return losses.aggregate(per_tok, jnp.ones_like(logp), "seq_mean_token_sum", 1)

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, jax.random.split(jax.random.PRNGKey(4), batches))
  pi = jax.nn.softmax(theta)
  exact = pi * (arm_reward - jnp.sum(pi * arm_reward))  # d/dtheta of E_pi[r]
  n = prompts * g if o.algorithm == "reinforce" else g
  want = -(1.0 - shrink / n) * exact
  mean, se = grads.mean(0), grads.std(0) / np.sqrt(batches)
  assert np.all(np.abs(mean - want) < 4 * se + 1e-4), (mean, want, se)


