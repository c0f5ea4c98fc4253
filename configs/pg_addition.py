"""GRPO on 4-digit addition, starting from the SFT run (runs/sft_addition_mix, configs/sft_addition.py).

python launch.py --config=configs/pg_addition.py --workdir=runs/pg_addition
One train step is one rollout of train.batch_size rows (batch_size / group_size prompts x group_size samples).
Other algorithms: configs/pg_addition_{reinforce,rloo,ppo}.py (same prompts, rollouts and budget).
Every objective.* option, its default and meaning: lm/objectives/policy_gradient.py (Options).
"""
from configs import base
from lm import objectives


def objective(algorithm: str = "grpo"):
  return objectives.config(
      "policy_gradient", algorithm=algorithm, task="addition",
      task_options=dict(digits=4, pad=True, width=4, reverse=False),  # the SFT run's answer layout
      rewards="task:1.0", reward_args=dict(format_pattern=r"[0-9]+", length_target=5),
      group_size=8, max_new_tokens=8,  # prompt (13 tokens for 4+4 digits) + answer must fit model.max_len
      kl_coef=0.02, kl_estimator="k3", kl_in="loss")


def get_config(algorithm: str = "grpo"):
  c = base.get_config()
  c.objective = objective(algorithm)
  c.checkpoint.init_from = "runs/sft_addition_mix"
  c.train.update(steps=900, batch_size=64, lr=1e-4, min_lr=1e-4, warmup_steps=10, schedule="constant",
                 weight_decay=0.0, grad_clip=1.0, log_every=10)
  c.eval.update(every=100, sample_tokens=0)
  c.checkpoint.update(every=100, keep=2)
  return c
