"""nanoGPT's GPU Shakespeare run: 6 layers x 6 heads x 384, context 256, batch 64, 5000 steps, dropout 0.2.

nanoGPT reports val loss 1.4697. bf16 compute, float32 params.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(d_model=384, n_layers=6, n_heads=6, max_len=256, dropout=0.2, dtype="bfloat16")
  c.data.seq_len = 256
  c.train.update(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
  c.eval.every = 250
  c.checkpoint.every = 1000
  return c
