"""Tiny policy-gradient configs and objectives shared by the tests under tests/rl/."""
from configs import pg_addition
from lm import train
from lm.objectives import policy_gradient as pg
from lm.setup import Setup
from tests.conftest import tiny_config


def pg_config(algorithm="grpo", **objective):
  c = tiny_config()
  c.objective = pg_addition.objective(algorithm)
  c.train.update(batch_size=8, steps=2, lr=1e-3)
  c.objective.update(group_size=4, eval_examples=4, pass_n=0, max_new_tokens=6)
  if algorithm == "ppo":
    c.objective.update(epochs=2, minibatches=2)
  c.objective.update(objective)
  return c


def build(algorithm="grpo", **objective):
  """(setup, objective, starting params) of a tiny policy-gradient run."""
  setup = Setup(pg_config(algorithm, **objective))
  with setup.use():
    obj = pg.build(setup)
    params = train.initial_params(setup, obj)
  return setup, obj, params
