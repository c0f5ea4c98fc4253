"""Ablation 1, the classic sweep: pretraining learning rate x model width on Tiny Shakespeare, 3 seeds.
Does the best learning rate shift with width?

  python -m lm.sweep experiments/lr_width.py --scale=full     # 3 widths x 5 learning rates x 3 seeds, 500 steps
  python -m lm.sweep experiments/lr_width.py --scale=smoke    # what the tests run (tiny models, seconds)
"""
from lm.sweep import Stage, Sweep, grid

SCALES = {
    # 500 steps (a quarter of nanoGPT's run) keeps the 45 runs near half an hour on a 2-core CPU: the question is
    # where the best lr sits at a fixed budget, not the converged loss.
    "full": dict(steps=500, widths=(64, 128, 256), lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), seeds=(0, 1, 2),
                 model={}),
    "smoke": dict(steps=8, widths=(16,), lrs=(1e-3, 1e-2), seeds=(0,),
                  model={"model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "train.batch_size": 8,
                         "eval.max_batches": 1, "eval.batch_size": 8}),
}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  stage = Stage("pretrain", "configs/pretrain_shakespeare.py", {
      "train.steps": s["steps"], "train.warmup_steps": max(1, s["steps"] // 20), "train.min_lr": 0.0,
      "train.progress": False, "eval.every": s["steps"], "eval.sample_tokens": 0, "checkpoint.every": s["steps"],
      **s["model"]})
  return Sweep(name="lr_width", stages=(stage,), seeds=s["seeds"], metric="pretrain.bits_per_byte",
               space={"model.d_model": grid(*s["widths"]), "train.lr": grid(*s["lrs"])},
               report=("pretrain.loss",))
