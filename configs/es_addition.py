"""Evolution strategies on 4-digit addition from the SFT run (configs/sft_addition.py), the task, reward, prompts
and evaluation of the GRPO config (configs/pg_addition.py), so the two compare at equal numbers of answers.

python launch.py --config=configs/es_addition.py --workdir=runs/es_addition
One step: `population` members x `prompts` greedy answers; theta += lr * sum_i f_i eps_i / (N sigma) with plain
SGD. Qiu et al. (2025) use population 30, sigma 1e-3 and a step of 5e-4 on the un-normalised sum (their alpha
absorbs 1/sigma): here lr = 5e-4 * sigma.
Every objective.* option: lm/objectives/es.py (Options); ES itself: lm/es.py.
"""
from configs import base
from lm import objectives


def get_config():
  c = base.get_config()
  c.objective = objectives.config("es", task="addition", task_options=dict(digits=4, pad=True, width=4,
                                                                            reverse=False),
                                  rewards="task:1.0", reward_args=dict(format_pattern=r"[0-9]+", length_target=5),
                                  population=32, sigma=1e-3, prompts=16)
  c.checkpoint.init_from = "runs/sft_addition_mix"
  c.train.update(steps=300, batch_size=32, optimizer="sgd", lr=5e-7, min_lr=5e-7, warmup_steps=0,
                 schedule="constant", weight_decay=0.0, grad_clip=0.0, log_every=10)
  c.eval.update(every=100, sample_tokens=0)
  c.checkpoint.update(every=50, keep=2)
  return c
