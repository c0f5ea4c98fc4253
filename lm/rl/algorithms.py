"""Policy-gradient algorithms, registered by name: which advantage estimator each uses, whether its surrogate is
clipped, and whether it learns a value function. A new algorithm is one more `register(...)` line (and an
estimator in advantages.py if it needs a new one)."""
import dataclasses

from lm.rl import advantages

ALGORITHMS = {}


@dataclasses.dataclass(frozen=True)
class Algorithm:
  name: str
  advantage: str  # an estimator in lm/rl/advantages.py; "baseline": the objective.baseline option picks it
  clipped: bool  # PPO-style clipped ratio surrogate (else the plain importance-weighted one)
  critic: bool = False  # learns values and uses per-token (GAE) advantages


def register(algorithm: Algorithm) -> Algorithm:
  ALGORITHMS[algorithm.name] = algorithm
  return algorithm


register(Algorithm("reinforce", advantage="baseline", clipped=False))  # batch-mean or leave-one-out baseline
register(Algorithm("rloo", advantage="leave_one_out", clipped=False))  # Ahmadian et al. 2024
register(Algorithm("grpo", advantage="group_normalised", clipped=True))  # Shao et al. 2024
register(Algorithm("ppo", advantage="gae", clipped=True, critic=True))  # Schulman et al. 2017


def get(name: str) -> Algorithm:
  return ALGORITHMS[name]


def sequence_advantages(scores, o):
  """[prompts, G] sequence rewards -> [prompts, G] advantages for the outcome-reward algorithms.

  `o` carries algorithm, baseline (reinforce: batch_mean | leave_one_out) and adv_scale (grpo)."""
  algorithm = get(o.algorithm)
  if algorithm.critic:
    raise ValueError(f"{o.algorithm} uses per-token advantages (GAE), not sequence ones")
  name = o.baseline if algorithm.advantage == "baseline" else algorithm.advantage
  if name == "group_normalised":
    return advantages.group_normalised(scores, o.adv_scale)
  return advantages.get(name)(scores)
