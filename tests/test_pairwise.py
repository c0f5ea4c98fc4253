"""Pairwise losses against NumPy and finite differences; the pair scorers against an unpadded forward pass; DPO's
loss at the start of training (policy = reference) is log 2."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import pairwise

RNG = np.random.default_rng(0)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def finite_difference(f, args, i, eps=1e-6):
  """Central differences of scalar f with respect to args[i] (float64 numpy arrays)."""
  grad = np.zeros_like(args[i])
  for j in np.ndindex(args[i].shape):
    hi, lo = [a.copy() for a in args], [a.copy() for a in args]
    hi[i][j] += eps
    lo[i][j] -= eps
    grad[j] = (f(*hi) - f(*lo)) / (2 * eps)
  return grad


def check_grads(loss, reference, args):
  """jax.grad of sum(loss) equals central differences of NumPy's sum(reference), for every argument."""
  with jax.enable_x64(True):
    grads = jax.grad(lambda *a: jnp.sum(loss(*a)), argnums=tuple(range(len(args))))(*map(jnp.asarray, args))
  for i, g in enumerate(grads):
    np.testing.assert_allclose(np.asarray(g), finite_difference(lambda *a: reference(*a).sum(), args, i),
                               rtol=1e-6, atol=1e-8)


def test_bradley_terry_equals_numpy_and_its_gradient_finite_differences():
  chosen, rejected, margin = (RNG.normal(size=7) * 3 for _ in range(3))
  reference = lambda c, r, m: -np_log_sigmoid(c - r - m)
  np.testing.assert_allclose(np.asarray(pairwise.bradley_terry(chosen, rejected, margin)),
                             reference(chosen, rejected, margin), rtol=1e-6)
  check_grads(pairwise.bradley_terry, reference, [chosen, rejected, margin])
  # the probability the Bradley-Terry model gives the observed choice: loss = -log P(chosen wins)
  assert float(pairwise.bradley_terry(2.0, 0.0)) == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))), rel=1e-6)


@pytest.mark.parametrize("loss", pairwise.DPO_LOSSES)
def test_dpo_equals_numpy_and_its_gradient_finite_differences(loss):
  beta = 0.3
  args = [RNG.normal(size=6) * 4 - 20 for _ in range(4)]  # log-prob sums of a few tokens

  def reference(pc, pr, rc, rr):
    h = (pc - rc) - (pr - rr)
    return -np_log_sigmoid(beta * h) if loss == "sigmoid" else (h - 1 / (2 * beta)) ** 2

  per_pair, chosen, rejected = pairwise.dpo(*args, beta, loss)
  np.testing.assert_allclose(np.asarray(per_pair), reference(*args), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(chosen), beta * (args[0] - args[2]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(rejected), beta * (args[1] - args[3]), rtol=1e-5)
  check_grads(lambda *a: pairwise.dpo(*a, beta, loss)[0], reference, args)


def test_dpo_defaults_to_the_sigmoid_loss_and_names_an_unknown_one():
  args = [RNG.normal(size=3) for _ in range(4)]
  np.testing.assert_array_equal(np.asarray(pairwise.dpo(*args, 0.5)[0]), np.asarray(pairwise.dpo(*args, 0.5, "sigmoid")[0]))
  with pytest.raises(ValueError, match="unknown DPO loss 'hinge'; use one of"):
    pairwise.dpo(*args, 0.5, "hinge")


def test_mean_is_over_the_weighted_pairs_only():
  x = jnp.array([3.0, 5.0, 100.0])
  assert float(pairwise.mean(x, jnp.array([1.0, 0.0, 0.0]))) == 3.0  # one real pair: its own value
  assert float(pairwise.mean(x, jnp.array([1.0, 1.0, 0.0]))) == 4.0
  assert float(pairwise.mean(x, jnp.zeros(3))) == 0.0  # an all-padding batch: 0, not nan


def test_utility_accuracy_equals_a_loop_over_pairs_whose_utilities_differ():
  scores, utility = RNG.normal(size=(50, 2)), RNG.integers(0, 3, size=(50, 2)).astype(float)
  scores[:5, 1] = scores[:5, 0]  # tied scores never agree with a strict utility order
  want = [np.sign(s[0] - s[1]) == np.sign(u[0] - u[1]) for s, u in zip(scores, utility) if u[0] != u[1]]
  assert pairwise.utility_accuracy(scores, utility) == pytest.approx(np.mean(want))
  assert math.isnan(pairwise.utility_accuracy(scores, np.ones((50, 2))))


def test_pair_metrics_count_ties_half():
  # a win, a tie, two losses and a padding pair: as many ties as losses would hide a tie and a loss swapping values
  chosen, rejected = jnp.array([2.0, 1.0, 0.0, 0.0, 5.0]), jnp.array([1.0, 1.0, 3.0, 4.0, 0.0])
  m = pairwise.pair_metrics(chosen, rejected, jnp.array([1.0, 1.0, 1.0, 1.0, 0.0]), "eval_")
  assert float(m["eval_accuracy"]) == pytest.approx(1.5 / 4)
  assert float(m["eval_margin"]) == pytest.approx((1 + 0 - 3 - 4) / 4)
  assert (float(m["eval_chosen"]), float(m["eval_rejected"])) == pytest.approx((3 / 4, 9 / 4))
  assert float(pairwise.pair_metrics(chosen, rejected)["accuracy"]) == pytest.approx(2.5 / 5)  # no weight: all pairs


@pytest.fixture(scope="module")
def tiny():
  """A tiny model with a reward head, and pair rows of three records padded to 20 tokens."""
  from lm import heads
  from lm.data import preferences
  from lm.setup import Setup
  from tests.conftest import tiny_config
  setup = Setup(tiny_config())
  params = setup.init_params(jax.random.PRNGKey(0))
  params = {**params, "reward_head": heads.init(jax.random.PRNGKey(1), params, setup.model.cfg.d_model)}
  records = [{"prompt": "1+2=", "chosen": "3", "rejected": "12"}, {"prompt": "99+1=", "chosen": "100",
                                                                   "rejected": "1000"}]
  rows, _, _ = preferences.rows(setup.tokenizer, records, 20)
  return setup, params, records, rows


def unpadded(setup, params, prompt, answer):
  """(log-probs [n-1, V], final hidden states [n, D], number of prompt tokens) of one unpadded sequence."""
  from lm import chat
  p, a = chat.prompt_ids(setup.tokenizer, prompt), chat.answer_ids(setup.tokenizer, answer)
  ids = np.concatenate([p, a])[None]
  logits, _, hidden = jax.jit(setup.model.apply, static_argnames="return_hidden")(
      {"params": params}, jnp.asarray(ids), return_hidden=True)
  logits = np.asarray(logits[0], np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return logp, np.asarray(hidden[0]), ids[0], len(p)


def test_answer_logprobs_and_rewards_equal_an_unpadded_forward_pass(tiny):
  setup, params, records, rows = tiny
  logp = np.asarray(pairwise.jit_answer_logprobs(setup.model, params, rows))
  r = np.asarray(pairwise.jit_rewards(setup.model, params, rows))
  head = params["reward_head"]
  for i, rec in enumerate(records):
    for j, side in enumerate(("chosen", "rejected")):
      lp, hidden, ids, n_prompt = unpadded(setup, params, rec["prompt"], rec[side])
      want = sum(lp[t - 1, ids[t]] for t in range(n_prompt, len(ids)))  # answer tokens and EOS
      assert logp[i, j] == pytest.approx(want, rel=1e-5, abs=1e-4)
      assert r[i, j] == pytest.approx(float(hidden[-1] @ np.asarray(head["kernel"]) + float(head["bias"])),
                                      rel=1e-4, abs=1e-5)


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference(tmp_path):
  from lm import objectives
  from lm import sharding
  from lm.data import preferences
  from lm.setup import Setup
  from tests.conftest import tiny_config
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(preferences.to_line(f"{i}+{i}=", str(2 * i), str(2 * i + 1)) for i in range(20)) + "\n")
  config = tiny_config(**{"data.tfds_dir": str(tmp_path / "tfds"), "train.batch_size": 8})
  config.objective = objectives.config("dpo", train_files=str(path), max_tokens=16, beta=0.5)
  setup = Setup(config)
  with setup.use():
    objective = objectives.build(setup)
    params = setup.init_params(jax.random.PRNGKey(0))
    objective.on_start(params)
    batch = sharding.global_batch(objective.batches(0, params).rows, setup.mesh)
    loss, metrics = jax.jit(objective.loss_fn)(params, batch, None)
    grads = jax.jit(jax.grad(lambda p: objective.loss_fn(p, batch, None)[0]))(params)
  assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
  assert float(metrics["implicit_reward_margin"]) == pytest.approx(0.0, abs=1e-6)
  assert float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))) > 0  # and it still has a gradient
