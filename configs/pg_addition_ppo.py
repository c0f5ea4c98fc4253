"""PPO on 4-digit addition from the SFT run (runs/sft_addition_mix): the GRPO config (configs/pg_addition.py) with algorithm=ppo."""
from configs import pg_addition


def get_config():
  c = pg_addition.get_config("ppo")
  o = c.objective
  o.loss_agg = "token_mean"
  o.kl_in, o.kl_estimator, o.kl_coef = "reward", "k1", 0.02  # per-token KL penalty in the reward, as in InstructGPT
  o.epochs, o.minibatches = 2, 2  # 4 updates per rollout
  return c
