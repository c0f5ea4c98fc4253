"""Fine-tune the Tiny Shakespeare model (configs/pretrain_shakespeare.py) on 3-digit addition, written at the
4-digit width the policy-gradient configs use (configs/pg_addition.py): "0023+0456=" -> "00479".

python launch.py --config=configs/sft_addition.py --workdir=runs/sft_addition_mix
(runs/sft_addition_w4 is the same config before wide_frac, i.e. with wide_frac=0.0.)

The model shape stays the pretraining run's (4 layers x 4 heads x 128, max_len 64, learned positions) so its
checkpoint loads; held-out Shakespeare bits per byte is still reported at every eval, to show forgetting.
Prompt + answer is about 20 tokens, well inside max_len 64.
"""
from configs import sft_jsonl


def get_config():
  c = sft_jsonl.get_config()
  c.objective.task = "addition"
  c.objective.task_options.digits = 3
  # Fixed width ("023+456=" -> "0479"): the unpadded format was at 2% exact match after 1000 steps (see
  # experiments/SFT_NOTES.md); padding lets the learned positions line the digits up.
  c.objective.task_options.pad = True
  # Operands padded to 4 characters and answers to 5, the layout of the 4-digit problems in
  # configs/pg_addition.py, so the SFT model already writes 5-digit answers at the right positions there.
  c.objective.task_options.width = 4
  # 2% of problems use 4-digit operands, so the thousands digits are not new to the model when GRPO/RLOO train
  # on 4-digit problems (configs/pg_addition.py); without them pass@16 on 4-digit was 0 and RL had no signal.
  # Measured at 6000 steps, seeds 0/1/2: 4-digit greedy exact 83.8% / 18.6% / 33.8% with 2% (5%, seed 2: 79.4%).
  c.objective.task_options.wide_frac = 0.02
  c.objective.task_options.reverse = False  # True: answers least-significant digit first (lm/tasks/addition.py)
  c.objective.train_examples = 100000
  c.checkpoint.init_from = "runs/shakespeare"
  # 6000 steps, not 3000: at 3000 one seed in three was still on its plateau (train loss ~0.9, 9.8% greedy exact
  # on 3-digit for seed 2; seeds 0 and 1: 99.4%, 100%); at 6000 seeds 0, 1, 2 reach 100% (experiments/SFT_NOTES.md).
  c.train.update(steps=6000, batch_size=16, lr=1e-3, min_lr=1e-4, warmup_steps=100, log_every=100)
  c.eval.every = 1000
  c.checkpoint.every = 1000
  return c
