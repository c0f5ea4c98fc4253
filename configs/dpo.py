"""DPO on the reward model's simulated preference pairs (configs/reward_model.py: two answers the SFT model samples
to 4-digit addition problems, judged by lm/simulated_annotator.py), from that SFT run, which is also the reference:

python launch.py --config=configs/dpo.py --workdir=runs/dpo
python launch.py --config=configs/dpo.py --workdir=runs/ipo --config.objective.loss=ipo

Each eval reports the win rate against the SFT model judged by the simulated annotator on held-out prompts.
Every objective.* option: lm/objectives/dpo.py and lm/data/preferences.py (PairOptions).
"""
from configs import base
from configs import reward_model
from lm import objectives


def get_config():
  c = base.get_config()
  c.objective = objectives.config("dpo", beta=0.1, loss="sigmoid", win_prompts=500, win_temperature=1.0,
                                  **reward_model.pairs())
  c.checkpoint.init_from = "runs/sft_addition_mix"
  c.train.update(steps=300, batch_size=32, lr=5e-5, min_lr=5e-5, warmup_steps=20, schedule="constant",
                 weight_decay=0.0, log_every=20)
  c.eval.update(every=100, sample_tokens=0)
  c.checkpoint.update(every=100, keep=2)
  return c
