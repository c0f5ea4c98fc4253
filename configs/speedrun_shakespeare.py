"""nanoGPT's CPU Shakespeare model, trained for time to validation loss 1.88 (benchmarks/time_to_loss.py).

Same size as configs/pretrain_shakespeare.py (4 layers x 4 heads x 128, context 64, tied embeddings) with what
the modded-nanogpt speedruns found and what measured better here (experiments/SPEED_NOTES.md, one run each,
loss at step 192 of this schedule): Muon for the blocks' matrices (without it, AdamW at 3e-3: 2.047 instead of
1.843), rotary positions (learned: 1.88 needed 1.7x the tokens), QK-norm (without: 1.903), zero-initialised
output projections (without: 1.868) and ReLU^2 (GELU: 1.850, the same within noise; ReLU^2 is the cheaper op).
An untied head did not help (1.851). 24 rows x 64 characters x 200 steps: 307,200 tokens, a fifth of nanoGPT's
2000 x 12 x 64; the run ends near 1.84.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(position="rope", qk_norm=True, mlp="relu2", zero_init_out=True)
  c.train.update(optimizer="muon", batch_size=24, steps=200, warmup_steps=20, lr=6e-3, min_lr=0.0, muon_lr=0.03,
                 weight_decay=0.0)
  c.eval.every = 50  # every 76,800 training tokens, the cadence benchmarks/time_to_loss.py evaluates both sides at
  return c
