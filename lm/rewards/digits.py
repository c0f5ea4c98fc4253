"""Partial credit per character: the fraction of positions where the response matches the task's reference
answer (`task.reference(prompt)`), over the longer of the two, so a wrong length costs. 1.0 only for an exact
answer. Shaping for fixed-width answers (addition with pad=True): a model that gets three of five digits right
earns 0.6 instead of 0, so a group is rarely all-equal. Held-out accuracy stays the task's strict checker."""
import numpy as np

from lm.errors import UserError


def score(reference: str, response: str) -> float:
  response = response.strip()
  n = max(len(reference), len(response))
  return sum(a == b for a, b in zip(reference, response)) / n if n else 1.0


def build(config, tokenizer, task):
  if not hasattr(task, "reference"):
    raise UserError(f"reward 'digits' needs a task with reference(prompt); {task.name!r} has none")

  def fn(prompts, responses):
    out = []
    for p, r in zip(prompts, responses):
      ref = task.reference(p)
      out.append(0.0 if ref is None else score(ref, r))
    return np.asarray(out, np.float32)

  return fn
