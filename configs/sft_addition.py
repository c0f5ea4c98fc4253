"""Fine-tune the Tiny Shakespeare model (configs/pretrain_shakespeare.py) on 3-digit addition:

python launch.py --config=configs/sft_addition.py --workdir=runs/sft_addition

The model shape stays the pretraining run's (4 layers x 4 heads x 128, max_len 64, learned positions) so its
checkpoint loads; held-out Shakespeare bits per byte is still reported at every eval, to show forgetting.
"""
from configs import sft_jsonl


def get_config():
  c = sft_jsonl.get_config()
  c.objective.task = "addition"
  c.objective.task_options.digits = 3
  # Fixed width ("023+456=" -> "0479"): the unpadded format was at 2% exact match after 1000 steps (see
  # experiments/SFT_NOTES.md); padding lets the learned positions line the digits up.
  c.objective.task_options.pad = True
  c.objective.train_examples = 100000
  c.checkpoint.init_from = "runs/shakespeare"
  c.train.update(steps=2000, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=100, log_every=100)
  c.eval.every = 500
  c.checkpoint.every = 500
  return c
