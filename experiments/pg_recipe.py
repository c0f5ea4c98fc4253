"""The policy-gradient chain over seeds (the reproducible headline) and ablation 4, "ask it many times":
pretraining (seed 0, `make train`) -> SFT on addition (configs/sft_addition.py) -> GRPO, RLOO and PPO on 4-digit
addition (configs/pg_addition*.py), for SFT x RL seeds 0, 1, 2. Measured for every model of a trial: greedy exact
match on held-out 3- and 4-digit problems, and pass@k for k = 1..64 (64 samples at T=1 per problem).

  python -m lm.sweep experiments/pg_recipe.py --scale=full
"""

from lm import sweep_report
from lm.sweep import Stage, Sweep

KS = (1, 2, 4, 8, 16, 32, 64)
TINY = {"model.d_model": 16, "model.n_layers": 1, "model.max_len": 32, "data.seq_len": 32, "eval.max_batches": 1,
        "eval.batch_size": 8}
SCALES = {
    "full": dict(pretrain=None, sft=None, rl=None, seeds=(0, 1, 2), examples=500, pass_prompts=100, n=64,
                 model={}, small={}),
    "smoke": dict(pretrain=4, sft=4, rl=2, seeds=(0,), examples=8, pass_prompts=4, n=4, model=TINY,
                  small={"train.batch_size": 8, "objective.group_size": 4, "objective.eval_examples": 8,
                         "objective.pass_n": 0}),
}
RL = {"grpo": "configs/pg_addition.py", "rloo": "configs/pg_addition_rloo.py", "ppo": "configs/pg_addition_ppo.py"}


def _steps(n):
  return {"train.steps": n, "eval.every": n, "checkpoint.every": n} if n else {}


def sweep(scale: str) -> Sweep:
  s = SCALES[scale]
  quiet = {"train.progress": False, "eval.sample_tokens": 0, **s["model"]}
  stages = [Stage("pretrain", "configs/pretrain_shakespeare.py", {**quiet, **_steps(s["pretrain"]), "seed": 0}),
            Stage("sft", "configs/sft_addition.py", {**quiet, **_steps(s["sft"]), **(
                {"objective.train_examples": 64, "train.batch_size": 8, "objective.eval_examples": 8,
                 "objective.pass_n": 0} if s["sft"] else {})}, init_from="pretrain")]
  stages += [Stage(name, config, {**quiet, **_steps(s["rl"]), **s["small"]}, init_from="sft")
             for name, config in RL.items()]
  ks = tuple(k for k in KS if k <= s["n"])

  def measure(trial) -> dict:
    from lm import eval_checkpoint
    out = {}
    for stage in ("pretrain", "sft", *RL):
      for digits in (3, 4):
        r = eval_checkpoint.evaluate_run(
            trial["dirs"][stage], task="addition", task_options={"digits": digits, "pad": True, "width": 4},
            examples=s["examples"], pass_n=s["n"] if digits == 4 else 0, pass_k=ks, pass_prompts=s["pass_prompts"],
            bits_per_byte=False, max_new_tokens=8)
        out[f"{stage}.exact{digits}"] = r["exact_match"]
        out.update({f"{stage}.{k}": v for k, v in r.items() if k.startswith("pass@")})
    return out

  return Sweep(name="pg_recipe", stages=tuple(stages), space={}, seeds=s["seeds"], metric="grpo.exact4",
               direction="maximize", measure=measure, plot=plot,
               report=("sft.exact3", "sft.exact4", "rloo.exact4", "ppo.exact4", "grpo.train_zero_spread_frac",
                       "sft.bits_per_byte", "grpo.bits_per_byte"))


def plot(rows, out_dir) -> list:
  """pass@k against k (log scale) for the base, SFT and RL models: mean ± std over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  done = [r for r in rows if r["status"] == "done"]
  if not done:
    return []
  ks = sorted(int(k.split("@")[1]) for k in done[0]["metrics"] if k.startswith("sft.pass@"))
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for stage in ("pretrain", "sft", *RL):
    vals = np.array([[r["metrics"][f"{stage}.pass@{k}"] for k in ks] for r in done])
    ax.errorbar(ks, vals.mean(0), yerr=vals.std(0, ddof=1) if len(done) > 1 else None, marker="o", capsize=3,
                label=stage)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("k (samples per problem)")
  ax.set_ylabel("pass@k, held-out 4-digit addition")
  ax.set_title(f"Ask it many times: pass@k over {len(done)} seeds")
  ax.legend(fontsize=8)
  return [sweep_report.save_figure(fig, out_dir, "pass_at_k")]
