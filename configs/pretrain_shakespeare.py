"""nanoGPT's CPU Shakespeare run: GPT-2 style, 4 layers x 4 heads x 128, context 64, batch 12, 2000 steps.

nanoGPT: train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
  --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
  --lr_decay_iters=2000 --dropout=0.0  (reported val loss 1.88)
"""
from configs import base


def get_config():
  return base.get_config()  # the defaults are this run
