"""Task metrics: pass@k against direct counting and Monte Carlo; best-of-n; generation wiring."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import evaluate
from lm import model as model_lib
from lm import tokenizer as tokenizer_lib
from lm.tasks import Example, Task
from tests.conftest import tiny_config


def direct_pass_at_k(n, c, k):
  """Fraction of all k-subsets of n samples (the first c correct) that hold a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_combinatorial_count():
  for n in range(1, 8):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(direct_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_agrees_with_monte_carlo():
  rng = np.random.default_rng(0)
  for _ in range(10):
    n = int(rng.integers(2, 40))
    c, k = int(rng.integers(0, n + 1)), int(rng.integers(1, n + 1))
    trials = 20000
    hits = np.mean([(rng.permutation(n)[:k] < c).any() for _ in range(trials)])
    p = evaluate.pass_at_k(n, c, k)
    assert abs(hits - p) <= 4 * np.sqrt(max(p * (1 - p), 1e-4) / trials) + 1e-9, (n, c, k, hits, p)


def test_pass_at_k_rejects_impossible_counts():
  with pytest.raises(ValueError, match="pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n=4 c=5 k=1"):
    evaluate.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError, match="got n=4 c=1 k=5"):
    evaluate.pass_at_k(4, 1, 5)


class Echo(Task):
  """Correct iff the response equals the prompt's text after the colon."""
  name = "echo"

  def sample(self, rng):
    return Example("x", "x")

  def check(self, prompt, response):
    return float(response == prompt.split(":")[1])


def test_best_of_n_takes_the_scorers_choice():
  prompts = ["p:a", "p:b"]
  samples = [[{"text": "a", "s": 1.0}, {"text": "z", "s": 0.0}], [{"text": "z", "s": 0.0}, {"text": "b", "s": 2.0}]]
  assert evaluate.best_of_n(Echo(), prompts, samples, lambda p, s: s["s"]) == 1.0
  assert evaluate.best_of_n(Echo(), prompts, samples, lambda p, s: -s["s"]) == 0.0
  assert evaluate.best_of_n(Echo(), prompts, samples, lambda p, s: 0.0) == 0.5  # ties: the first sample
  oracle = lambda p, s: Echo().check(p, s["text"])  # best-of-n under the checker itself is pass@n
  assert evaluate.best_of_n(Echo(), prompts, samples, oracle) == 1.0


class Always(Task):
  name = "always"

  def __init__(self, value):
    self.value = value

  def check(self, prompt, response):
    return self.value


def test_task_metrics_with_a_real_sampler():
  cfg = tiny_config()
  model = model_lib.build(cfg.model)
  import flax.linen as nn
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  tok = tokenizer_lib.get()
  exs = [Example(f"{i}+1=", str(i + 1)) for i in range(5)]
  for value in (0.0, 1.0):
    m = evaluate.task_metrics(model, params, tok, Always(value), exs, jax.random.PRNGKey(0), max_new_tokens=4,
                              ks=(1, 2), n=3, pass_prompts=2, batch_size=4)
    assert m["exact_match"] == value and m["pass@1"] == value and m["pass@2"] == value
    assert m["best_of_3"] == value and 0.0 <= m["truncated_responses"] <= 1.0
  # Greedy responses are what the sampler decodes, one list per prompt, whatever the chunking.
  a = evaluate.generate_responses(model, params, tok, [e.prompt for e in exs], jax.random.PRNGKey(1),
                                  max_new_tokens=4, batch_size=2)
  b = evaluate.generate_responses(model, params, tok, [e.prompt for e in exs], jax.random.PRNGKey(2),
                                  max_new_tokens=4, batch_size=8)
  assert [x[0]["text"] for x in a] == [x[0]["text"] for x in b] and len(a) == 5


def test_bits_per_byte_divides_by_bytes_not_tokens():
  """Specials carry 0 bytes and some tokens several: bits/byte = sum NLL / ln 2 / sum of the targets' bytes."""
  from lm.setup import Setup

  class MultiByte(type(tokenizer_lib.get("byte"))):
    def bytes_per_token(self):
      b = super().bytes_per_token().copy()
      b[10:20] = 3  # ten "tokens" of three bytes each
      return b

  setup = Setup(tiny_config())
  params = setup.init_params(jax.random.PRNGKey(0))
  tok = MultiByte()
  rng = np.random.default_rng(3)
  targets = rng.integers(0, 264, size=(8, 32)).astype(np.int32)
  targets[:, :4] = tok.eos_id  # specials: 0 bytes each
  targets[:, 4:8] = 12  # 3 bytes each
  batch = {"inputs": rng.integers(0, 256, size=(8, 32)).astype(np.int32), "targets": targets,
           "weights": (rng.random((8, 32)) > 0.2).astype(np.float32),
           "positions": np.broadcast_to(np.arange(32, dtype=np.int32), (8, 32)).copy(),
           "segment_ids": np.ones((8, 32), np.int32)}
  with setup.use():
    got = evaluate.bits_per_byte(setup.model, params, [batch], tok, setup.mesh)
    logits, _ = setup.model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  w = batch["weights"]
  n_bytes = (tok.bytes_per_token()[targets] * w).sum()
  assert n_bytes != w.sum()  # the case where tokens and bytes differ
  np.testing.assert_allclose(got["bits_per_byte"], (nll * w).sum() / np.log(2) / n_bytes, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], (nll * w).sum() / w.sum(), rtol=1e-5)
  assert got["eval_tokens"] == int(w.sum())
  one = np.zeros_like(w)
  one[0, 20] = 1.0  # a single one-byte target: the sums are divided by 1, not floored higher
  assert tok.bytes_per_token()[targets[0, 20]] == 1
  with setup.use():
    got = evaluate.bits_per_byte(setup.model, params, [{**batch, "weights": one}], tok, setup.mesh)
  np.testing.assert_allclose([got["loss"], got["bits_per_byte"]], [nll[0, 20], nll[0, 20] / np.log(2)], rtol=1e-5)
