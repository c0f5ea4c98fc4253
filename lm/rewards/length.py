"""Length shaping: minus the characters beyond reward_args.length_target (0: every character), so a negative
weight is never needed; scale it with the weight in objective.rewards, e.g. "task:1,length:0.01"."""
import numpy as np


def build(config, tokenizer, task):
  target = int(config.objective.reward_args.get("length_target", 0))
  return lambda prompts, responses: np.asarray([-max(0, len(r) - target) for r in responses], np.float32)
