"""The simulated annotator's hidden utility (lm/simulated_annotator.py) as a reward. With weight 0 it is logged
(`reward_simulated`) but not optimised: "reward_model:1.0,simulated:0" puts the true utility beside the learned
proxy at every rollout. reward_args.style_weight must be the annotator's (objective.style_weight of the pairs)."""
import numpy as np

from lm import simulated_annotator


def build(config, tokenizer, task):
  del tokenizer
  annotator = simulated_annotator.Annotator(task, style_weight=float(config.objective.reward_args.get(
      "style_weight", simulated_annotator.Annotator.style_weight)))
  return lambda prompts, responses: np.asarray([annotator.utility(p, r) for p, r in zip(prompts, responses)],
                                               np.float32)
