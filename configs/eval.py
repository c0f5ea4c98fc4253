"""Evaluate a run's checkpoint: launch.py --config=configs/eval.py --config.checkpoint=RUN (lm/eval_checkpoint.py).

Without --config.task it scores the run's own task (objective.task of its config.json); --config.task_options
("digits=3,pad=true") changes that task's options, e.g. the 3-digit problems of a 4-digit RL run.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "eval"
  c.checkpoint = ""  # a run directory (its --workdir)
  c.task = ""  # "": the run's own objective.task
  c.task_options = ""  # "k=v,...": updates the run's task options (another task: its defaults)
  c.examples = 500  # held-out problems for greedy exact match
  c.max_new_tokens = 0  # 0: the run's objective.max_new_tokens (else 8)
  c.pass_n = 16  # samples per problem for pass@k and best-of-n (0: none)
  c.pass_k = (1, 16)
  c.pass_prompts = 100
  c.temperature = 1.0
  c.bits_per_byte = True  # also held-out bits per byte on the run's data
  c.seed = 0
  return c
