"""The reward registry: built-in rewards by file name, weighted sums, and errors for bad specs."""
import numpy as np
import pytest

from configs import pg_addition
from lm import rewards
from lm import tasks
from lm import tokenizer as tokenizer_lib
from lm.errors import UserError
from tests.conftest import tiny_config


def score_fn(spec, **reward_args):
  c = tiny_config()
  c.objective = pg_addition.objective()
  c.objective.rewards = spec
  c.objective.reward_args.update(reward_args)
  return rewards.build(c, tokenizer_lib.get("byte"), tasks.get("addition", digits=2))


def test_registry_lists_the_builtin_rewards():
  assert {"task", "format", "length", "digits"} <= set(rewards.names())


def test_weighted_sum_of_task_format_and_length():
  fn = score_fn("task:1.0,format:0.5,length:0.1", format_pattern=r"[0-9]+", length_target=2)
  total, parts = fn(["12+30=", "12+30=", "1+1="], ["42", "42!!", "3"])
  np.testing.assert_allclose(parts["task"], [1, 0, 0])
  np.testing.assert_allclose(parts["format"], [1, 0, 1])
  np.testing.assert_allclose(parts["length"], [0, -2, 0])
  np.testing.assert_allclose(total, [1.5, -0.2, 0.5], rtol=1e-6)
  assert total.dtype == np.float32


def test_bad_reward_specs_are_user_errors():
  with pytest.raises(UserError, match="unknown"):
    score_fn("nope")
  with pytest.raises(UserError, match="weight"):
    score_fn("task:x")
  with pytest.raises(UserError, match="empty"):
    score_fn(" , ")
  assert rewards.parse("task, format:0.2") == [("task", 1.0), ("format", 0.2)]


def test_digits_gives_partial_credit_per_position():
  c = tiny_config()
  c.objective = pg_addition.objective()
  c.objective.rewards = "digits"
  fn = rewards.build(c, tokenizer_lib.get("byte"), tasks.get("addition", digits=3, pad=True, width=4))
  total, _ = fn(["0023+0456="] * 5 + ["junk"], ["00479", "00478", "0479", "004790", "", "1"])
  np.testing.assert_allclose(total, [1.0, 0.8, 0.2, 5 / 6, 0.0, 0.0], rtol=1e-6)  # "0479": only the first 0 lines up
