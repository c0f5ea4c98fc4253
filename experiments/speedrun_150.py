"""Can configs/speedrun_shakespeare.py reach validation loss 1.88 one evaluation earlier, at step 150 (230,400
tokens) instead of 200? A TPE search over the optimiser's settings on a 150-step schedule, seed 0, ranked by the
validation loss at step 150 (benchmarks/time_to_loss.py's third evaluation; experiments/SPEED_NOTES.md says why it
is the lever left).

  python -m lm.sweep experiments/speedrun_150.py --scale=full     # 16 trials, ~35 s each on 2 cores
"""
from lm.sweep import Stage, Sweep, int_range, loguniform, uniform

SCALES = {
    "full": dict(steps=150, trials=16, model={}),
    "smoke": dict(steps=4, trials=1,
                  model={"model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2, "model.max_len": 32,
                         "data.seq_len": 32, "train.batch_size": 8, "eval.max_batches": 1, "eval.batch_size": 8}),
}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  stage = Stage("pretrain", "configs/speedrun_shakespeare.py", {
      "train.steps": s["steps"], "train.progress": False, "eval.every": s["steps"], "eval.sample_tokens": 0,
      "checkpoint.every": s["steps"], **s["model"]})
  return Sweep(name="speedrun_150", stages=(stage,), seeds=(0,), metric="pretrain.loss", sampler="tpe",
               n_trials=s["trials"],
               space={"train.lr": loguniform(3e-3, 3e-2), "train.muon_lr": loguniform(0.015, 0.12),
                      "train.warmup_steps": int_range(0, 40), "train.muon_momentum": uniform(0.85, 0.98)})
