"""The nanoGPT CPU Shakespeare model (configs/pretrain_shakespeare.py) trained 3x longer, for compression.

Continues from runs/shakespeare (`make train`): 4000 more steps (3.1M tokens) at a lower learning rate with
dropout 0.1, since the 2000-step model is still improving (train loss 1.72, validation 1.87) and a byte the
model predicts better is a byte coded smaller. Same architecture, so every lm.compress setting carries over.

  python launch.py --config=configs/compress_shakespeare.py --workdir=runs/shakespeare_long
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.dropout = 0.1
  c.train.update(steps=4000, lr=5e-4, min_lr=5e-5, warmup_steps=100)
  c.eval.update(every=1000, sample_tokens=0)
  c.checkpoint.update(every=1000, init_from="runs/shakespeare")
  return c
