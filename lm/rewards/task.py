"""The task's own checker (lm/tasks): 1.0 for a correct answer, 0.0 otherwise (or the task's partial credit)."""
import numpy as np


def build(config, tokenizer, task):
  return lambda prompts, responses: np.asarray([task.check(p, r) for p, r in zip(prompts, responses)], np.float32)
