"""Rewards, registered by file name: "task" in `config.objective.rewards` loads lm/rewards/task.py.

A reward module defines `build(config, tokenizer, task) -> fn`, with fn(prompts: list[str], responses:
list[str]) -> float array [B]: batched, a function of (prompt, response) only. `config.objective.rewards` is a
weighted sum, e.g. "task:1.0,format:0.1"; options a reward reads live in `config.objective.reward_args`.
Adding a reward is adding a file (a learned reward model is one whose `build` loads its params).
"""
import numpy as np

from lm.errors import UserError
from lm.registry import Registry

REGISTRY = Registry("lm.rewards", "reward")


def names() -> list:
  return REGISTRY.names()


def parse(spec: str) -> list:
  """"task:1.0,format:0.1" -> [("task", 1.0), ("format", 0.1)]; a bare name weighs 1."""
  out = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, weight = part.partition(":")
    try:
      out.append((name.strip(), float(weight) if weight else 1.0))
    except ValueError:
      raise UserError(f"objective.rewards: bad weight in {part!r}; write name:weight, e.g. task:1.0") from None
  if not out:
    raise UserError("objective.rewards is empty; give at least one reward, e.g. 'task'")
  return out


def get(name: str):
  return REGISTRY.get(name)


def build(config, tokenizer, task):
  """fn(prompts, responses) -> (total [B], {name: [B]}) for the weighted rewards in config.objective.rewards."""
  parts = [(name, weight, get(name).build(config, tokenizer, task)) for name, weight in parse(config.objective.rewards)]

  def score(prompts, responses):
    each = {name: np.asarray(fn(prompts, responses), np.float32) for name, _, fn in parts}
    total = sum(weight * each[name] for name, weight, _ in parts)
    return total.astype(np.float32), each

  return score
