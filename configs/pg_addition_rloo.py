"""RLOO on 4-digit addition from the SFT run (runs/sft_addition_mix): the GRPO config (configs/pg_addition.py) with algorithm=rloo."""
from configs import pg_addition


def get_config():
  c = pg_addition.get_config("rloo")
  o = c.objective
  o.loss_agg = "seq_mean_token_sum"
  o.kl_in, o.kl_estimator, o.kl_coef = "reward", "k1", 0.02  # RLOO folds the KL into the sequence reward
  return c
