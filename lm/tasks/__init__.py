"""Verifiable tasks, registered by file name: lm/tasks/addition.py is task "addition".

A task module defines `make(**options) -> Task`. A Task generates examples deterministically from a seed,
with train and test disjoint by construction, and scores any response (the same checker serves as an SFT
metric and as a policy-gradient reward). Adding a task is adding a file.
"""
import dataclasses
import hashlib

from lm.errors import UserError
from lm.registry import Registry

REGISTRY = Registry("lm.tasks", "task")


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  answer: str


class Task:
  """Subclasses implement `sample(rng) -> Example` (a random problem) and `check(prompt, response) -> float`."""
  name = "task"

  def sample(self, rng) -> Example:
    raise NotImplementedError

  def check(self, prompt: str, response: str) -> float:
    raise NotImplementedError

  def split_of(self, ex: Example) -> str:
    """Deterministic split from the problem itself: about 10% of all problems are test, never trained on."""
    h = int(hashlib.sha256(f"{self.name}:{ex.prompt}".encode()).hexdigest()[:8], 16)
    return "test" if h % 10 == 0 else "train"

  def examples(self, split: str, n: int, seed: int = 0) -> list:
    """n examples of `split` ("train" or "test"), a pure function of (options, split, n, seed)."""
    import numpy as np
    if split not in ("train", "test"):
      raise UserError(f"task split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    out, tries = [], 0
    while len(out) < n:
      ex = self.sample(rng)
      tries += 1
      if self.split_of(ex) == split:
        out.append(ex)
      if tries > 1000 * (n + 10):
        raise UserError(f"task {self.name}: could not draw {n} {split} examples; the problem space is too small")
    return out


def names() -> list:
  return REGISTRY.names()


def get(name: str, **options) -> Task:
  module = REGISTRY.get(name)
  try:
    return module.make(**options)
  except TypeError as e:  # an option the task does not take
    raise UserError(f"task {name!r}: {e}; its options: lm/tasks/{name}.py make()") from None
