"""lm/objectives/policy_gradient.py: its options are checked in one place, with reasons; the KL reference is the
starting policy."""
import logging

import jax
import numpy as np
import pytest

from lm.errors import UserError
from lm.objectives import policy_gradient as pg
from lm.setup import Setup
from tests.rl.pg_helpers import build, pg_config


def build_only(**objective):
  setup = Setup(pg_config(**objective))
  with setup.use():
    return pg.build(setup)


def test_k1_in_the_loss_is_refused_with_the_reason():
  with pytest.raises(UserError, match="k1.*zero in expectation"):
    build_only(kl_in="loss", kl_estimator="k1", kl_coef=0.1)
  build_only(kl_in="loss", kl_estimator="k1", kl_coef=0.0)  # no KL term at all: nothing to refuse


@pytest.mark.parametrize("estimator,warns", [("k1", False), ("k2", True), ("k3", True)])
def test_k2_or_k3_in_the_reward_warns_that_the_gradient_is_biased(estimator, warns, caplog):
  with caplog.at_level(logging.WARNING):
    build_only(kl_in="reward", kl_estimator=estimator, kl_coef=0.1)
  assert any("biases the gradient" in r.message for r in caplog.records) == warns


def test_options_are_checked_together_in_one_line():
  with pytest.raises(UserError) as e:
    build_only(group_size=3, algorithm="grpoo")
  msg = str(e.value)
  assert "\n" not in msg and "objective.algorithm='grpoo' must be one of" in msg
  with pytest.raises(UserError, match="multiple of objective.group_size=3"):
    build_only(group_size=3)
  with pytest.raises(UserError, match=r"share_prompts needs whole groups.*8 / \(objective.minibatches=4"):
    build_only(share_prompts=True, minibatches=4)  # 2 rows per update, groups of 4


def test_unknown_option_is_named_with_a_suggestion():
  c = pg_config()
  c.objective.kl_coeff = 0.1
  setup = Setup(c)
  with setup.use(), pytest.raises(UserError, match=r"objective.kl_coeff is not an option here \(did you mean "
                                                   r"objective.kl_coef\?\)"):
    pg.build(setup)


def test_reference_is_the_starting_policy_in_its_own_buffers():
  setup, obj, params = build("grpo")
  with setup.use():
    rollout = obj.batches
    for a, b in zip(jax.tree.leaves(rollout.reference), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
      assert a is not b and a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
