"""Ablation 3, does fine-tuning and RL damage the base model? Held-out Shakespeare bits per byte (what
pretraining learned) and held-out 4-digit addition accuracy (what fine-tuning and RL teach) for base -> SFT ->
GRPO, across the KL coefficient of RL (0, 0.01, 0.1, 1) and with and without a pretraining mix in both SFT and
RL (objective.ptx_coef: the next-token loss on Shakespeare rows beside the task loss; PPO-ptx in RL), 3 seeds.

  python -m lm.sweep experiments/damage.py --scale=full
"""

from lm import sweep_report
from lm.sweep import Stage, Sweep, grid

TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "eval.max_batches": 1,
        "eval.batch_size": 8}
SCALES = {
    "full": dict(pretrain=2000, sft=None, rl=300, seeds=(0, 1, 2), kl=(0.0, 0.01, 0.1, 1.0), mix=(0.0, 1.0),
                 examples=500, model={}, rl_rows={}),
    "smoke": dict(pretrain=4, sft=4, rl=2, seeds=(0,), kl=(0.0, 1.0), mix=(1.0,), examples=8, model=TINY,
                  rl_rows={"train.batch_size": 8, "objective.group_size": 4, "objective.ptx_rows": 4,
                           "objective.eval_examples": 8, "objective.pass_n": 0}),
}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  quiet = {"train.progress": False, "eval.sample_tokens": 0, **s["model"]}
  pretrain = Stage("pretrain", "configs/pretrain_shakespeare.py",
                   {**quiet, "train.steps": s["pretrain"], "eval.every": s["pretrain"],
                    "checkpoint.every": s["pretrain"]})
  sft = Stage("sft", "configs/sft_addition.py", {
      **quiet, **({"train.steps": s["sft"], "eval.every": s["sft"], "checkpoint.every": s["sft"],
                   "objective.train_examples": 64, "train.batch_size": 8, "objective.ptx_rows": 4,
                   "objective.eval_examples": 8, "objective.pass_n": 0} if s["sft"] else {})},
      init_from="pretrain")
  rl = Stage("rl", "configs/pg_addition.py", {
      **quiet, "train.steps": s["rl"], "eval.every": s["rl"], "checkpoint.every": s["rl"], **s["rl_rows"]},
      init_from="sft")

  def measure(trial) -> dict:
    """Held-out 4-digit accuracy (greedy) of each stage's model, on the problems RL's evaluation uses."""
    from lm import eval_checkpoint
    from lm.sweep import measure_once
    out = {}
    for stage in ("pretrain", "sft", "rl"):
      run = trial["dirs"][stage]
      r = measure_once(run, f"accuracy4-{s['examples']}", lambda run=run: eval_checkpoint.evaluate_run(
          run, task="addition", task_options={"digits": 4, "pad": True, "width": 4}, examples=s["examples"],
          pass_n=0, bits_per_byte=False, max_new_tokens=8))
      out[f"{stage}.accuracy4"] = r["exact_match"]
    return out

  return Sweep(name="damage", stages=(pretrain, sft, rl), seeds=s["seeds"], metric="rl.accuracy4",
               direction="maximize", measure=measure, plot=plot,
               space={"objective.ptx_coef": grid(*s["mix"]), "rl:objective.kl_coef": grid(*s["kl"])},
               report=("pretrain.bits_per_byte", "sft.bits_per_byte", "rl.bits_per_byte", "sft.accuracy4",
                       "rl.train_rollout_kl_seq"))


def plot(rows, out_dir) -> list:
  """Task accuracy against the bits-per-byte cost, base -> SFT -> RL, one line per (mix, KL coefficient)."""
  import collections

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  groups = collections.defaultdict(list)
  for r in rows:
    if r["status"] == "done":
      groups[(r["params"]["objective.ptx_coef"], r["params"]["rl:objective.kl_coef"])].append(r["metrics"])
  if not groups:
    return []
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (mix, kl), ms in sorted(groups.items()):
    xs = [np.mean([m[f"{st}.bits_per_byte"] for m in ms]) for st in ("pretrain", "sft", "rl")]
    ys = [np.mean([m[f"{st}.accuracy4"] for m in ms]) for st in ("pretrain", "sft", "rl")]
    xe = [np.std([m[f"{st}.bits_per_byte"] for m in ms]) for st in ("pretrain", "sft", "rl")]
    ye = [np.std([m[f"{st}.accuracy4"] for m in ms]) for st in ("pretrain", "sft", "rl")]
    ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=2, linestyle="-" if mix else "--",
                label=f"{'with' if mix else 'no'} pretraining mix, RL KL {kl:g} (n={len(ms)})")
  ax.set_xlabel("held-out Shakespeare bits per byte (lower: less damage)")
  ax.set_ylabel("held-out 4-digit addition, greedy exact")
  ax.set_title("base -> SFT -> GRPO: what the task gains, what pretraining loses")
  ax.legend(fontsize=6)
  return [sweep_report.save_figure(fig, out_dir, "accuracy_vs_bits_per_byte")]
