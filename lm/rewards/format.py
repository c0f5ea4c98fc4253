"""Format shaping: 1.0 when the whole response matches reward_args.format_pattern (a regex), else 0.0."""
import re

import numpy as np


def build(config, tokenizer, task):
  pattern = re.compile(config.objective.reward_args.get("format_pattern", r"\s*-?[0-9]+\s*"))
  return lambda prompts, responses: np.asarray([bool(pattern.fullmatch(r)) for r in responses], np.float32)
