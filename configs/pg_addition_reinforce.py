"""REINFORCE on 4-digit addition from the SFT run (runs/sft_addition_mix): the GRPO config (configs/pg_addition.py) with algorithm=reinforce."""
from configs import pg_addition


def get_config():
  c = pg_addition.get_config("reinforce")
  o = c.objective
  o.baseline = "leave_one_out"
  o.loss_agg = "seq_mean_token_sum"  # the unbiased REINFORCE estimator
  o.kl_in, o.kl_estimator, o.kl_coef = "reward", "k1", 0.02
  return c
