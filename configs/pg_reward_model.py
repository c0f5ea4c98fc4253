"""RLHF: GRPO on 4-digit addition against a learned reward (a reward-model run, configs/reward_model.py) instead
of the task's checker, from the SFT run the reward model's pairs were sampled from:

python launch.py --config=configs/pg_reward_model.py --workdir=runs/pg_reward_model \
  --config.objective.reward_args.reward_model=runs/reward_model

Every rollout also logs the simulated annotator's hidden utility (reward "simulated", weight 0: measured, not
optimised) beside the learned reward, and each eval the checker's exact match: where the learned reward keeps
rising and the true utility stops is over-optimisation of the proxy. configs/pg_addition.py for the rest.
"""
from configs import pg_addition
from configs import reward_model


def get_config():
  c = pg_addition.get_config()
  c.objective.rewards = "reward_model:1.0,simulated:0"
  c.objective.reward_args = dict(reward_model="runs/reward_model", style_weight=reward_model.pairs()["style_weight"])
  c.objective.pass_n = 0
  c.train.steps = 300
  c.eval.every = 50
  c.checkpoint.update(every=50, keep=2)
  return c
