"""nanoGPT's CPU Shakespeare model, trained for time to validation loss 1.88 (benchmarks/time_to_loss.py).

Same size as configs/pretrain_shakespeare.py (4 layers x 4 heads x 128, context 64) with what the
modded-nanogpt speedruns found, kept where it measured better here (experiments/SPEED_NOTES.md: one run each,
validation loss at step 192 of this schedule, from 1.851 with an untied head): Muon for the blocks' matrices
(AdamW at 3e-3 instead: 2.047), QK-norm (without: 1.903), zero-initialised output projections (without: 1.868),
rotary positions (learned ones were 0.16 worse at step 192 of a longer schedule). Tied embeddings, as nanoGPT:
1.843, so the untied head went. ReLU^2 vs GELU: 1.851 vs 1.850, a tie; ReLU^2 is the cheaper op.
The optimiser settings come from a 16-trial TPE search on a 150-step schedule (experiments/speedrun_150.py, seed 0):
Muon momentum 0.87 instead of 0.95, Muon lr 0.02, AdamW lr 1e-2 and a long warm-up (35 of 150 steps) reach 1.861
at step 150 where the 200-step settings had 1.932 (seeds 0 / 1 of the rounded values: 1.8598 / 1.8621).
24 rows x 64 characters x 150 steps is 230,400 tokens, 0.15 of nanoGPT's 2000 x 12 x 64.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.model.update(position="rope", qk_norm=True, mlp="relu2", zero_init_out=True)
  c.train.update(optimizer="muon", batch_size=24, steps=150, warmup_steps=35, lr=1e-2, min_lr=0.0, muon_lr=0.02,
                 muon_momentum=0.87, weight_decay=0.0)
  c.eval.every = 50  # every 76,800 training tokens, the cadence benchmarks/time_to_loss.py evaluates both sides at
  return c
