"""Time to validation loss 1.88 on Tiny Shakespeare (benchmarks/time_to_loss.py): nanoGPT's CPU model with Muon.

Draft; tuned with benchmarks/time_to_loss.py --only=ours (experiments/SPEED_NOTES.md).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(qk_norm=True, mlp="relu2", zero_init_out=True, tie_embeddings=False)
  c.train.update(optimizer="muon", batch_size=48, steps=200, lr=3e-3, min_lr=0.0, warmup_steps=20, muon_lr=0.03,
                 weight_decay=0.0)
  return c
